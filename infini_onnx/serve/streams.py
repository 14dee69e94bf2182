"""The streams one server replica holds, checkpointed to a state directory (docs/serving.md).

After every request a stream's record in the state directory is current:

- `<id>.<boundary>.state`: its state at the last segment boundary (a state file, with logits);
- `<id>.json`, the journal: that boundary, the token chunks fed since it (one model call each)
  and a random version, rewritten atomically after every request.

A replica restores a stream it does not hold, or holds at another version than the journal's
(another replica served it meanwhile), by loading the boundary state and replaying the chunks:
less than one segment of tokens, in the calls they were first fed in, so the restored state is
bit-identical. Evicting a resident stream therefore writes nothing.

A StreamTable is not locked per stream: callers run one stream's requests one at a time (the
Ray worker holds a stream's lock until the work of a request has ended, also when its client
went away); different streams may run in different threads.

Temporaries that a killed server left in the state directory are removed when a table starts.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from infini_onnx.atomic import atomic_output, remove_stale_temporaries
from infini_onnx.errors import InputError, StateFileError, StreamNotFoundError
from infini_onnx.runtime import textio
from infini_onnx.runtime.sampling import SamplingOptions
from infini_onnx.runtime.session import InfiniModel
from infini_onnx.runtime.stream import Stream

ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # 128 random bits, hex
JOURNAL_FORMAT = "infini-stream-journal"
MAX_JOURNAL_BYTES = 1 << 22  # < one segment of ids as JSON, for any sane segment_len
# A checkpoint is written in milliseconds: a temporary untouched this long, of a process gone,
# was left by a killed server (another node sharing the directory may reuse its pid).
STALE_TEMP_SECONDS = 60.0


def new_stream_id() -> str:
    return secrets.token_hex(16)


def check_stream_id(stream_id: str) -> str:
    """The id if it is one this server could have made; otherwise StreamNotFoundError (a
    malformed id names no stream, and never a path outside the state directory)."""
    if not isinstance(stream_id, str) or not ID_PATTERN.fullmatch(stream_id):
        raise StreamNotFoundError("no such stream")
    return stream_id


@dataclass
class Journal:
    """What the state directory says about one stream."""

    version: str  # random, new at every write
    tokens_seen: int
    boundary: int  # tokens_seen of the boundary state file (0: none, the stream starts empty)
    chunks: list[list[int]]  # ids fed since the boundary, one list per model call


@dataclass
class Resident:
    stream: Stream
    version: str  # the journal version this copy matches
    last_used: float


@dataclass
class TableStats:
    resident: int
    restores: int  # streams loaded from the state directory
    evictions: int  # resident copies dropped (budget or idle)
    tokens_fed: int
    tokens_generated: int


class StreamTable:
    """Streams of one model on one replica: resident ones in memory (at most
    `budget_bytes` of states, least recently used dropped first), all in `state_dir`."""

    def __init__(
        self,
        model: InfiniModel,
        state_dir: str | Path,
        budget_bytes: int = 2 << 30,
        idle_seconds: float = 600.0,
    ):
        self.model = model
        self.state_dir = Path(state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StateFileError(f"{state_dir}: cannot create ({e.strerror or e})") from None
        remove_stale_temporaries(self.state_dir, min_age_s=STALE_TEMP_SECONDS)
        self.stream_bytes = model.layout.max_file_bytes()
        if budget_bytes < self.stream_bytes:
            raise InputError(
                f"a memory budget of {budget_bytes:,} bytes holds no stream of this model "
                f"({self.stream_bytes:,} bytes each)"
            )
        self.max_resident = budget_bytes // self.stream_bytes
        self.idle_seconds = idle_seconds
        self._resident: OrderedDict[str, Resident] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards _resident and the counters
        self._restores = self._evictions = self._tokens_fed = self._tokens_generated = 0

    # --- requests ------------------------------------------------------------------------

    def create(self, stream_id: str | None = None) -> str:
        """A new empty stream (under a new id from new_stream_id() if not given); returns its
        id."""
        stream_id = new_stream_id() if stream_id is None else check_stream_id(stream_id)
        if self._journal_path(stream_id).exists():
            raise InputError("a stream with this id exists")
        entry = Resident(Stream(self.model), "", time.monotonic())
        self._record(stream_id, entry, Journal("", 0, 0, []), entry.stream, None, [])
        self._hold(stream_id, entry)
        return stream_id

    def fork(self, source_id: str, stream_id: str | None = None) -> str:
        """A new stream (under a new id if not given) at the source's current state; the
        source is unchanged. Returns the new id."""
        stream_id = new_stream_id() if stream_id is None else check_stream_id(stream_id)
        if self._journal_path(stream_id).exists():
            raise InputError("a stream with this id exists")
        entry, journal = self._get(source_id)
        if journal.boundary:  # a copy of the boundary state: each journal names its own file
            data = self._state_path(source_id, journal.boundary).read_bytes()
            target = self._state_path(stream_id, journal.boundary)
            with atomic_output(target, StateFileError) as tmp:
                tmp.write_bytes(data)
        copy = Resident(entry.stream.fork(), "", time.monotonic())
        start = Journal("", journal.tokens_seen, journal.boundary, [])
        self._record(stream_id, copy, start, copy.stream, None, journal.chunks)
        return stream_id  # not held here: its replica (by its id) restores it from the files

    def feed(self, stream_id: str, text: str | None = None, ids: list[int] | None = None) -> Stream:
        """Feed text or token ids; returns the stream after them (tokens_seen, logits; do not
        feed it). All or nothing."""
        tokens = self._tokens(text, ids)
        if tokens.size == 0:
            raise InputError("empty input: no tokens to feed")
        entry, journal = self._get(stream_id)
        self._feed_checkpointed(stream_id, entry, journal, tokens)
        self._count(fed=tokens.size)
        return entry.stream

    def generate(
        self,
        stream_id: str,
        prompt: str | list[int] | None = None,
        max_new_tokens: int = 64,
        stop: list[int] | None = None,
        sampling: SamplingOptions | None = None,
    ) -> Iterator[int]:
        """Feed the prompt, then yield new tokens (greedy or sampled, see Stream.generate; the
        caller has checked max_new_tokens and stop). The state directory records every token
        yielded, also when the caller stops early."""
        entry, journal = self._get(stream_id)
        if isinstance(prompt, str):
            prompt_ids = self._tokens(prompt, None)
        else:
            prompt_ids = self._tokens(None, prompt or [])
        if prompt_ids.size == 0 and entry.stream.logits is None:
            prompt_ids = np.array([self.model.config.bos_token_id], np.int64)
        if prompt_ids.size:
            journal = self._feed_checkpointed(stream_id, entry, journal, prompt_ids)
            self._count(fed=prompt_ids.size)
        tokens = entry.stream.generate([], max_new_tokens, stop=stop, sampling=sampling)
        return self._generated(stream_id, entry, journal, tokens)

    def info(self, stream_id: str) -> dict:
        """tokens_seen and where the stream is, without loading it."""
        journal = self._read_journal(stream_id)
        with self._lock:
            resident = stream_id in self._resident
        c = self.model.config
        return {
            "tokens_seen": journal.tokens_seen,
            "segment_len": c.segment_len,
            "cached": journal.tokens_seen - journal.boundary,
            "resident": resident,
            "model_id": self.model.model_id,
        }

    def delete(self, stream_id: str) -> None:
        """Forget the stream: its resident copy and its files."""
        journal = self._read_journal(stream_id)
        with self._lock:
            self._resident.pop(stream_id, None)
        self._journal_path(stream_id).unlink(missing_ok=True)
        self._state_path(stream_id, journal.boundary).unlink(missing_ok=True)

    # --- residency -----------------------------------------------------------------------

    def stats(self) -> TableStats:
        with self._lock:
            return TableStats(
                len(self._resident),
                self._restores,
                self._evictions,
                self._tokens_fed,
                self._tokens_generated,
            )

    def evict_idle(self, now: float | None = None) -> int:
        """Drop resident copies idle for idle_seconds (their files are current); returns how
        many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [k for k, r in self._resident.items() if now - r.last_used >= self.idle_seconds]
            for stream_id in idle:
                del self._resident[stream_id]
            self._evictions += len(idle)
        return len(idle)

    def _count(self, fed: int = 0, generated: int = 0) -> None:
        with self._lock:
            self._tokens_fed += fed
            self._tokens_generated += generated

    def _hold(self, stream_id: str, entry: Resident) -> None:
        with self._lock:
            self._resident[stream_id] = entry
            self._resident.move_to_end(stream_id)
            while len(self._resident) > self.max_resident:
                self._resident.popitem(last=False)
                self._evictions += 1

    def _get(self, stream_id: str) -> tuple[Resident, Journal]:
        """The stream at the journal's version: the resident copy, or restored."""
        journal = self._read_journal(stream_id)
        with self._lock:
            entry = self._resident.get(stream_id)
        if entry is None or entry.version != journal.version:
            entry = Resident(self._restore(stream_id, journal), journal.version, 0.0)
            with self._lock:
                self._restores += 1
        entry.last_used = time.monotonic()
        self._hold(stream_id, entry)
        return entry, journal

    def _restore(self, stream_id: str, journal: Journal) -> Stream:
        if journal.boundary:
            stream = Stream.load(self.model, self._state_path(stream_id, journal.boundary))
        else:
            stream = Stream(self.model)
        for chunk in journal.chunks:
            stream.feed(chunk)
        if stream.tokens_seen != journal.tokens_seen:
            raise StateFileError(
                f"stream {stream_id}: journal says {journal.tokens_seen} tokens, "
                f"its checkpoint and chunks give {stream.tokens_seen}"
            )
        return stream

    # --- checkpointing ---------------------------------------------------------------------

    def _feed_checkpointed(
        self, stream_id: str, entry: Resident, journal: Journal, tokens: np.ndarray
    ) -> Journal:
        """Feed tokens; if they reach a segment boundary, checkpoint the state at the last one
        and journal the rest as one chunk. The stream and its files change only on success."""
        N = self.model.config.segment_len
        seen = entry.stream.tokens_seen
        to_boundary = (seen + tokens.size) // N * N - seen
        work = entry.stream.fork()
        if to_boundary <= 0:
            work.feed(tokens)
            return self._record(stream_id, entry, journal, work, None, [tokens.tolist()])
        work.feed(tokens[:to_boundary])
        at_boundary, rest = work.fork(), tokens[to_boundary:]
        if rest.size:
            work.feed(rest)
        return self._record(stream_id, entry, journal, work, at_boundary, [rest.tolist()])

    def _generated(
        self, stream_id: str, entry: Resident, journal: Journal, tokens: Iterator[int]
    ) -> Iterator[int]:
        """Yield generated tokens (one call each), checkpointing at each boundary; the journal
        is written when generation ends or the caller stops."""
        stream = entry.stream
        pending: list[list[int]] = []
        try:
            for token in tokens:
                if stream.state.cached == 0:  # this token completed a segment
                    journal = self._record(stream_id, entry, journal, stream, stream, [])
                    pending = []
                else:
                    pending.append([token])
                self._count(generated=1)
                yield token
        finally:
            if pending:
                self._record(stream_id, entry, journal, stream, None, pending)

    def _record(
        self,
        stream_id: str,
        entry: Resident,
        journal: Journal,
        stream: Stream,
        at_boundary: Stream | None,
        new_chunks: list[list[int]],
    ) -> Journal:
        """Make `stream` the resident copy and the state directory say so: the state file of
        `at_boundary` (if given) first, then the journal naming it, then the superseded state
        file goes. A crash at any point leaves a journal naming a complete state file."""
        new_chunks = [c for c in new_chunks if c]
        if at_boundary is None:
            boundary, chunks = journal.boundary, journal.chunks + new_chunks
        else:
            boundary, chunks = at_boundary.tokens_seen, new_chunks
            at_boundary.save(self._state_path(stream_id, boundary))
        new = Journal(secrets.token_hex(8), stream.tokens_seen, boundary, chunks)
        record = {"format": JOURNAL_FORMAT, "model_id": self.model.model_id, **asdict(new)}
        with atomic_output(self._journal_path(stream_id), error=StateFileError) as tmp:
            tmp.write_text(json.dumps(record, separators=(",", ":")))
        if journal.boundary and boundary != journal.boundary:
            self._state_path(stream_id, journal.boundary).unlink(missing_ok=True)
        entry.stream, entry.version = stream, new.version
        return new

    def _read_journal(self, stream_id: str) -> Journal:
        path = self._journal_path(check_stream_id(stream_id))
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_JOURNAL_BYTES + 1)
        except FileNotFoundError:
            raise StreamNotFoundError("no such stream") from None
        except OSError as e:
            raise StateFileError(f"stream {stream_id}: cannot read its journal ({e})") from None
        try:
            record = json.loads(raw)
            if record["format"] != JOURNAL_FORMAT or len(raw) > MAX_JOURNAL_BYTES:
                raise ValueError("not a journal")
            journal = Journal(
                str(record["version"]),
                int(record["tokens_seen"]),
                int(record["boundary"]),
                [[int(t) for t in chunk] for chunk in record["chunks"]],
            )
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise StateFileError(f"stream {stream_id}: corrupt journal ({e})") from None
        if record.get("model_id") != self.model.model_id:
            raise StateFileError(f"stream {stream_id}: a stream of another model")
        return journal

    def _journal_path(self, stream_id: str) -> Path:
        return self.state_dir / f"{stream_id}.json"

    def _state_path(self, stream_id: str, boundary: int) -> Path:
        return self.state_dir / f"{stream_id}.{boundary}.state"

    def _tokens(self, text: str | None, ids: list[int] | None) -> np.ndarray:
        if text is not None:
            return textio.encode(self.model.tokenizer, text)
        a = np.asarray(ids if ids is not None else [], dtype=object)
        if a.ndim != 1 or not all(isinstance(t, int) and not isinstance(t, bool) for t in a):
            raise InputError("ids must be a flat list of integers")
        vocab = self.model.config.vocab_size
        bad = [t for t in a if not 0 <= t < vocab]
        if bad:
            raise InputError(f"token id {bad[0]} outside the vocabulary [0, {vocab})")
        return a.astype(np.int64)

"""Streams: feed tokens or text of any length, generate, save; and batches of streams."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from infini_onnx.errors import InputError
from infini_onnx.runtime import statefile, textio
from infini_onnx.runtime import store as stored
from infini_onnx.runtime.sampling import Sampler, SamplingOptions
from infini_onnx.runtime.session import InfiniModel
from infini_onnx.runtime.state import State
from infini_onnx.runtime.store import Entry, StateStore
from infini_onnx.stepgraph.files import graph_files

Tokens = np.ndarray | Iterable[int] | Iterable[Iterable[int]]
"""Token ids: an array or sequence of ids, or an iterable of such chunks (read lazily)."""


class _Streams:
    """What a stream and a batch of streams share: feeding and decoding over model.step."""

    def __init__(self, model: InfiniModel, state: State):
        self._model = model
        self._state = state

    @property
    def model(self) -> InfiniModel:
        return self._model

    @property
    def state(self) -> State:
        """The current state (immutable: keep a reference to go back to it)."""
        return self._state

    def _ingest(self, chunks: Iterable[np.ndarray], all_logits: bool) -> np.ndarray:
        """Feed [B, t] chunks; all or nothing: on an error the stream keeps its state (the
        calls write a copy of its window ring)."""
        start = state = self._state.copy()
        collected, N = [], self._model.config.segment_len
        for piece in _segment_pieces(chunks, N - state.cached, N):
            logits, state = self._model.step(state, piece, piece.shape[1] if all_logits else 1)
            if all_logits:
                collected.append(logits)
        if state is start:
            raise InputError("empty input: no tokens to feed")
        self._state = state
        return np.concatenate(collected, axis=1) if all_logits else state.logits

    def _validated(self, chunk: object, batch: int) -> np.ndarray:
        """A chunk of token ids as a [batch, t] int64 array, refused if outside the vocabulary."""
        a = np.asarray(chunk)
        if a.size == 0:
            return np.zeros((batch, 0), np.int64)
        if a.dtype.kind not in "iu":
            raise InputError(f"token ids must be integers, got {a.dtype} values")
        vocab = self._model.config.vocab_size
        if a.min() < 0 or a.max() >= vocab:
            bad = a[(a < 0) | (a >= vocab)].flat[0]
            raise InputError(f"token id {bad} outside the vocabulary [0, {vocab})")
        if a.ndim == 1 and batch == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[0] != batch:
            raise InputError(f"token chunks must have shape [{batch}, tokens], got {list(a.shape)}")
        return a.astype(np.int64, copy=False)

    def _sampler(self, sampling: SamplingOptions | None, options: dict, max_new_tokens: int):
        """The Sampler of one generate call; refuses bad options before any token."""
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        return Sampler((sampling or SamplingOptions()).with_fields(**options))

    def _decode(self, sampler: Sampler, max_new_tokens: int) -> Iterator[np.ndarray]:
        """Sample, feed back (one call per token) and yield tokens [B]; the state always
        includes every token yielded."""
        if self._state.logits is None:
            raise InputError("nothing fed yet: give a prompt or feed tokens first")
        for _ in range(max_new_tokens):
            tokens = sampler(self._state.logits)
            _, self._state = self._model.step(self._state, tokens[:, None], 1)
            self._decoded(tokens)
            yield tokens

    def _decoded(self, tokens: np.ndarray) -> None:
        """After a decode call that took tokens [B]."""


class Stream(_Streams):
    """One token stream over an InfiniModel: constant memory and per-token cost at any length.

    Stream(model) starts an empty stream; Stream.load(model, path) resumes a saved one. With a
    StateStore (`store=`), feeds resume from the longest prefix the store holds and keep
    boundaries in it, and the stream can roll back (docs/runtime.md, "The state store").
    """

    def __init__(
        self, model: InfiniModel, state: State | None = None, *, store: StateStore | None = None
    ):
        _check_model(model)
        if store is not None and not isinstance(store, StateStore):
            raise InputError(f"store must be a StateStore, got {type(store).__name__}")
        super().__init__(model, State.zeros(model.layout) if state is None else state)
        self._store = store
        self._cached_tokens = 0
        if store is not None:
            if state is not None:
                raise InputError("a stream with a store starts empty or from Stream.load")
            self._history = _History.empty(model)

    @classmethod
    def load(cls, model: InfiniModel, path: str | Path, *, store: StateStore | None = None):
        """A stream from a state file written by `Stream.save` for this model."""
        _check_model(model)
        host, _ = statefile.read_state(
            _path(path), model.model_id, model.format_version, model.layout.max_file_bytes()
        )
        stream = cls(model, stored.check_state(model, host, path))
        if store is not None:
            stream._store = store
            stream._history = _History.start(model, store, host)
        return stream

    @property
    def tokens_seen(self) -> int:
        return int(self._state.tokens_seen[0])

    @property
    def store(self) -> StateStore | None:
        return self._store

    @property
    def cached_tokens(self) -> int:
        """Tokens this stream's feeds read from its store instead of feeding them."""
        return self._cached_tokens

    @property
    def logits(self) -> np.ndarray | None:
        """Next-token logits [V] after the last token, None before any token."""
        return None if self._state.logits is None else self._state.logits[0]

    def feed(self, tokens: Tokens, *, all_logits: bool = False) -> np.ndarray:
        """Feed token ids: whole segments take one call each, the partial tail waits in the cache.

        Returns the next-token logits [V], or with all_logits those of every fed token [S, V].
        """
        logits = self._ingest((self._validated(c, 1) for c in _chunks(tokens)), all_logits)
        return logits[0]

    def feed_text(self, text_or_chunks: str | Iterable[str], *, all_logits: bool = False):
        """Tokenize and feed a text, or an iterable of text chunks (e.g. a file read in blocks)."""
        return self.feed(
            textio.encode_chunks(self._model.tokenizer, text_or_chunks), all_logits=all_logits
        )

    def generate(
        self,
        prompt: str | Tokens | None = None,
        max_new_tokens: int = 64,
        *,
        stop: Iterable[int] | None = None,
        sampling: SamplingOptions | None = None,
        **options,
    ) -> Iterator[int]:
        """Yield new tokens as they come. The prompt (text or ids) is fed first, folded into
        memory whatever its length; without one, generation continues the stream (a new stream
        starts from bos). Stops after max_new_tokens or a token of `stop` (default: eos),
        which is yielded. `sampling` (default SamplingOptions()), or its fields as keywords
        (temperature=0 is greedy, top_k, top_p, seed)."""
        sampler = self._sampler(sampling, options, max_new_tokens)
        if isinstance(prompt, str):
            prompt = textio.encode(self._model.tokenizer, prompt) if prompt else None
        if isinstance(prompt, (list, tuple, np.ndarray)) and np.size(prompt) == 0:
            prompt = None  # an empty prompt continues the stream
        elif prompt is None and self._state.logits is None:
            prompt = [self._model.config.bos_token_id]
        stops = {self._model.config.eos_token_id} if stop is None else _stop_tokens(stop)
        return self._generate(prompt, sampler, max_new_tokens, stops)

    def _generate(self, prompt, sampler, max_new_tokens, stops) -> Iterator[int]:
        if prompt is not None:
            self.feed(prompt)
        for tokens in self._decode(sampler, max_new_tokens):
            yield int(tokens[0])
            if tokens[0] in stops:
                return

    def generate_text(self, prompt: str | Tokens | None = None, **options) -> Iterator[str]:
        """generate() decoded to text pieces as they come (needs the model's tokenizer)."""
        if self._model.tokenizer is None:
            raise InputError("this model has no tokenizer in its metadata: use generate()")
        decoder = textio.TextDecoder(self._model.tokenizer)
        tokens = self.generate(prompt, **options)

        def pieces() -> Iterator[str]:
            for token in tokens:
                if piece := decoder.push(token):
                    yield piece
            if rest := decoder.flush():
                yield rest

        return pieces()

    def reset(self) -> None:
        """Back to an empty stream."""
        self._state = State.zeros(self._model.layout)
        if self._store is not None:
            self._history = _History.empty(self._model)

    def fork(self) -> Stream:
        """An independent copy at the same point (its own copy of the window ring, the only
        tensors a call writes in place: State), with the same store."""
        fork = Stream(self._model, self._state.copy())
        fork._store, fork._cached_tokens = self._store, self._cached_tokens
        if self._store is not None:
            fork._history = self._history.copy()
        return fork

    def rollback(self, n_tokens: int) -> None:
        """Go back n_tokens: the state becomes bit-identical to that of the same calls cut
        where the stream was n_tokens ago. Needs a store: the stream replays from the stored
        boundary before that point; InputError (the stream unchanged) if the store no longer
        holds one (evicted)."""
        if self._store is None:
            raise InputError("rollback needs a stream with a state store (Stream(model, store=))")
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)):
            raise InputError(f"n_tokens must be an integer, got {n_tokens!r}")
        if not 0 <= n_tokens <= self.tokens_seen:
            raise InputError(f"n_tokens must be in [0, {self.tokens_seen}], got {n_tokens}")
        target = self.tokens_seen - int(n_tokens)
        history, state = self._history.rewound(self._model, self._store, target)
        for call in history.trail:
            _, state = self._model.step(state, call[None], 1)
        self._state, self._history = state, history

    def _ingest(self, chunks, all_logits: bool) -> np.ndarray:
        if self._store is None:
            return super()._ingest(chunks, all_logits)
        if all_logits:  # such calls compute other logits: their states are no cold run's
            raise InputError("all_logits is for a stream without a store (Stream(model))")
        return self._ingest_stored(chunks)

    def _ingest_stored(self, chunks) -> np.ndarray:
        """_ingest through the store: jump to the longest boundary the store holds (found by
        comparing ids with a recent feed of one array, else in each span of `every` segments),
        feed the rest and keep the boundaries of the policy (_kept_boundaries). All or nothing,
        as _ingest."""
        store, N = self._store, self._model.config.segment_len
        state, history = self._state.copy(), self._history.copy()
        start_key, start_seen = history.key, self.tokens_seen
        chunks, whole = _whole(chunks)
        fed, saved, span = False, 0, store.every * N
        passed: list[tuple[int, bytes]] = []  # (tokens_seen, key) of the boundaries passed
        if whole is not None:
            shared = store.traced(start_key, whole[0])
            # from the last shared boundary back, at most `every` of them (every `every`-th one
            # is kept: none within that reach means the trace's entries are gone)
            for i in reversed(range(max(0, len(shared) - store.every), len(shared))):
                entry = store.get(shared[i][1], self._model)
                if entry is not None:
                    saved, key = shared[i]
                    state = _state_of(self._model, entry)
                    history.moved(key, start_seen + saved)
                    passed = [(start_seen + offset, k) for offset, k in shared[: i + 1]]
                    chunks, fed = [whole[:, saved:]], True
                    break
        pieces = _segment_pieces(chunks, N - state.cached, N)
        for window, end in _windows(pieces, int(state.tokens_seen[0]), span):
            fed = True
            skip, loaded, skipped = history.jump(self._model, store, window)
            if loaded is not None:
                state = loaded
                saved += sum(p.shape[1] for p in window[:skip])
                passed += skipped
            seen = int(state.tokens_seen[0])
            keep = () if end is None else _kept_boundaries(end, N, store.every, seen)
            for piece in window[skip:]:
                _, state = self._model.step(state, piece, 1)
                history.called(piece[0])
                seen = int(state.tokens_seen[0])
                if state.cached == 0:
                    passed.append((seen, history.key))
                    if seen % span == 0 or seen in keep:
                        history.keep(self._model, store, state)
        if not fed:
            raise InputError("empty input: no tokens to feed")
        if whole is not None:
            store.trace(start_key, whole[0], [(seen - start_seen, key) for seen, key in passed])
        store.count_saved(saved) if saved else store.count_miss()
        self._state, self._history = state, history
        self._cached_tokens += saved
        return state.logits

    def _decoded(self, tokens: np.ndarray) -> None:
        if self._store is None:
            return
        self._history.called(tokens)
        span = self._store.every * self._model.config.segment_len
        if self.tokens_seen % span == 0:
            self._history.keep(self._model, self._store, self._state)

    def save(self, path: str | Path) -> None:
        """Write the state atomically (see docs/runtime.md for the format)."""
        m = self._model
        statefile.save_state(
            _path(path),
            self._state.to_host(),
            m.model_id,
            m.variant,
            m.format_version,
            graph_files(m.path),
        )


class StreamBatch(_Streams):
    """B streams at the same position in their segment, advanced by one call per step.

    StreamBatch(streams) joins them (they must be at the same position in their segment);
    `split()` gives them back. Results equal running the streams one by one (to float rounding
    of batched kernels).
    """

    def __init__(self, streams: Iterable[Stream]):
        if not isinstance(streams, Iterable):
            raise InputError(f"streams must be a list of Streams, got {type(streams).__name__}")
        streams = list(streams)
        if not streams:
            raise InputError("batch of no streams")
        for s in streams:
            if not isinstance(s, Stream):
                raise InputError(f"streams must be a list of Streams, got {type(s).__name__}")
        model = streams[0].model
        if any(s.model is not model for s in streams):
            raise InputError("streams of another model cannot join this model's batch")
        positions = {s.state.cached for s in streams}
        if len(positions) > 1:
            raise InputError(
                f"streams of a batch must be at the same position in their segment, got "
                f"{sorted(positions)} (tokens_seen mod segment_len {model.config.segment_len})"
            )
        super().__init__(model, State.join([s.state for s in streams]))

    @property
    def tokens_seen(self) -> list[int]:
        return [int(n) for n in self._state.tokens_seen]

    def feed(self, tokens: np.ndarray | Iterable[np.ndarray], *, all_logits: bool = False):
        """Feed a [B, T] array of ids (or an iterable of [B, t] chunks), T equal for all rows.

        Returns the next-token logits [B, V], or with all_logits [B, S, V]."""
        B = self._state.batch
        chunks = [tokens] if isinstance(tokens, np.ndarray) else tokens
        if not isinstance(chunks, Iterable):
            raise InputError(f"expected a [B, T] array of token ids, got {type(tokens).__name__}")
        return self._ingest((self._validated(c, B) for c in chunks), all_logits)

    def generate(
        self, max_new_tokens: int = 64, *, sampling: SamplingOptions | None = None, **options
    ) -> Iterator[np.ndarray]:
        """Yield the next token of every stream [B] per step (no stop tokens: all rows go on).
        Sampling as for Stream.generate."""
        return self._decode(self._sampler(sampling, options, max_new_tokens), max_new_tokens)

    def split(self) -> list[Stream]:
        """The streams of the batch, each on its own again."""
        return [Stream(self._model, state) for state in self._state.split()]


class _History:
    """What a stream with a store knows of its past (docs/runtime.md, "The state store"): its
    key (store.extend over every call since its start), its anchor (the newest boundary it kept
    in or loaded from the store, or its start) and the calls since the anchor."""

    def __init__(self, key: bytes, anchor: bytes, anchor_seen: int, trail: list, empty: bytes):
        self.key, self.anchor, self.anchor_seen = key, anchor, anchor_seen
        self.trail: list[np.ndarray] = trail  # calls since the anchor, [t] int64 each
        self.empty = empty  # the key of an empty stream of this model

    @classmethod
    def empty(cls, model: InfiniModel) -> _History:
        key = stored.empty_key(model)
        return cls(key, key, 0, [], key)

    @classmethod
    def start(cls, model: InfiniModel, store: StateStore, host: dict) -> _History:
        """The history of a stream resumed from a state file: that state is its start, kept in
        the store (without a parent) so that rollback can return to it."""
        key = stored.state_key(model, host)
        store.put(key, Entry({k: np.array(v) for k, v in host.items()}, None, []), model)
        return cls(key, key, int(host["tokens_seen"][0]), [], stored.empty_key(model))

    def copy(self) -> _History:
        return _History(self.key, self.anchor, self.anchor_seen, list(self.trail), self.empty)

    def called(self, ids: np.ndarray) -> None:
        """After a call that took ids [t]."""
        ids = np.array(ids, np.int64)
        self.key = stored.extend(self.key, ids)
        self.trail.append(ids)

    def keep(self, model: InfiniModel, store: StateStore, state: State) -> None:
        """Store the state (at a boundary) under the key, with the calls since the anchor; it
        becomes the anchor."""
        host = {k: np.array(v) for k, v in state.to_host().items()}  # the ring is written later
        store.put(self.key, Entry(host, self.anchor, self.trail), model)
        self.anchor, self.anchor_seen, self.trail = self.key, int(state.tokens_seen[0]), []

    def jump(self, model: InfiniModel, store: StateStore, window: list[np.ndarray]):
        """(pieces of window to skip, the state after them, the boundaries (tokens_seen, key)
        they pass) for the longest of the window's boundaries that the store holds; (0, None,
        []) if none."""
        N = model.config.segment_len
        keys, key, seen = [], self.key, self.anchor_seen + stored.calls_tokens(self.trail)
        for piece in window:
            key, seen = stored.extend(key, piece[0]), seen + piece.shape[1]
            keys.append((seen, key))
        for i in reversed(range(len(window))):
            seen, key = keys[i]
            if seen % N == 0 and store.contains(key):
                entry = store.get(key, model)
                if entry is not None:
                    self.moved(key, seen)
                    skipped = [(n, k) for n, k in keys[: i + 1] if n % N == 0]
                    return i + 1, _state_of(model, entry), skipped
        return 0, None, []

    def moved(self, key: bytes, seen: int) -> None:
        """To the stored boundary `key` at token `seen` (read from the store)."""
        self.key, self.anchor, self.anchor_seen, self.trail = key, key, seen, []

    def rewound(self, model: InfiniModel, store: StateStore, target: int):
        """(the history at token `target`, the state of its anchor): walks back along the
        entries' parents to the newest boundary at or before target, and cuts the calls from
        there at target (the caller replays them)."""
        anchor, anchor_seen, calls = self.anchor, self.anchor_seen, self.trail
        while anchor_seen > target:
            entry = store.get(anchor, model)
            if entry is None or entry.parent is None:
                where = "it is the stream's start" if entry is not None else _NOT_STORED
                raise InputError(
                    f"cannot roll back to token {target:,}: the boundary at token "
                    f"{anchor_seen:,} leads back no further ({where})"
                )
            anchor, calls = entry.parent, entry.calls
            anchor_seen -= stored.calls_tokens(calls)
        if anchor == self.empty:
            state = State.zeros(model.layout)
        else:
            entry = store.get(anchor, model)
            if entry is None:
                raise InputError(
                    f"cannot roll back to token {target:,}: the boundary at token "
                    f"{anchor_seen:,} is not in the store ({_NOT_STORED})"
                )
            state = _state_of(model, entry)
        replay, at = [], anchor_seen
        for call in calls:
            if at >= target:
                break
            replay.append(call[: target - at])
            at += len(replay[-1])
        history = _History(anchor, anchor, anchor_seen, [], self.empty)
        for call in replay:
            history.called(call)
        return history, state


_NOT_STORED = "evicted, or larger than the store's budgets"


def _state_of(model: InfiniModel, entry: Entry) -> State:
    """A store entry's state, with logits of its own (the entry's are shared, read-only)."""
    host = dict(entry.host)
    if "logits" in host:
        host["logits"] = host["logits"].copy()
    return State.from_host(model.layout, host)


def _whole(chunks: Iterable[np.ndarray]):
    """(the chunks, the input as one [1, t] array if it is a single chunk, else None)."""
    it = iter(chunks)
    first, second = next(it, None), next(it, None)
    if first is not None and second is None:
        return [first], first
    return itertools.chain([c for c in (first, second) if c is not None], it), None


def _windows(pieces: Iterable[np.ndarray], seen: int, span: int):
    """Group the pieces into windows that end where the stream passes a multiple of `span`
    tokens; yields (window, end), end being the position where the input ends once it is
    known: for the last two windows (the keep policy reaches back into the one before the
    last), None before. Holds at most three windows."""
    windows: list[list[np.ndarray]] = []
    window: list[np.ndarray] = []
    for piece in pieces:
        if window and seen % span == 0:
            windows.append(window)
            window = []
            if len(windows) == 3:
                yield windows.pop(0), None
        window.append(piece)
        seen += piece.shape[1]
    if window:
        windows.append(window)
    for w in windows[:-2]:
        yield w, None
    for w in windows[-2:]:
        yield w, seen


def _kept_boundaries(end: int, segment_len: int, every: int, after: int) -> set[int]:
    """The boundaries a feed ending at token `end` keeps besides every `every`-th: the last one
    and those 1, 2, 4, 8... segments before it (fewer than `every`), after token `after`."""
    last = end // segment_len * segment_len
    out, back = {last}, 1
    while back < every:
        out.add(last - back * segment_len)
        back *= 2
    return {b for b in out if b > after}


def _check_model(model: object) -> None:
    if not isinstance(model, InfiniModel):
        raise InputError(f"model must be an InfiniModel, got {type(model).__name__}")


def _path(path: object) -> str | os.PathLike:
    """A state file's path; InputError unless a str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return path


def _stop_tokens(stop: object) -> set[int]:
    """generate's `stop` as a set of ids; InputError unless an iterable of integers."""
    if not isinstance(stop, Iterable) or isinstance(stop, (str, bytes)):
        raise InputError(f"stop must be a list of token ids, got {type(stop).__name__}")
    stops = list(stop)
    for token in stops:
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise InputError(f"stop must be a list of token ids, got an item {token!r}")
    return {int(token) for token in stops}


def _chunks(tokens: Tokens) -> Iterator[object]:
    """An array or a flat sequence of ids is one chunk; otherwise each item is a chunk."""
    if isinstance(tokens, np.ndarray):
        yield tokens
    elif isinstance(tokens, (list, tuple, range)) and all(
        isinstance(t, (int, np.integer)) for t in tokens
    ):
        yield tokens
    elif not isinstance(tokens, Iterable) or isinstance(tokens, (str, bytes)):
        raise InputError(f"expected a sequence of token ids, got {type(tokens).__name__}")
    else:
        for chunk in tokens:
            yield [chunk] if isinstance(chunk, (int, np.integer)) else chunk


def _segment_pieces(chunks: Iterable[np.ndarray], room: int, segment_len: int):
    """Regroup [B, t] chunks into the pieces of one call each: the rest of the current segment
    (`room` tokens), then whole segments, then the partial tail. Holds < one segment."""
    pending: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        while not held and chunk.shape[1] >= room:  # a whole piece of one chunk: no copy
            yield np.ascontiguousarray(chunk[:, :room])
            chunk, room = chunk[:, room:], segment_len
        while chunk.shape[1]:
            take = chunk[:, : room - held]
            chunk = chunk[:, take.shape[1] :]
            pending.append(take)
            held += take.shape[1]
            if held == room:
                yield np.ascontiguousarray(np.concatenate(pending, axis=1))
                pending, held, room = [], 0, segment_len
    if held:
        yield np.ascontiguousarray(np.concatenate(pending, axis=1))

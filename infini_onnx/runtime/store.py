"""The state store: stream states at segment boundaries, kept so that a stream fed the same
tokens again resumes from them instead of reading them twice (docs/runtime.md, "The state
store").

An entry is keyed by a digest of the stream's history: where it started (an empty stream of a
model and graph format, or a saved state) and every model call since, in order, with its token
ids. The bits of a state depend on the calls that made it (a segment fed in one call or in two
rounds differently), so a key names one state exactly and a hit is bit-identical to feeding
the same calls cold. Each entry also records its parent (the entry its stream stored before it)
and the calls between them: `Stream.rollback` walks back along them.

Two tiers, each with a budget and least-recently-used eviction: host memory, and optionally a
directory (shared by the processes of a machine, or across machines on shared storage). Files
are written atomically (infini_onnx.atomic) under an exclusive lock on `<dir>/.lock`, which
also guards the disk budget; an entry that fails any check (corrupt, truncated, another
model's, another key's) is removed, counted and warned about, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infini_onnx.atomic import atomic_output
from infini_onnx.errors import InputError, StateFileError
from infini_onnx.runtime import statefile
from infini_onnx.runtime.state import State

try:  # POSIX: the disk tier's lock; without it only one process may use a directory
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

DEFAULT_EVERY = 256  # segments between the boundaries a long feed stores
TRAIL_IDS, TRAIL_LENGTHS = "trail_ids", "trail_lengths"  # an entry's calls since its parent
MAX_TRAIL_TOKENS = 1 << 22  # the calls an entry file holds at most (longer: memory only)
MAX_TRACES = 4  # the recent feeds whose boundaries are found without hashing
MAX_TRACE_TOKENS = 1 << 25  # longer feeds are not traced (their ids are kept, 4 bytes each)
_DIRECTORY_LOCKS: dict[Path, threading.Lock] = {}  # flock excludes processes; this, threads
_DIRECTORY_LOCKS_GUARD = threading.Lock()


class StoreWarning(UserWarning):
    """A store entry was ignored (corrupt, truncated, of another model) and removed."""


def _graph(model) -> str:
    """What makes the bits of a state besides its calls: the model, its graph format, the
    variant (weights and cache dtype; model_id is the same for all variants) and the device
    (other kernels)."""
    return f"{model.model_id}\0{model.format_version}\0{model.variant}\0{model.device}"


def empty_key(model) -> bytes:
    """The key of an empty stream of a model (an InfiniModel)."""
    return hashlib.sha256(f"infini-empty\0{_graph(model)}".encode()).digest()


def state_key(model, host: dict[str, np.ndarray]) -> bytes:
    """The key of a stream that starts from a given state (a loaded state file)."""
    h = hashlib.sha256(f"infini-state\0{_graph(model)}".encode())
    for name in sorted(host):
        h.update(name.encode() + b"\0" + np.ascontiguousarray(host[name]).tobytes())
    return h.digest()


def extend(key: bytes, call: np.ndarray) -> bytes:
    """The key after one model call that took the token ids `call` [t]."""
    ids = np.ascontiguousarray(call, dtype="<i8")
    return hashlib.sha256(key + len(ids).to_bytes(8, "little") + ids.tobytes()).digest()


@dataclass(frozen=True)
class Entry:
    host: dict[str, np.ndarray]  # the state's host tensors (State.to_host), logits included
    parent: bytes | None  # the key of the entry stored before it on its stream (None: none)
    calls: list[np.ndarray]  # the calls from the parent's state to this one

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.host.values()) + sum(c.nbytes for c in self.calls)


@dataclass(frozen=True)
class Trace:
    """A feed of one array: where it started, its ids, and the boundaries it passed. A later
    feed from the same key with the same first ids passes the same boundaries with the same
    keys (the same calls), so they are found by comparing ids, not by hashing every call."""

    start: bytes  # the key the feed started from
    tokens: np.ndarray  # [t] the ids fed (a read-only int32 copy)
    boundaries: list[tuple[int, bytes]]  # (offset in tokens, key), increasing


@dataclass(frozen=True)
class StoreStats:
    hits: int  # lookups answered (memory or disk)
    misses: int  # lookups of a feed that found no stored prefix
    stores: int  # entries written
    evictions: int  # entries dropped for a budget (memory or disk)
    rejected: int  # entries ignored: corrupt, truncated, another model's
    tokens_saved: int  # tokens that hits spared a feed
    ram_bytes: int
    disk_bytes: int


class StateStore:
    """States at segment boundaries, in memory (`ram_bytes`) and, with a directory, on disk
    (`disk_bytes`), least recently used evicted first. `every`: a stream fed through the store
    keeps every `every`-th segment boundary (counted from the stream's start), and near the end
    of each feed its last boundary and those 1, 2, 4, 8... segments before it (fewer than
    `every`), so that another feed diverging within `every` segments of the end replays at most
    about twice what follows the divergence, and elsewhere at most `every` segments."""

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        ram_bytes: int = 256 << 20,
        disk_bytes: int = 4 << 30,
        every: int = DEFAULT_EVERY,
    ):
        for name, value in (("ram_bytes", ram_bytes), ("disk_bytes", disk_bytes), ("every", every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        self.directory = None if directory is None else Path(directory)
        self.ram_budget, self.disk_budget, self.every = ram_bytes, disk_bytes, every
        self._ram: OrderedDict[bytes, Entry] = OrderedDict()  # least recently used first
        self._ram_bytes = 0
        self._lock = threading.Lock()  # the memory tier and the counters
        self._counts = dict.fromkeys(("hits", "misses", "stores", "evictions", "rejected"), 0)
        self._counts["tokens_saved"] = 0
        self._traces: list[Trace] = []  # the most recent last
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StateFileError(f"{directory}: cannot create ({e.strerror or e})") from None
            with self._disk():
                pass  # removes what killed writers left

    # --- lookups and writes ----------------------------------------------------------------

    def contains(self, key: bytes) -> bool:
        """Whether an entry may exist under key (checked for real by `get`)."""
        with self._lock:
            if key in self._ram:
                return True
        return self.directory is not None and self._path(key).is_file()

    def get(self, key: bytes, model) -> Entry | None:
        """The entry under key, checked against `model` (an InfiniModel); None if there is
        none or it fails a check (then it is removed, counted and warned about). Its arrays
        are shared and read-only."""
        with self._lock:
            entry = self._ram.get(key)
            if entry is not None:
                self._ram.move_to_end(key)
                self._counts["hits"] += 1
                return entry
        if self.directory is None:
            return None
        path = self._path(key)
        try:
            seen = os.stat(path)
        except OSError:
            return None  # not there (never, or evicted meanwhile): a miss
        try:
            entry = self._read(path, key, model)
        except StateFileError as e:
            self._reject(path, seen, e)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        self._remember(key, entry)
        self._count(hits=1)
        return entry

    def put(self, key: bytes, entry: Entry, model) -> None:
        """Keep entry under key in memory and, with a directory, on disk (if it fits the disk
        budget at all; the least recently used files go first). A failed write is a warning:
        the entry stays in memory."""
        self._remember(key, entry)
        self._count(stores=1)
        if self.directory is None or calls_tokens(entry.calls) > MAX_TRAIL_TOKENS:
            return
        path = self._path(key)
        tensors = dict(entry.host)
        tensors[TRAIL_IDS] = np.concatenate([np.zeros(0, np.int64), *entry.calls]).astype(np.int64)
        tensors[TRAIL_LENGTHS] = np.array([len(c) for c in entry.calls], np.int64)
        metadata = {
            "format": statefile.STATE_FORMAT,
            "version": statefile.STATE_VERSION,
            "model_id": model.model_id,
            "variant": model.variant,
            "graph_format": str(model.format_version),
            "key": key.hex(),
            "parent": "" if entry.parent is None else entry.parent.hex(),
        }
        data = statefile.safetensors_bytes(tensors, metadata)
        if len(data) > self.disk_budget:
            return
        try:
            with self._disk() as used:
                if path.exists():
                    return
                for old in self._least_recent(used, len(data)):
                    with contextlib.suppress(OSError):
                        old.unlink()
                    self._count(evictions=1)
                with atomic_output(path, error=StateFileError) as tmp:
                    tmp.write_bytes(data)
        except (StateFileError, OSError) as e:
            warnings.warn(f"state store: not written: {e}", StoreWarning, stacklevel=3)

    def trace(self, start: bytes, tokens: np.ndarray, boundaries: list[tuple[int, bytes]]):
        """Remember a feed's boundaries (the last MAX_TRACES feeds that passed one and are at
        most MAX_TRACE_TOKENS long; one that the new feed extends is replaced)."""
        if not boundaries or len(tokens) > MAX_TRACE_TOKENS:
            return
        ids = tokens.astype(np.int32)
        ids.setflags(write=False)
        new = Trace(start, ids, boundaries)
        with self._lock:
            kept = [t for t in self._traces if not _extends(new, t)]
            self._traces = [*kept, new][-MAX_TRACES:]

    def traced(self, start: bytes, tokens: np.ndarray) -> list[tuple[int, bytes]]:
        """The boundaries (offset, key) that a feed of `tokens` from key `start` shares with
        the recent feed that shares most of its ids; [] if none."""
        with self._lock:
            traces = [t for t in self._traces if t.start == start]
        best: list[tuple[int, bytes]] = []
        for t in traces:
            n = min(len(t.tokens), len(tokens))
            differ = np.flatnonzero(t.tokens[:n] != tokens[:n])
            same = int(differ[0]) if differ.size else n
            shared = [(offset, key) for offset, key in t.boundaries if offset <= same]
            if shared and (not best or shared[-1][0] > best[-1][0]):
                best = shared
        return best

    def count_saved(self, tokens: int) -> None:
        self._count(tokens_saved=tokens)

    def count_miss(self) -> None:
        self._count(misses=1)

    def stats(self) -> StoreStats:
        disk = 0
        if self.directory is not None:
            disk = sum(size for _, _, size in self._files())
        with self._lock:
            return StoreStats(**self._counts, ram_bytes=self._ram_bytes, disk_bytes=disk)

    # --- memory tier -----------------------------------------------------------------------

    def _remember(self, key: bytes, entry: Entry) -> None:
        for array in (*entry.host.values(), *entry.calls):
            array.setflags(write=False)  # shared by every hit
        if entry.nbytes > self.ram_budget:
            return
        with self._lock:
            if key in self._ram:
                self._ram.move_to_end(key)
                return
            self._ram[key] = entry
            self._ram_bytes += entry.nbytes
            while self._ram_bytes > self.ram_budget:
                _, old = self._ram.popitem(last=False)
                self._ram_bytes -= old.nbytes
                self._counts["evictions"] += 1

    def _count(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n

    # --- disk tier -------------------------------------------------------------------------

    def _path(self, key: bytes) -> Path:
        return self.directory / f"{key.hex()}.state"

    def _files(self) -> Iterator[tuple[Path, float, int]]:
        """(path, last use, bytes) of every entry file."""
        for item in os.scandir(self.directory):
            if item.name.endswith(".state"):
                with contextlib.suppress(OSError):
                    st = item.stat()
                    yield Path(item.path), st.st_mtime, st.st_size

    def _least_recent(self, used: int, size: int) -> list[Path]:
        """The entry files to remove, least recently used first, so that `size` more bytes
        fit the budget beside the `used` ones."""
        out = []
        for path, _, nbytes in sorted(self._files(), key=lambda f: f[1]):
            if used + size <= self.disk_budget:
                break
            out.append(path)
            used -= nbytes
        return out

    @contextlib.contextmanager
    def _disk(self) -> Iterator[int]:
        """Hold the directory's lock (its flock against other processes, a process-wide lock
        against other threads: on NFS, flock is a POSIX lock, shared by a process's threads);
        yields the bytes its entries take. Every writer holds the lock while it writes, so a
        temporary seen here was left by a killed writer: removed."""
        with _DIRECTORY_LOCKS_GUARD:
            lock = _DIRECTORY_LOCKS.setdefault(self.directory.resolve(), threading.Lock())
        with lock, open(self.directory / ".lock", "a+b") as lockfile:
            if fcntl is not None:
                fcntl.flock(lockfile, fcntl.LOCK_EX)
            for leftover in self.directory.glob("*.tmp"):
                shutil.rmtree(leftover, ignore_errors=True)
            yield sum(size for _, _, size in self._files())

    def _read(self, path: Path, key: bytes, model) -> Entry:
        """The entry file at path, every check passed; StateFileError otherwise."""
        limit = model.layout.max_file_bytes() + 16 * MAX_TRAIL_TOKENS + (1 << 16)
        tensors, metadata = statefile.read_state(path, model.model_id, model.format_version, limit)
        if metadata.get("key") != key.hex():
            raise StateFileError(f"{path}: an entry of another key")
        if metadata.get("variant") != model.variant:
            raise StateFileError(f"{path}: an entry of the {metadata.get('variant')} variant")
        try:
            ids, lengths = tensors.pop(TRAIL_IDS), tensors.pop(TRAIL_LENGTHS)
            parent = bytes.fromhex(metadata["parent"]) if metadata["parent"] else None
        except (KeyError, ValueError) as e:
            raise StateFileError(f"{path}: not a store entry ({e!r})") from None
        if lengths.ndim != 1 or (lengths < 1).any() or lengths.sum() != ids.size:
            raise StateFileError(f"{path}: its calls do not add up")
        calls = np.split(ids, np.cumsum(lengths)[:-1]) if lengths.size else []
        check_state(model, tensors, path)
        return Entry(tensors, parent, calls)

    def _reject(self, path: Path, seen: os.stat_result, error: Exception) -> None:
        """Warn, count, and remove the file that failed, unless another writer has replaced
        it meanwhile."""
        warnings.warn(f"state store: ignored {error}", StoreWarning, stacklevel=3)
        self._count(rejected=1)
        with self._disk(), contextlib.suppress(OSError):
            now = os.stat(path)
            if (now.st_ino, now.st_size, now.st_mtime_ns) == (
                seen.st_ino, seen.st_size, seen.st_mtime_ns
            ):  # fmt: skip
                path.unlink()


def _extends(new: Trace, old: Trace) -> bool:
    """Whether the new trace holds all of the old one (the same start, its ids first)."""
    n = len(old.tokens)
    same_start = new.start == old.start and len(new.tokens) >= n
    return same_start and np.array_equal(new.tokens[:n], old.tokens)


def check_state(model, host: dict[str, np.ndarray], where: object) -> State:
    """host as a State of `model`; StateFileError unless it is a finite state of one stream."""
    if not all(np.isfinite(a).all() for a in host.values() if a.dtype.kind == "f"):
        raise StateFileError(f"{where}: NaN or inf in the saved state")
    try:
        state = State.from_host(model.layout, host)
    except (KeyError, ValueError, IndexError) as e:
        raise StateFileError(f"{where}: not a state of this model ({e!r})") from None
    if state.batch != 1:
        raise StateFileError(f"{where}: a batch of {state.batch} streams")
    return state


def calls_tokens(calls: Sequence[np.ndarray]) -> int:
    return sum(len(c) for c in calls)

"""The state a stream carries between graph calls, and every transition of it (docs/design.md,
"The runtime loop"): new, advanced by a call (with the commit at a segment boundary), copied
to and from the host, joined into a batch and split again. The tensors and their rules are the
graph's format version's (stepgraph/state_spec.py); nothing here names one.

A State is never modified, with one exception that keeps decoding free of copies: the window
ring of format 2 is written in place by `advance` (only the new rows), and the state it was
written from is then spent (using it raises). `copy()` gives a state with a ring of its own:
Stream.fork() and every feed start from one, so a failed feed keeps the stream's state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infini_onnx.config import InfiniConfig
from infini_onnx.errors import InputError
from infini_onnx.runtime.device import DeviceCalls, Outputs
from infini_onnx.runtime.statefile import MAX_HEADER_BYTES, MAX_TOKENS_SEEN
from infini_onnx.stepgraph.state_spec import (
    EMPTY,
    FLOAT32,
    MEMORY_INPUTS,
    REPLACE,
    RING,
    StateSpec,
    ring_slots,
)


@dataclass(frozen=True)
class Layout:
    """What a model's states look like and where they live: the format's spec, sizes from the
    config, the cache dtype of its graph, the device that holds the tensors."""

    config: InfiniConfig
    cache_dtype: np.dtype
    device: DeviceCalls
    spec: StateSpec

    def shapes(self, batch: int, cached: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of each state tensor (`cached`: tokens of the current segment)."""
        f32 = np.dtype(np.float32)
        return {
            t.name: (
                self.spec.shape(t.dims, self.config, B=batch, P=cached),
                f32 if t.dtype == FLOAT32 else self.cache_dtype,
            )
            for t in self.spec.tensors
        }

    def max_file_bytes(self) -> int:
        """The largest state file of one stream: every tensor at its largest (a cache of
        segment_len - 1 tokens, float32), tokens_seen, logits, and the largest header."""
        shapes = self.shapes(1, self.config.segment_len - 1).values()
        tensors = sum(math.prod(shape) * 4 for shape, _ in shapes)
        return 8 + MAX_HEADER_BYTES + tensors + 8 + 4 * self.config.vocab_size


class _Lease:
    """Which state may use a ring written in place: the newest one advanced from it (states
    count their generation; an integer, not a reference, so that no cycle keeps a dropped
    stream's tensors alive until the garbage collector runs)."""

    def __init__(self) -> None:
        self.newest = 0


@dataclass(frozen=True)
class State:
    tensors: dict[str, Any]  # the spec's state tensors, by name, as device values
    cached: int  # tokens of the current segment already seen
    tokens_seen: np.ndarray  # [B] int64
    logits: np.ndarray | None  # [B, V] float32: next-token logits; None before any token
    layout: Layout = field(repr=False, compare=False)
    lease: _Lease = field(default_factory=_Lease, repr=False, compare=False)
    generation: int = field(default=0, repr=False, compare=False)

    @property
    def batch(self) -> int:
        return len(self.tokens_seen)

    def graph_inputs(self) -> dict[str, Any]:
        """The state inputs of a call, by graph input name."""
        self._check_live()
        spec, inputs = self.layout.spec, dict(self.tensors)
        if spec.position_input:
            inputs[spec.position_input] = self.tokens_seen
        return inputs

    @classmethod
    def zeros(cls, layout: Layout, batch: int = 1) -> State:
        """A new stream's state: M = 0, z = 0, no cached tokens."""
        host = {name: np.zeros(*spec) for name, spec in layout.shapes(batch, 0).items()}
        host["tokens_seen"] = np.zeros(batch, np.int64)
        return cls.from_host(layout, host)

    def advance(self, out: Outputs, tokens: int) -> State:
        """The state after a call that took `tokens` new tokens, by the spec's rules: outputs
        replace their inputs or go into the ring; when the segment is complete the memory
        commits (memory, norm <- memory_acc_out, norm_acc_out) and a format-1 cache empties.
        InputError if tokens_seen would pass what a state file stores (MAX_TOKENS_SEEN)."""
        self._check_live()
        if (self.tokens_seen > MAX_TOKENS_SEEN - tokens).any():
            raise InputError(
                f"{tokens} more tokens would take the stream past {MAX_TOKENS_SEEN:,} tokens, "
                "the most a state file stores"
            )
        seen, last = self.tokens_seen + tokens, out.logits[:, -1].copy()  # not a view of all
        cached = (self.cached + tokens) % self.layout.config.segment_len
        spec, tensors = self.layout.spec, dict(self.tensors)
        for t in spec.tensors:
            if t.on_call == REPLACE:
                tensors[t.name] = out.state[t.output]
            elif t.on_call == RING:
                self._write_ring(tensors[t.name], self.layout.device.to_host(out.state[t.output]))
            if cached == 0 and t.on_commit == EMPTY:
                tensors[t.name] = np.zeros(*self.layout.shapes(self.batch, 0)[t.name])
            elif cached == 0 and t.on_commit:
                tensors[t.name] = out.state[t.on_commit]
        state = State(tensors, cached, seen, last, self.layout, self.lease, self.generation + 1)
        self.lease.newest = state.generation  # this state's ring holds the new rows: it is spent
        return state

    def copy(self) -> State:
        """The same state with rings of its own (other tensors are never written in place)."""
        self._check_live()
        rings = {t.name for t in self.layout.spec.tensors if t.on_call == RING}
        tensors = {k: v.copy() if k in rings else v for k, v in self.tensors.items()}
        return State(tensors, self.cached, self.tokens_seen, self.logits, self.layout)

    def without_memory(self) -> State:
        """The same state with the compressive memory empty (M, z and their accumulators 0):
        the memory-reset ablation of `infini eval`. It takes over the window ring, so this
        state is spent."""
        self._check_live()
        zeros = self.layout.shapes(self.batch, self.cached)
        tensors = dict(self.tensors)
        for name in MEMORY_INPUTS:
            tensors[name] = self.layout.device.to_device(np.zeros(*zeros[name]))
        state = State(
            tensors, self.cached, self.tokens_seen, self.logits, self.layout, self.lease,
            self.generation + 1,
        )  # fmt: skip
        self.lease.newest = state.generation
        return state

    def _write_ring(self, ring: np.ndarray, rows: np.ndarray) -> None:
        """Write each batch row's new rows [B, L, G, T, d] into its ring [B, L, G, K, d]."""
        T = rows.shape[3]
        for b, position in enumerate(self.tokens_seen.tolist()):
            slots, kept = ring_slots(position, T, ring.shape[3])
            ring[b][:, :, slots] = rows[b, :, :, T - kept :]  # ring[b] is a view

    def _check_live(self) -> None:
        if self.generation != self.lease.newest:
            raise InputError(
                "this state was advanced: its window was written in place by a later call "
                "(fork() the stream to keep a state to come back to)"
            )

    def to_host(self) -> dict[str, np.ndarray]:
        """The state as host arrays (what a state file holds)."""
        self._check_live()
        device = self.layout.device
        host = {name: device.to_host(v) for name, v in self.tensors.items()}
        host["tokens_seen"] = self.tokens_seen
        if self.logits is not None:
            host["logits"] = self.logits
        return host

    @classmethod
    def from_host(cls, layout: Layout, host: dict[str, np.ndarray]) -> State:
        """A State on the layout's device from host arrays (rings always stay on the host);
        ValueError or KeyError if a shape does not fit the model."""
        c = layout.config
        tokens_seen = np.asarray(host["tokens_seen"])
        if tokens_seen.ndim != 1 or tokens_seen.dtype.kind not in "iu":
            raise ValueError(f"tokens_seen must be a vector of integers, got {tokens_seen!r}")
        batch = len(tokens_seen)
        cached = int(tokens_seen[0] % c.segment_len) if batch else 0
        if (tokens_seen < 0).any() or (tokens_seen % c.segment_len != cached).any():
            raise ValueError(
                f"tokens_seen {tokens_seen.tolist()} are not at one position of a segment "
                f"(segment_len {c.segment_len})"
            )
        expected = layout.shapes(batch, cached)
        if "logits" in host:
            expected["logits"] = ((batch, c.vocab_size), np.dtype(np.float32))
        arrays = {}
        for name, (shape, dtype) in expected.items():
            if host[name].shape != shape:
                raise ValueError(
                    f"{name} has shape {list(host[name].shape)}, expected {list(shape)}"
                )
            arrays[name] = host[name].astype(dtype, copy=False)
        rings = {t.name for t in layout.spec.tensors if t.on_call == RING}
        tensors = {
            t.name: np.array(arrays[t.name])
            if t.name in rings
            else layout.device.to_device(arrays[t.name])
            for t in layout.spec.tensors
        }
        return cls(
            tensors,
            cached=cached,
            tokens_seen=tokens_seen.astype(np.int64),
            logits=arrays.get("logits"),
            layout=layout,
        )

    @classmethod
    def join(cls, states: Sequence[State]) -> State:
        """One batch of several states of one layout at the same position in their segment,
        stacked along the batch axis (logits only if all have them)."""
        hosts = [s.to_host() for s in states]
        common = [k for k in hosts[0] if all(k in h for h in hosts)]
        return cls.from_host(
            states[0].layout, {k: np.concatenate([h[k] for h in hosts]) for k in common}
        )

    def split(self) -> list[State]:
        """One state per batch row (each keeps its batch axis of 1)."""
        host = self.to_host()
        return [
            State.from_host(self.layout, {k: v[i : i + 1] for k, v in host.items()})
            for i in range(self.batch)
        ]

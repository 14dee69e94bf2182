"""The state a stream carries between graph calls, and every transition of it (docs/design.md,
"The runtime loop"): new, advanced by a call (with the commit at a segment boundary), copied
to and from the host, joined into a batch and split again.

A State is never modified: every transition makes a new one. So a stream keeps its previous
state when a call fails, and fork() is free.
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
from infini_onnx.stepgraph.names import CACHE_INPUTS, STATE_TENSORS


@dataclass(frozen=True)
class Layout:
    """What a model's states look like and where they live: sizes from its config, the cache
    dtype of its graph, the device that holds the tensors."""

    config: InfiniConfig
    cache_dtype: np.dtype
    device: DeviceCalls

    def shapes(self, batch: int, cached: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of each state tensor."""
        c = self.config
        L, G, d = c.num_hidden_layers, c.num_key_value_heads, c.head_dim
        f32 = np.dtype(np.float32)
        matrix, vector = ((batch, L, G, d, d), f32), ((batch, L, G, d), f32)  # M and z
        cache = ((batch, L, G, cached, d), self.cache_dtype)
        return dict(zip(STATE_TENSORS, (matrix, vector, matrix, vector, cache, cache), strict=True))

    def max_file_bytes(self) -> int:
        """The largest state file of one stream: every tensor at its largest (a cache of
        segment_len - 1 tokens, float32), tokens_seen, logits, and the largest header."""
        shapes = self.shapes(1, self.config.segment_len - 1).values()
        tensors = sum(math.prod(shape) * 4 for shape, _ in shapes)
        return 8 + MAX_HEADER_BYTES + tensors + 8 + 4 * self.config.vocab_size


@dataclass(frozen=True)
class State:
    memory: Any  # [B, L, G, d, d] float32: M at the start of the current segment
    norm: Any  # [B, L, G, d] float32: z at the start of the current segment
    memory_acc: Any  # [B, L, G, d, d] float32: M plus the writes of the cached tokens
    norm_acc: Any  # [B, L, G, d] float32
    past_key: Any  # [B, L, G, P, d] model dtype: keys after RoPE
    past_value: Any  # [B, L, G, P, d] model dtype
    cached: int  # P: tokens of the current segment in the cache
    tokens_seen: np.ndarray  # [B] int64
    logits: np.ndarray | None  # [B, V] float32: next-token logits; None before any token
    layout: Layout = field(repr=False, compare=False)

    @property
    def batch(self) -> int:
        return len(self.tokens_seen)

    def graph_inputs(self) -> dict[str, Any]:
        """The state inputs of a call, by graph input name."""
        return {name: getattr(self, name) for name in STATE_TENSORS}

    @classmethod
    def zeros(cls, layout: Layout, batch: int = 1) -> State:
        """A new stream's state: M = 0, z = 0, no cached tokens."""
        host = {name: np.zeros(*spec) for name, spec in layout.shapes(batch, 0).items()}
        host["tokens_seen"] = np.zeros(batch, np.int64)
        return cls.from_host(layout, host)

    def advance(self, out: Outputs, tokens: int) -> State:
        """The state after a call that took `tokens` new tokens: the cache grows by them; when
        the segment is complete the memory commits (memory, norm <- memory_acc_out,
        norm_acc_out) and the cache empties. InputError if tokens_seen would pass what a state
        file stores (MAX_TOKENS_SEEN)."""
        if (self.tokens_seen > MAX_TOKENS_SEEN - tokens).any():
            raise InputError(
                f"{tokens} more tokens would take the stream past {MAX_TOKENS_SEEN:,} tokens, "
                "the most a state file stores"
            )
        seen, last = self.tokens_seen + tokens, out.logits[:, -1].copy()  # not a view of all
        cached = self.cached + tokens
        if cached == self.layout.config.segment_len:
            empty = np.zeros(*self.layout.shapes(self.batch, 0)[CACHE_INPUTS[0]])
            macc, nacc = out.memory_acc, out.norm_acc
            return State(macc, nacc, macc, nacc, empty, empty, 0, seen, last, self.layout)
        return State(
            self.memory,
            self.norm,
            out.memory_acc,
            out.norm_acc,
            out.present_key,
            out.present_value,
            cached,
            seen,
            last,
            self.layout,
        )

    def to_host(self) -> dict[str, np.ndarray]:
        """The state as host arrays (what a state file holds)."""
        device = self.layout.device
        host = {name: device.to_host(v) for name, v in self.graph_inputs().items()}
        host["tokens_seen"] = self.tokens_seen
        if self.logits is not None:
            host["logits"] = self.logits
        return host

    @classmethod
    def from_host(cls, layout: Layout, host: dict[str, np.ndarray]) -> State:
        """A State on the layout's device from host arrays; ValueError or KeyError if a shape
        does not fit the model."""
        c = layout.config
        tokens_seen = np.asarray(host["tokens_seen"])
        if tokens_seen.ndim != 1 or tokens_seen.dtype.kind not in "iu":
            raise ValueError(f"tokens_seen must be a vector of integers, got {tokens_seen!r}")
        batch, cached = len(tokens_seen), host["past_key"].shape[3]
        if (tokens_seen < 0).any() or (tokens_seen % c.segment_len != cached).any():
            raise ValueError(
                f"tokens_seen {tokens_seen.tolist()} does not fit {cached} cached tokens "
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
        if cached >= c.segment_len:
            raise ValueError(f"{cached} cached tokens, segment_len is {c.segment_len}")
        return cls(
            **{name: layout.device.to_device(arrays[name]) for name in STATE_TENSORS},
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

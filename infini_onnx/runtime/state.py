"""The state a stream carries between graph calls (SPEC section 3), batch first.

A State is never modified: every call makes a new one. So a stream keeps its previous state
when a call fails, and fork() is free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TENSORS = ("memory", "norm", "memory_acc", "norm_acc", "past_key", "past_value")


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

    @property
    def batch(self) -> int:
        return len(self.tokens_seen)

    def graph_inputs(self) -> dict[str, Any]:
        """The state inputs of a call, by graph input name."""
        return {name: getattr(self, name) for name in TENSORS}


def zeros(
    layers: int, kv_heads: int, head_dim: int, cache_dtype: np.dtype, batch: int = 1
) -> dict[str, np.ndarray]:
    """Host arrays of a new stream: M = 0, z = 0, no cached tokens."""
    L, G, d = layers, kv_heads, head_dim
    memory = np.zeros((batch, L, G, d, d), np.float32)
    norm = np.zeros((batch, L, G, d), np.float32)
    cache = np.zeros((batch, L, G, 0, d), cache_dtype)
    return dict(
        memory=memory, norm=norm, memory_acc=memory, norm_acc=norm, past_key=cache, past_value=cache
    )


def concat(host_states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack host tensors of several states along the batch axis (logits only if all have)."""
    common = [k for k in host_states[0] if all(k in s for s in host_states)]
    return {k: np.concatenate([s[k] for s in host_states]) for k in common}


def split(host_state: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One host state per batch row (each keeps its batch axis of 1)."""
    batch = len(next(iter(host_state.values())))
    return [{k: v[i : i + 1] for k, v in host_state.items()} for i in range(batch)]

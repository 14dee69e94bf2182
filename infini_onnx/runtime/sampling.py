"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus)."""

from __future__ import annotations

import numpy as np

from infini_onnx.runtime.errors import InputError


class Sampler:
    """Samples one token per batch row; temperature 0 is greedy (argmax)."""

    def __init__(
        self,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ):
        if not temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits [B, V] -> token ids [B] int64."""
        if self.temperature == 0 or self.top_k == 1:
            return logits.argmax(-1).astype(np.int64)
        return np.array([self._sample_row(row) for row in logits], np.int64)

    def _sample_row(self, logits: np.ndarray) -> int:
        order = np.argsort(-logits, kind="stable")  # most likely first
        if self.top_k is not None:
            order = order[: self.top_k]
        scaled = logits[order].astype(np.float64) / self.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if self.top_p is not None:
            # keep the smallest prefix whose probability reaches top_p
            keep = int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(len(order), p=probs)])

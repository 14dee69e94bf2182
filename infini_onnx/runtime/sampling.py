"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from infini_onnx.errors import InputError

MIN_TEMPERATURE = 1e-6  # below it logits / temperature overflows: use 0 for greedy


@dataclass(frozen=True)
class SamplingOptions:
    """How generation picks tokens; every generate path and the CLI take this one object.

    temperature 0 (or top_k 1) is greedy; top_k keeps the k most likely tokens, top_p the
    smallest set whose probability reaches p; seed makes the draws reproducible.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if not _is_number(t) or not (t == 0 or MIN_TEMPERATURE <= t < math.inf):
            raise InputError(
                f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, inf), got {t!r}"
            )
        if self.top_k is not None and not (_is_integer(self.top_k) and self.top_k >= 1):
            raise InputError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.top_p is not None and not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not (_is_integer(self.seed) and self.seed >= 0):
            raise InputError(f"seed must be an integer >= 0, got {self.seed!r}")

    def with_fields(self, **fields) -> SamplingOptions:
        """A copy with some fields replaced (a TypeError names an unknown one)."""
        return dataclasses.replace(self, **fields) if fields else self


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class Sampler:
    """Samples one token per batch row with the given options."""

    def __init__(self, options: SamplingOptions):
        self.options = options
        self.rng = np.random.default_rng(options.seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits [B, V] -> token ids [B] int64."""
        if self.options.temperature == 0 or self.options.top_k == 1:
            return logits.argmax(-1).astype(np.int64)
        return np.array([self._sample_row(row) for row in logits], np.int64)

    def _sample_row(self, logits: np.ndarray) -> int:
        o = self.options
        order = np.argsort(-logits, kind="stable")  # most likely first
        if o.top_k is not None:
            order = order[: o.top_k]
        scaled = logits[order].astype(np.float64) / o.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if o.top_p is not None:
            # keep the smallest prefix whose probability reaches top_p
            keep = int(np.searchsorted(np.cumsum(probs), o.top_p)) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(len(order), p=probs)])

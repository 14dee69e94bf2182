"""Bits per byte of a text read as one stream through the runtime (`infini eval`,
docs/real-text.md).

The stream starts with the end-of-text token, as every document after the first does in
training, and each token of the text is scored given everything before it. A token counts at
the byte offset where it starts; bits per byte are a range's bits over its bytes.

The memory-reset ablation empties the compressive memory at every segment boundary, so that
only the local window carries context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from infini_onnx.errors import InputError
from infini_onnx.runtime.session import InfiniModel
from infini_onnx.runtime.state import State
from infini_onnx.runtime.textio import check_unicode

# Position ranges of the report, in bytes from the stream's start (None: to the end).
BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0-1K", 0, 1_000),
    ("1K-10K", 1_000, 10_000),
    ("10K-100K", 10_000, 100_000),
    ("100K+", 100_000, None),
    ("10K+", 10_000, None),  # what the memory adds beyond a short context
    ("all", 0, None),
)
CURVE_POINTS = 24  # log-spaced position bins of the plot


@dataclass(frozen=True)
class Scored:
    """One text scored by one model: each token's bits and where it starts."""

    bits: np.ndarray  # [S] float64: -log2 p(token | everything before it)
    starts: np.ndarray  # [S] int64: the byte offset of each token
    size: int  # bytes of the text

    def bits_per_byte(self, start: int = 0, end: int | None = None) -> float:
        """Bits of the tokens starting in [start, end) bytes over the bytes there (NaN when
        the text is shorter than `start`)."""
        end = self.size if end is None else min(end, self.size)
        if end <= start:
            return math.nan
        inside = (self.starts >= start) & (self.starts < end)
        return float(self.bits[inside].sum() / (end - start))

    def buckets(self) -> dict[str, float]:
        return {name: self.bits_per_byte(a, b) for name, a, b in BUCKETS}

    def curve(self, points: int = CURVE_POINTS) -> list[tuple[int, float]]:
        """(bin end in bytes, bits per byte in the bin) over log-spaced bins from 100 bytes."""
        if self.size <= 100:
            return [(self.size, self.bits_per_byte())]
        edges = np.unique(np.geomspace(100, self.size, points).astype(np.int64))
        edges = np.concatenate([[0], edges])
        return [(int(b), self.bits_per_byte(int(a), int(b))) for a, b in zip(edges, edges[1:])]


def tokenize_with_offsets(tokenizer: Tokenizer | None, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [S] of `text` and the byte offset [S] where each starts. Offsets never go
    back and stay inside the text: tokenizers that trim whitespace from their offsets give a
    whitespace token an empty span after it, which would fall outside every range."""
    if tokenizer is None:
        raise InputError("this model has no tokenizer in its metadata: it cannot read text")
    check_unicode(text)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    char_bytes = np.fromiter((len(c.encode()) for c in text), np.int64, len(text))
    byte_at_char = np.concatenate([[0], np.cumsum(char_bytes)])  # [chars + 1]
    starts = np.array([byte_at_char[a] for a, _ in encoding.offsets], np.int64)
    last = max(int(byte_at_char[-1]) - 1, 0)
    starts = np.minimum(np.maximum.accumulate(starts), last)
    return np.array(encoding.ids, np.int64), starts


def token_bits(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log2 softmax(logits)[target] for logits [T, V] float32, targets [T] -> [T] float64."""
    z = logits.astype(np.float64)
    top = z.max(-1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(-1))
    return (lse - z[np.arange(len(targets)), targets]) / math.log(2)


def score(
    model: InfiniModel,
    text: str,
    reset_memory: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Scored:
    """Every token of `text` scored by the model, read as one stream after end-of-text,
    one segment per call (reset_memory: the memory emptied at each segment boundary).
    `progress(tokens)` is called after each call. The text's bytes are its UTF-8 encoding."""
    ids, starts = tokenize_with_offsets(model.tokenizer, text)
    if not len(ids):
        raise InputError("the text is empty: nothing to score")
    N = model.config.segment_len
    inputs = np.concatenate([[model.config.eos_token_id], ids[:-1]])  # token i predicts i + 1
    state, bits = State.zeros(model.layout), []
    for start in range(0, len(ids), N):
        piece = inputs[None, start : start + N]
        logits, state = model.step(state, piece, piece.shape[1])
        bits.append(token_bits(logits[0], ids[start : start + N]))
        if reset_memory:
            state = state.without_memory()
        if progress is not None:
            progress(piece.shape[1])
    return Scored(np.concatenate(bits), starts, len(text.encode()))

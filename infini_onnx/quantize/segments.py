"""The quantizer's streams over a step graph, through the runtime's public API.

Every call ingests one whole segment (P = 0, T = segment_len, memory_acc bound to memory); the
runtime commits the memory after it. Used for calibration and for the accuracy report.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from infini_onnx.runtime import InfiniModel, Stream
from infini_onnx.stepgraph.state_spec import MEMORY_INPUTS


@dataclass
class SegmentResult:
    """The outputs of one segment: logits [T, V] and the state after it."""

    logits: np.ndarray
    memory: np.ndarray  # [1, L, G, d, d]
    norm: np.ndarray  # [1, L, G, d]


def segments(tokens: np.ndarray, segment_len: int) -> Iterator[np.ndarray]:
    """The whole segments of a token stream as [segment_len] int64 ids (a trailing partial
    segment is dropped)."""
    for start in range(0, tokens.size - segment_len + 1, segment_len):
        yield tokens[start : start + segment_len].astype(np.int64)


def stream_segments(model: InfiniModel, tokens: np.ndarray) -> Iterator[SegmentResult]:
    """Run `tokens` through a Stream one whole segment per call, carrying the memory. Raises
    the runtime's NonFiniteError if NaN or inf appears."""
    stream = Stream(model)
    for ids in segments(tokens, model.config.segment_len):
        logits = stream.feed(ids, all_logits=True)
        host = stream.state.to_host()
        memory, norm = MEMORY_INPUTS[:2]  # M and z
        yield SegmentResult(logits, host[memory], host[norm])

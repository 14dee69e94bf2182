"""A minimal segment loop over a step graph with ONNX Runtime (SPEC section 3).

Every call ingests one whole segment: P = 0, T = segment_len, memory_acc bound to memory; then
memory <- memory_acc_out. Used for calibration and for the accuracy report.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass
class SegmentResult:
    """The outputs of one segment: logits [T, V] and the state after it."""

    logits: np.ndarray
    memory: np.ndarray  # [1, L, G, d, d]
    norm: np.ndarray  # [1, L, G, d]


def new_session(model: str | Path | bytes, threads: int = 0) -> ort.InferenceSession:
    """A CPU session on a file or serialised model (threads 0: ONNX Runtime's default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def segment_feeds(
    session: ort.InferenceSession,
    config: dict,
    ids: np.ndarray,
    memory: np.ndarray,
    norm: np.ndarray,
) -> dict[str, np.ndarray]:
    """The inputs of a whole-segment call: empty cache, memory_acc = memory."""
    L, G, d = config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"]
    cache_type = {i.name: i.type for i in session.get_inputs()}["past_key"]
    empty = np.zeros((1, L, G, 0, d), _NUMPY_TYPES[cache_type])
    return {
        "input_ids": ids.reshape(1, -1).astype(np.int64),
        "past_key": empty,
        "past_value": empty,
        "memory": memory,
        "norm": norm,
        "memory_acc": memory,
        "norm_acc": norm,
        "num_logits": np.array([ids.size], np.int64),
    }


def zero_state(config: dict) -> tuple[np.ndarray, np.ndarray]:
    """memory and norm at the start of a stream."""
    L, G, d = config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"]
    return np.zeros((1, L, G, d, d), np.float32), np.zeros((1, L, G, d), np.float32)


def segments(tokens: np.ndarray, segment_len: int) -> Iterator[np.ndarray]:
    """The whole segments of a token stream (a trailing partial segment is dropped)."""
    for start in range(0, tokens.size - segment_len + 1, segment_len):
        yield tokens[start : start + segment_len]


def stream(
    session: ort.InferenceSession, config: dict, tokens: np.ndarray
) -> Iterator[SegmentResult]:
    """Run `tokens` through the graph one whole segment per call, carrying the memory."""
    memory, norm = zero_state(config)
    for ids in segments(tokens, config["segment_len"]):
        feeds = segment_feeds(session, config, ids, memory, norm)
        logits, memory, norm = session.run(["logits", "memory_acc_out", "norm_acc_out"], feeds)
        yield SegmentResult(logits[0], memory, norm)

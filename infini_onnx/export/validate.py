"""Check an exported step graph in ONNX Runtime against the PyTorch reference over a stream.

The stream (batch 2, different tokens per row): one whole-segment call (P = 0, T = N), a
partial segment (T = N - 3), then token-by-token decoding across the next segment boundary.
ONNX Runtime runs the graph through the runtime's public API (a StreamBatch, whose calls go
through the one runtime loop); the reference is the model's `forward`, which splits and rolls the
state by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from infini_onnx.errors import NonFiniteError, ValidationError
from infini_onnx.model import InfiniLlamaForCausalLM, StreamState
from infini_onnx.runtime import InfiniModel, Stream, StreamBatch
from infini_onnx.stepgraph.state_spec import LATEST, MEMORY_INPUTS

RELATIVE = frozenset(MEMORY_INPUTS)  # compared relative to their largest reference value
DECODE_TOKENS = 6


@dataclass(frozen=True)
class Tolerance:
    """logits and cache: |diff| <= logits * max(1, max|ref|); memory/norm: |diff| <= state *
    max|ref| (relative)."""

    logits: float
    state: float


TOLERANCES = {"fp32": Tolerance(1e-4, 1e-5), "fp16": Tolerance(2e-2, 1e-2)}


def stream_chunks(segment_len: int) -> list[int]:
    """Tokens per call: a whole segment, a partial one, then single tokens across a boundary."""
    partial = max(1, segment_len - DECODE_TOKENS // 2)
    return [segment_len, partial] + [1] * DECODE_TOKENS


def onnx_stream(
    model: InfiniModel, input_ids: np.ndarray, chunks: list[int]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run `input_ids` [B, S] through a StreamBatch in calls of `chunks` tokens (each fits the
    segment, so each is one graph call): all logits [B, S, V] and the final state on the host."""
    batch = StreamBatch([Stream(model) for _ in range(input_ids.shape[0])])
    logits, start = [], 0
    for take in chunks:
        logits.append(batch.feed(input_ids[:, start : start + take], all_logits=True))
        start += take
    host = batch.state.to_host()
    return np.concatenate(logits, axis=1), {name: host[name] for name in LATEST.names}


@torch.no_grad()
def torch_stream(
    model: InfiniLlamaForCausalLM, input_ids: np.ndarray, chunks: list[int]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The reference: `model.forward` on the same chunks, carrying its StreamState."""
    ids = torch.from_numpy(input_ids)
    state: StreamState | None = None
    logits, start = [], 0
    for take in chunks:
        out, state = model(ids[:, start : start + take], state)
        logits.append(out)
        start += take
    as_np = {name: getattr(state, name).float().numpy() for name in LATEST.names}
    return torch.cat(logits, dim=1).float().numpy(), as_np


def compare(
    ref: tuple[np.ndarray, dict[str, np.ndarray]],
    got: tuple[np.ndarray, dict[str, np.ndarray]],
    tol: Tolerance,
) -> tuple[dict[str, float], list[str]]:
    """Max differences (absolute for logits and cache, relative for memory/norm) and failures."""
    diffs, failures = {}, []
    pairs = [("logits", ref[0], got[0])]
    pairs += [(name, ref[1][name], got[1][name]) for name in LATEST.names]
    for name, r, g in pairs:
        if r.shape != g.shape:
            failures.append(f"{name} shape {list(g.shape)}, expected {list(r.shape)}")
            continue
        diff = float(np.abs(r - g.astype(np.float32)).max()) if r.size else 0.0
        scale = float(np.abs(r).max()) if r.size else 0.0
        if name in RELATIVE:
            diff, limit = diff / max(scale, 1e-30), tol.state
        else:
            limit = tol.logits * max(1.0, scale)
        diffs[name] = diff
        if not diff <= limit:  # also catches NaN
            failures.append(f"{name} differs by {diff:.2e} (tolerance {limit:.1e})")
    return diffs, failures


def validate_export(
    onnx_path: str | Path,
    model: InfiniLlamaForCausalLM,
    variant: str = "fp32",
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Run the stream above in ONNX Runtime (on `device`) and in PyTorch; raise ValidationError
    when any difference is over TOLERANCES[variant]. Returns the max differences."""
    c = model.config
    chunks = stream_chunks(c.segment_len)
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, c.vocab_size, (2, sum(chunks)), generator=g).numpy()
    try:
        got = onnx_stream(InfiniModel(onnx_path, device=device), input_ids, chunks)
    except NonFiniteError as e:
        raise ValidationError(
            f"validation failed: ONNX Runtime disagrees with PyTorch: {e}"
        ) from None
    ref = torch_stream(model, input_ids, chunks)
    diffs, failures = compare(ref, got, TOLERANCES[variant])
    if failures:
        raise ValidationError(
            f"validation failed: ONNX Runtime disagrees with PyTorch: {'; '.join(failures)}"
        )
    return diffs


def format_diffs(diffs: dict[str, float]) -> str:
    """One line: logits 3.1e-07, memory 2.0e-08 (rel), ..."""
    return ", ".join(
        f"{name} {value:.1e}{' (rel)' if name in RELATIVE else ''}" for name, value in diffs.items()
    )


def device_for(variant: str) -> str:
    """The runtime device to validate a variant on: fp16 on CUDA when onnxruntime has it."""
    import onnxruntime as ort

    if variant == "fp16" and "CUDAExecutionProvider" in ort.get_available_providers():
        return "cuda"
    return "cpu"

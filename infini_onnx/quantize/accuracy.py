"""Accuracy of a variant against the float model on a held-out stream, and file sizes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from infini_onnx.quantize.segments import stream_segments
from infini_onnx.runtime import InfiniModel, NonFiniteError


@dataclass
class Accuracy:
    """How a variant follows the float model over one stream, segment by segment."""

    segments: int
    top1_agreement: float  # fraction of positions with the same argmax
    mean_kl: float  # mean KL(float || variant) per position, nats
    final_memory_rel_error: float  # |M_variant - M_float| / |M_float| after the last segment
    final_norm_rel_error: float
    state_finite: bool
    agreement_per_segment: list[float]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-30))


def compare(reference: InfiniModel, variant: InfiniModel, tokens: np.ndarray) -> Accuracy:
    """Stream `tokens` through both graphs side by side (whole segments, carried state).

    If the variant's outputs turn NaN or inf (the runtime refuses them), the comparison ends
    there: state_finite is False, the figures cover the segments before, the final errors are inf.
    """
    agreement, kl, finite = [], [], True
    ref = out = None
    variant_segments = stream_segments(variant, tokens)
    for ref in stream_segments(reference, tokens):
        try:
            out = next(variant_segments)
        except NonFiniteError:
            finite = False
            break
        agreement.append(float((ref.logits.argmax(-1) == out.logits.argmax(-1)).mean()))
        lp, lq = _log_softmax(ref.logits), _log_softmax(out.logits)
        kl.append(float((np.exp(lp) * (lp - lq)).sum(-1).mean()))
    if ref is None:
        raise ValueError("the stream is shorter than one segment")
    return Accuracy(
        segments=len(agreement),
        top1_agreement=float(np.mean(agreement)) if agreement else 0.0,
        mean_kl=float(np.mean(kl)) if kl else float("inf"),
        final_memory_rel_error=_rel_error(out.memory, ref.memory) if finite else float("inf"),
        final_norm_rel_error=_rel_error(out.norm, ref.norm) if finite else float("inf"),
        state_finite=finite,
        agreement_per_segment=agreement,
    )


@dataclass
class Report:
    """What `infini quantize` prints and writes with --report."""

    variant: str
    input_path: str
    output_path: str
    input_bytes: int
    output_bytes: int
    accuracy: Accuracy | None

    @property
    def size_ratio(self) -> float:
        return self.output_bytes / self.input_bytes

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "size_ratio": self.size_ratio}, indent=2) + "\n"

    def lines(self) -> list[str]:
        mib = 1 << 20
        out = [
            f"{self.variant}: {self.output_bytes / mib:.2f} MiB "
            f"({self.size_ratio:.3f}x the fp32 {self.input_bytes / mib:.2f} MiB)"
        ]
        a = self.accuracy
        if a is not None:
            out.append(
                f"held-out stream, {a.segments} segments: top-1 agreement "
                f"{a.top1_agreement:.2%}, mean KL {a.mean_kl:.2e} nats, final memory rel. error "
                f"{a.final_memory_rel_error:.3%} (norm {a.final_norm_rel_error:.3%}), "
                f"state {'finite' if a.state_finite else 'NOT FINITE'}"
            )
        return out


def file_bytes(path: str | Path) -> int:
    """Size of an .onnx file plus the external data files beside it that it names."""
    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"
    }
    return total + sum((path.parent / loc).stat().st_size for loc in locations)

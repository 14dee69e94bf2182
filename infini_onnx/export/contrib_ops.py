"""ONNX Runtime contrib ops the exporter emits for the model's custom torch ops
(docs/export.md, "Fusions"): the torch op computes the same thing in eager PyTorch."""

from __future__ import annotations

import onnxscript
import torch
from onnxscript import FLOAT, INT64, values

MICROSOFT = values.Opset("com.microsoft", 1)


@onnxscript.script(MICROSOFT)
def _rotary_embedding(x: FLOAT, positions: INT64, cos_table: FLOAT, sin_table: FLOAT) -> FLOAT:
    """com.microsoft.RotaryEmbedding on x [B, n, S, d] at positions [B, S]: one node for
    RoPE's split, negation, concatenation, two products and a sum (rotate_half layout)."""
    return MICROSOFT.RotaryEmbedding(x, positions, cos_table, sin_table, interleaved=0)


def translation_table() -> dict:
    """torch op -> ONNX function, for torch.onnx.export(custom_translation_table=...)."""
    import infini_onnx.model.modeling  # noqa: F401  (registers torch.ops.infini)

    return {torch.ops.infini.rotary_embedding.default: _rotary_embedding}

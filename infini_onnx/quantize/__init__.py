"""Quantised variants of an exported step graph: int8, int8-static, int4, fp16.

The weights shrink; the memory (M, z), its accumulators and the math on them stay float32.
"""

from infini_onnx.quantize.errors import QuantizeError
from infini_onnx.quantize.quantizer import accuracy_report, quantize_model
from infini_onnx.quantize.targets import MODES, TARGETS, Settings, resolve

__all__ = [
    "MODES",
    "TARGETS",
    "QuantizeError",
    "Settings",
    "accuracy_report",
    "quantize_model",
    "resolve",
]

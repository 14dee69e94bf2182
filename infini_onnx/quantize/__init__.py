"""Quantised variants of an exported step graph: int8, int8-static, int4, fp16.

The weights shrink; the memory (M, z), its accumulators and the math on them stay float32.
Needs onnx (the `[export]` extra): `infini_onnx.quantize.quantizer.quantize_model` is the entry.
This package's import stays light so that `infini --help` works on runtime-only installs.
"""

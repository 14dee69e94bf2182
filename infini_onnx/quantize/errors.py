"""Errors of the quantize stage (one line each on the command line)."""

from infini_onnx.errors import InfiniError


class QuantizeError(InfiniError):
    """The input cannot be quantised: not ONNX, no metadata, already quantised, a bad option."""

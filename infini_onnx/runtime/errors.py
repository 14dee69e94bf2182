"""Errors of the runtime: each is an InfiniError, reported by the CLI as one line."""

from infini_onnx.errors import InfiniError


class ModelFileError(InfiniError):
    """The .onnx file is missing, not ONNX, truncated, or not an infini-onnx step graph."""


class DeviceError(InfiniError):
    """The requested device (execution provider) is not available."""


class InputError(InfiniError, ValueError):
    """Bad tokens or arguments: ids outside the vocabulary, empty input, bad sampling options."""


class StateFileError(InfiniError):
    """A saved stream state is missing, corrupt, or belongs to another model."""


class NonFiniteError(InfiniError, FloatingPointError):
    """NaN or inf appeared in the outputs of a call; the stream kept its previous state."""

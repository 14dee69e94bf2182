"""Every error infini-onnx raises on purpose: one line each on the command line, no traceback.

All derive from InfiniError, so an application can catch them together; the runtime's are
re-exported by `infini_onnx.runtime`.
"""


class InfiniError(Exception):
    """Base class: a problem with the user's input, reported as one clear line."""


class ModelDirError(InfiniError):
    """A model directory (config.json, safetensors, tokenizer.json) is missing or invalid."""


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


class ValidationError(InfiniError):
    """An exported graph disagrees with the PyTorch reference."""


class QuantizeError(InfiniError):
    """The input cannot be quantised: not ONNX, no metadata, already quantised, a bad option."""


class StreamNotFoundError(InfiniError, LookupError):
    """No stream has this id (a server's stream was deleted, or never existed)."""

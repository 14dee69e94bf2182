"""The streaming runtime: numpy, onnxruntime and tokenizers only (no torch, no onnx).

from infini_onnx.runtime import InfiniModel
model = InfiniModel("model.onnx")
stream = model.stream()
stream.feed_text(open("book.txt"))
print("".join(stream.generate_text("Summary:", max_new_tokens=100)))
"""

from infini_onnx.runtime.errors import (
    DeviceError,
    InputError,
    ModelFileError,
    NonFiniteError,
    StateFileError,
)
from infini_onnx.runtime.model import InfiniModel
from infini_onnx.runtime.stream import Stream, StreamBatch

__all__ = [
    "DeviceError",
    "InfiniModel",
    "InputError",
    "ModelFileError",
    "NonFiniteError",
    "StateFileError",
    "Stream",
    "StreamBatch",
]

"""The streaming runtime: numpy, onnxruntime and tokenizers only (no torch, no onnx).

from infini_onnx.runtime import InfiniModel, Stream
model = InfiniModel("model.onnx")
stream = Stream(model)
stream.feed_text(open("book.txt"))
print("".join(stream.generate_text("Summary:", max_new_tokens=100)))
"""

from infini_onnx.errors import (
    DeviceError,
    InputError,
    ModelFileError,
    NonFiniteError,
    StateFileError,
)
from infini_onnx.runtime.device import session_options
from infini_onnx.runtime.sampling import SamplingOptions
from infini_onnx.runtime.session import InfiniModel
from infini_onnx.runtime.state import State
from infini_onnx.runtime.store import StateStore, StoreWarning
from infini_onnx.runtime.stream import Stream, StreamBatch

__all__ = [
    "DeviceError",
    "InfiniModel",
    "InputError",
    "ModelFileError",
    "NonFiniteError",
    "SamplingOptions",
    "State",
    "StateFileError",
    "StateStore",
    "StoreWarning",
    "Stream",
    "StreamBatch",
    "session_options",
]

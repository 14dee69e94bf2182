"""infini-onnx: Infini-attention language models over unbounded streams with ONNX Runtime.

Importing the package is light (no torch, no onnx): the runtime lives in
`infini_onnx.runtime`; the PyTorch reference in `infini_onnx.model` needs the `[export]` extra.
"""

from infini_onnx.config import InfiniConfig, preset_config
from infini_onnx.errors import InfiniError, ModelDirError

__version__ = "0.1.0"
__all__ = ["InfiniConfig", "InfiniError", "ModelDirError", "preset_config", "__version__"]

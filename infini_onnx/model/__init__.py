"""The PyTorch reference model (needs the `[export]` extra: torch, safetensors)."""

from infini_onnx.model.io import from_pretrained, init_model_dir, load_config, save_pretrained
from infini_onnx.model.modeling import InfiniLlamaForCausalLM, StreamState

__all__ = [
    "InfiniLlamaForCausalLM",
    "StreamState",
    "from_pretrained",
    "init_model_dir",
    "load_config",
    "save_pretrained",
]

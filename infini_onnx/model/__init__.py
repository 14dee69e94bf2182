"""The PyTorch reference model (needs the `[export]` extra: torch, safetensors)."""

from infini_onnx.model.modeling import InfiniLlamaForCausalLM, StreamState, init_model_dir
from infini_onnx.modeldir import load_config

# Module-level forms of the class's loader and writer, as in earlier releases.
from_pretrained = InfiniLlamaForCausalLM.from_pretrained
save_pretrained = InfiniLlamaForCausalLM.save_pretrained

__all__ = [
    "InfiniLlamaForCausalLM",
    "StreamState",
    "from_pretrained",
    "init_model_dir",
    "load_config",
    "save_pretrained",
]

"""The ONNX step-graph contract (SPEC section 3): names and metadata keys, shared by all stages.

Pure Python: the runtime reads the same keys through onnxruntime's modelmeta.
"""

import hashlib
from pathlib import Path

FORMAT_VERSION = 1
KEY_FORMAT_VERSION = "infini.format_version"
KEY_CONFIG = "infini.config"  # the whole config.json
KEY_VARIANT = "infini.variant"  # fp32 | fp16 | int8 | int8-static | int4
KEY_TOKENIZER = "infini.tokenizer"  # tokenizer.json text, when the model directory has one
KEY_MODEL_ID = "infini.model_id"  # sha256 of config and source weights: the model's identity

INPUT_NAMES = (
    "input_ids",
    "past_key",
    "past_value",
    "memory",
    "norm",
    "memory_acc",
    "norm_acc",
    "num_logits",
)
OUTPUT_NAMES = ("logits", "present_key", "present_value", "memory_acc_out", "norm_acc_out")


def model_id(model_dir: Path) -> str:
    """sha256 over config.json and the weight files: identifies the model across variants."""
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).iterdir()):
        if f.name == "config.json" or f.name.endswith(".safetensors"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()

"""A model directory, torch-free (docs/design.md, "The model directory").

config.json, the weights (model.safetensors, or shards listed in model.safetensors.index.json)
and optionally tokenizer.json. The reference loader, the exporter and the demo open a model
directory through here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from infini_onnx.config import InfiniConfig
from infini_onnx.errors import ModelDirError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
HASH_BLOCK = 1 << 20  # bytes read at a time while hashing


def check_dir(model_dir: str | Path) -> Path:
    """model_dir as a Path; ModelDirError if it is not a directory."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: not a model directory")
    return model_dir


def load_config(model_dir: str | Path) -> InfiniConfig:
    """The validated config.json of a model directory."""
    return InfiniConfig.from_json_file(check_dir(model_dir) / CONFIG)


def tokenizer_text(model_dir: str | Path) -> str | None:
    """tokenizer.json's text, or None if the directory has none."""
    path = Path(model_dir) / TOKENIZER
    return path.read_text() if path.is_file() else None


def model_id(model_dir: str | Path) -> str:
    """sha256 over config.json and the weight files (names and bytes, read in blocks): the
    model's identity across its variants."""
    h = hashlib.sha256()
    for f in sorted(check_dir(model_dir).iterdir()):
        if f.name == CONFIG or f.name.endswith(".safetensors"):
            h.update(f.name.encode())
            with f.open("rb") as stream:
                while block := stream.read(HASH_BLOCK):
                    h.update(block)
    return h.hexdigest()

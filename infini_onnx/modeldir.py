"""A model directory, torch-free (docs/design.md, "The model directory").

config.json, the weights (model.safetensors, or shards listed in model.safetensors.index.json)
and optionally tokenizer.json. The reference loader, the exporter and the demo open a model
directory through here. Every file read must be a regular file that resolves inside the
directory (a symlink or a shard name cannot pull in a file from elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import os
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


def member(model_dir: str | Path, name: str) -> Path:
    """model_dir/name, refused unless it is a regular file that resolves inside model_dir."""
    model_dir = check_dir(model_dir)
    path = model_dir / name
    if not os.path.lexists(path):
        raise ModelDirError(f"{path}: no such file")
    if not path.exists():
        raise ModelDirError(f"{path}: a broken or looping symlink")
    root, resolved = model_dir.resolve(), path.resolve()
    if root not in resolved.parents:
        raise ModelDirError(f"{path}: resolves outside the model directory ({resolved})")
    if not resolved.is_file():
        raise ModelDirError(f"{path}: not a regular file")
    return path


def load_config(model_dir: str | Path) -> InfiniConfig:
    """The validated config.json of a model directory."""
    path = check_dir(model_dir) / CONFIG
    return InfiniConfig.from_json_file(member(model_dir, CONFIG) if path.exists() else path)


def tokenizer_text(model_dir: str | Path) -> str | None:
    """tokenizer.json's text (a JSON object), or None if the directory has none."""
    if not os.path.lexists(check_dir(model_dir) / TOKENIZER):
        return None
    path = member(model_dir, TOKENIZER)
    try:
        text = path.read_text(encoding="utf-8")
        if not isinstance(json.loads(text), dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as e:
        raise ModelDirError(f"{path}: not a tokenizer.json ({type(e).__name__})") from None
    return text


def weight_index(model_dir: str | Path) -> dict[str, str]:
    """The index's weight_map (tensor name -> shard file name), checked for its types."""
    path = member(model_dir, INDEX)
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, RecursionError, KeyError, TypeError) as e:
        raise ModelDirError(f"{path}: invalid index ({type(e).__name__})") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise ModelDirError(f"{path}: invalid index (weight_map must map names to file names)")
    return weight_map


def weight_files(model_dir: str | Path) -> list[Path]:
    """The files the weights are read from: model.safetensors, or the index and its shards."""
    model_dir = check_dir(model_dir)
    if (model_dir / WEIGHTS).exists():
        return [member(model_dir, WEIGHTS)]
    if not (model_dir / INDEX).exists():
        raise ModelDirError(f"{model_dir}: missing {WEIGHTS} (or {INDEX} with shards)")
    shards = sorted(set(weight_index(model_dir).values()))
    for shard in shards:
        if not (model_dir / shard).exists():
            raise ModelDirError(f"{model_dir / shard}: missing shard listed in {INDEX}")
    return [member(model_dir, INDEX), *(member(model_dir, shard) for shard in shards)]


def loaded_files(model_dir: str | Path) -> list[Path]:
    """Every file a load reads: config.json, the weight files, tokenizer.json if present."""
    files = [member(model_dir, CONFIG), *weight_files(model_dir)]
    if (Path(model_dir) / TOKENIZER).exists():
        files.append(member(model_dir, TOKENIZER))
    return files


def model_id(model_dir: str | Path) -> str:
    """sha256 over config.json and the weight files that are loaded (name and bytes of each,
    read in blocks): the model's identity across its variants."""
    h = hashlib.sha256()
    files = [member(model_dir, CONFIG), *sorted(weight_files(model_dir), key=lambda p: p.name)]
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as stream:
            while block := stream.read(HASH_BLOCK):
                h.update(block)
    return h.hexdigest()

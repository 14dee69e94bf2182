"""Reading a checkpoint directory to convert (docs/convert.md): untrusted input, read with the
model directory's rules (modeldir.py: every file a regular file inside the directory, JSON
and safetensors parsed with their errors caught), never unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from infini_onnx import modeldir
from infini_onnx.errors import ModelDirError
from infini_onnx.model import weights

# Files that need pickle to read: loading one can run any code, so they are refused.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_JSON_BYTES = 1 << 24  # a config.json is a few KB; refuse a huge one before parsing it


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file of the directory (modeldir.member's rules)."""
    path = modeldir.member(path.parent, path.name)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ModelDirError(f"{path}: {path.stat().st_size:,} bytes, too large for a config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, huge ints, deep nesting
        raise ModelDirError(f"{path}: not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: expected a JSON object")
    return data


def refuse_pickle(src: Path) -> None:
    """ModelDirError if the directory's weights exist only as pickle files."""
    pickled = sorted(p.name for p in src.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickled and not has_weights(src) and not (src / "model").is_dir():
        raise ModelDirError(
            f"{src / pickled[0]}: pickle checkpoints are not read (unpickling can run code); "
            "save the model as safetensors first (transformers: "
            "model.save_pretrained(DIR, safe_serialization=True))"
        )


def read_tensors(src: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors files (one file or shards and index)."""
    refuse_pickle(src)
    tensors, source = weights.read_tensors(src)
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ModelDirError(f"{source}: tensor {name!r} has dtype {t.dtype}, not a float")
    return tensors


def has_weights(src: Path) -> bool:
    return (src / modeldir.WEIGHTS).exists() or (src / modeldir.INDEX).exists()


def refuse_lucidrains(src: Path) -> None:
    """ModelDirError if the directory holds the state_dict of lucidrains'
    infini-transformer-pytorch: its blocks differ from Llama's (docs/convert.md lists how)."""
    from safetensors import SafetensorError, safe_open

    files = modeldir.weight_files(src)
    names: list[str] = []
    for f in files if files[0].name == modeldir.WEIGHTS else files[1:]:
        try:
            with safe_open(str(f), framework="pt") as handle:
                names += list(handle.keys())
        except (SafetensorError, OSError) as e:
            raise ModelDirError(f"{f}: truncated or corrupt safetensors file ({e})") from None
    if "token_emb.weight" in names and any(k.endswith("fastweight_mem.head_gates") for k in names):
        raise ModelDirError(
            f"{src}: an infini-transformer-pytorch (lucidrains) state_dict does not convert "
            "exactly: its feed-forward is GEGLU with biases, its logits have a bias and its "
            "first segment skips the memory mix (docs/convert.md, 'lucidrains')"
        )

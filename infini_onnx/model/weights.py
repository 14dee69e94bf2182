"""The weights of a model directory: safetensors files, one or sharded (docs/design.md,
"The model directory"). Reads and checks tensors against the shapes a model expects; writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from infini_onnx.errors import ModelDirError
from infini_onnx.modeldir import INDEX, WEIGHTS, weight_files, weight_index


def _read_safetensors(path: Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys()) if names is None else names
            missing = [k for k in keys if k not in f.keys()]
            if missing:
                raise ModelDirError(f"{path}: missing tensor {missing[0]!r} listed in {INDEX}")
            return {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelDirError(f"{path}: truncated or corrupt safetensors file ({e})") from None


def read_tensors(model_dir: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of the directory and a description of where they came from (the files are
    confined to the directory: modeldir.weight_files)."""
    files = weight_files(model_dir)
    if files[0].name == WEIGHTS:
        return _read_safetensors(files[0]), str(files[0])
    by_file: dict[str, list[str]] = {}
    for name, file in weight_index(model_dir).items():
        by_file.setdefault(file, []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for file, names in sorted(by_file.items()):
        tensors.update(_read_safetensors(Path(model_dir) / file, names))
    return tensors, str(files[0])


def load_checked(model_dir: str | Path, expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The directory's tensors, exactly the names and shapes of `expected`, all floating
    point; any difference is one ModelDirError naming the file, tensor and shape."""
    tensors, source = read_tensors(model_dir)
    check_tensors(tensors, expected, source)
    return tensors


def check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str
) -> None:
    """ModelDirError naming `source` and the first missing, misshapen, non-float or unexpected
    tensor."""
    for name, shape in expected.items():
        if name not in tensors:
            raise ModelDirError(f"{source}: missing tensor {name!r}")
        if tuple(tensors[name].shape) != tuple(shape):
            raise ModelDirError(
                f"{source}: tensor {name!r} has shape {list(tensors[name].shape)}, "
                f"expected {list(shape)} from config.json"
            )
        if not tensors[name].is_floating_point():
            raise ModelDirError(f"{source}: tensor {name!r} has dtype {tensors[name].dtype}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ModelDirError(f"{source}: unexpected tensor {unexpected[0]!r}")


def save_tensors(
    tensors: dict[str, torch.Tensor], model_dir: Path, max_shard_bytes: int | None = None
) -> None:
    """model.safetensors, or shards of at most max_shard_bytes and their index."""
    if max_shard_bytes is None:
        save_file(tensors, str(model_dir / WEIGHTS), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(model_dir / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (model_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")

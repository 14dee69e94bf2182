"""Model directories (SPEC section 2): config.json + safetensors (+ shards) + tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from infini_onnx.config import InfiniConfig
from infini_onnx.errors import ModelDirError
from infini_onnx.model.modeling import InfiniLlamaForCausalLM

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"


def load_config(model_dir: str | Path) -> InfiniConfig:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: not a model directory")
    return InfiniConfig.from_json_file(model_dir / "config.json")


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


def load_tensors(model_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of the directory and a description of where they came from."""
    if (model_dir / WEIGHTS).is_file():
        return _read_safetensors(model_dir / WEIGHTS), str(model_dir / WEIGHTS)
    index_path = model_dir / INDEX
    if not index_path.is_file():
        raise ModelDirError(f"{model_dir}: missing {WEIGHTS} (or {INDEX} with shards)")
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelDirError(f"{index_path}: invalid index ({e!r})") from None
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        by_file.setdefault(file, []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for file, names in sorted(by_file.items()):
        shard = model_dir / file
        if not shard.is_file():
            raise ModelDirError(f"{shard}: missing shard listed in {INDEX}")
        tensors.update(_read_safetensors(shard, names))
    return tensors, str(index_path)


def from_pretrained(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """Load a model directory; every problem is one ModelDirError naming the file/tensor/key."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    tensors, source = load_tensors(model_dir)
    with torch.device("meta"):
        model = InfiniLlamaForCausalLM(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
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
    model = model.to_empty(device="cpu")
    model.load_state_dict({k: t.to(dtype) for k, t in tensors.items()}, strict=False)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(dtype).eval()


def save_pretrained(
    model: InfiniLlamaForCausalLM,
    model_dir: str | Path,
    tokenizer_json: str | None = None,
    max_shard_bytes: int | None = None,
) -> None:
    """Write config.json, the weights (sharded past max_shard_bytes) and tokenizer.json."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(model.config.to_json())
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight")
    if max_shard_bytes is None:
        save_file(tensors, str(model_dir / WEIGHTS), metadata={"format": "pt"})
    else:
        _save_shards(tensors, model_dir, max_shard_bytes)
    if tokenizer_json is not None:
        (model_dir / TOKENIZER).write_text(tokenizer_json)


def _save_shards(tensors: dict[str, torch.Tensor], model_dir: Path, max_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
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


def init_model_dir(
    out_dir: str | Path, preset: str = "tiny", seed: int = 0, **overrides
) -> InfiniLlamaForCausalLM:
    """Write a randomly initialised model directory with the byte-level tokenizer."""
    from infini_onnx.config import preset_config
    from infini_onnx.tokenizer import byte_level_tokenizer

    config = preset_config(preset, **overrides)
    model = InfiniLlamaForCausalLM(config)
    model.init_weights(seed)
    save_pretrained(model, out_dir, tokenizer_json=byte_level_tokenizer().to_str(pretty=True))
    return model

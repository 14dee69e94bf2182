"""huggingface/nanotron's infini-attention checkpoints -> infini-llama (docs/convert.md).

A checkpoint step directory holds model_config.json (a Llama config), config.yaml (the run,
with its `infini_attention:` block) and model/: one safetensors file per parameter, the
parameter's dotted name as folders, the last part as `model_<name>[_pp-rank-P-of-PP_tp-rank-T-of-
TP].safetensors`, the tensor under the key "data". q, k, v are one fused qkv_proj [q; k; v],
gate and up one gate_up_proj [gate; up]; `balance_factors` [H] is the gate: with
`balance_act_type: orig_sigmoid` its mix is infini-llama's. The memory rule is delta; local
attention stops at the segment start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from infini_onnx import modeldir
from infini_onnx.convert import llama, source
from infini_onnx.errors import ModelDirError

CONFIG, RUN = "model_config.json", "config.yaml"
MAX_FILES = 100_000  # parameter files walked at most (a model has ~10 per layer)
_FILE = re.compile(r"model_(?P<name>\w+?)(_pp-rank-(\d+)-of-(\d+)_tp-rank-(\d+)-of-(\d+))?")
_LAYER = re.compile(r"model\.decoder\.(\d+)\.pp_block\.(.+)")
# nanotron name -> ours, outside the decoder layers and after "model.decoder.{i}.pp_block."
TOP_NAMES = {
    "model.token_position_embeddings.pp_block.token_embedding.weight": "model.embed_tokens.weight",
    "model.final_layer_norm.pp_block.weight": "model.norm.weight",
    "model.lm_head.pp_block.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.balance_factors": "self_attn.gate",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}


def is_nanotron(src: Path) -> bool:
    return (src / CONFIG).exists() and (src / "model").is_dir()


def read_run(src: Path) -> dict[str, Any]:
    """config.yaml's infini_attention block (safe YAML: no objects are built)."""
    import yaml

    path = modeldir.member(src, RUN)
    if path.stat().st_size > source.MAX_JSON_BYTES:
        raise ModelDirError(f"{path}: {path.stat().st_size:,} bytes, too large for a config")
    try:
        run = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise ModelDirError(f"{path}: not valid YAML ({type(e).__name__})") from None
    block = run.get("infini_attention") if isinstance(run, dict) else None
    if not isinstance(block, dict):
        raise ModelDirError(f"{path}: no infini_attention block (not an infini-attention run)")
    if block.get("turn_on_memory", True) is not True:
        raise ModelDirError(
            f"{path}: turn_on_memory is not true: that run computes local attention only, "
            "which no infini-llama gate reproduces exactly"
        )
    act = block.get("balance_act_type", "orig_sigmoid")
    if act != "orig_sigmoid":
        raise ModelDirError(
            f"{path}: balance_act_type {act!r} does not convert (infini-llama's gate is a "
            "sigmoid: only orig_sigmoid maps)"
        )
    segment = block.get("segment_length")
    if not isinstance(segment, int) or isinstance(segment, bool) or segment < 1:
        raise ModelDirError(f"{path}: infini_attention.segment_length must be an integer >= 1")
    return block


def parameter_files(src: Path) -> dict[str, Path]:
    """Dotted parameter name -> its file, for every safetensors file under model/ (symlinks
    are not followed; sharded parameters are refused)."""
    root, files = src / "model", {}
    for folder, dirs, names in os.walk(root):  # followlinks=False
        dirs.sort()
        for name in sorted(names):
            if not name.endswith(".safetensors"):
                continue
            relative = Path(folder, name).relative_to(src)
            path = modeldir.member(src, str(relative))
            match = _FILE.fullmatch(name.removesuffix(".safetensors"))
            if match is None:
                raise ModelDirError(f"{path}: not a nanotron parameter file name")
            if match.group(2):
                pp, pp_size, tp, tp_size = (int(match.group(i)) for i in (3, 4, 5, 6))
                if not (pp < pp_size and tp < tp_size):
                    raise ModelDirError(f"{path}: a rank outside its group in the file name")
                if tp_size != 1:  # pipeline stages hold whole parameters; tensor ranks do not
                    raise ModelDirError(
                        f"{path}: a shard of a parameter split over {tp_size} tensor-parallel "
                        "ranks; merge the checkpoint to one tensor-parallel rank with nanotron"
                    )
            parts = Path(folder).relative_to(root).parts
            name = ".".join((*parts, match.group("name")))
            if name in files:
                raise ModelDirError(f"{path}: a second file for parameter {name!r}")
            files[name] = path
            if len(files) > MAX_FILES:
                raise ModelDirError(f"{root}: more than {MAX_FILES:,} parameter files")
    if not files:
        raise ModelDirError(f"{root}: no parameter files")
    return files


def read_data(path: Path) -> torch.Tensor:
    try:
        with safe_open(str(path), framework="pt") as f:
            if list(f.keys()) != ["data"]:
                raise ModelDirError(f"{path}: expected one tensor named 'data'")
            return f.get_tensor("data")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelDirError(f"{path}: truncated or corrupt safetensors file ({e})") from None


def rest_is_fused(name: str) -> bool:
    return name.endswith(("attn.qkv_proj.weight", "mlp.gate_up_proj.weight"))


def interleaved_to_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q or k rows [heads * d, D] of a model with interleaved RoPE pairs (0, 1), (2, 3), ...
    reordered for rotate_half's pairs (i, i + d/2): per head, even rows then odd rows."""
    d = weight.shape[0] // heads
    w = weight.reshape(heads, d // 2, 2, -1)
    return w.transpose(1, 2).reshape(weight.shape)


def read(
    src: Path, check_sizes: Callable[[dict, str], None]
) -> tuple[dict[str, Any], dict[str, torch.Tensor], int]:
    """(config keys, infini-llama tensors, segment length) of a nanotron step directory; the
    keys pass `check_sizes` before any tensor is read."""
    config_path = src / CONFIG
    hf = source.read_json(config_path)
    keys = llama.config_keys(hf, "LlamaForCausalLM", str(config_path))
    check_sizes(keys, str(config_path))
    block = read_run(src)
    H, G, d = keys["num_attention_heads"], keys["num_key_value_heads"], keys["head_dim"]
    interleaved = hf.get("rope_interleaved", True)  # nanotron's default
    if not isinstance(interleaved, bool):
        raise ModelDirError(f"{config_path}: key 'rope_interleaved' must be bool")
    tensors: dict[str, torch.Tensor] = {}
    for name, path in parameter_files(src).items():
        t = read_data(path)
        if not t.is_floating_point():
            raise ModelDirError(f"{path}: dtype {t.dtype}, not a float")
        if rest_is_fused(name) and t.ndim != 2:
            raise ModelDirError(f"{path}: a {t.ndim}-d tensor, expected a matrix")
        layer = _LAYER.fullmatch(name)
        prefix, rest = (f"model.layers.{layer.group(1)}.", layer.group(2)) if layer else ("", name)
        if rest == "attn.qkv_proj.weight":
            if t.shape[0] != (H + 2 * G) * d:
                raise ModelDirError(
                    f"{path}: qkv_proj has {t.shape[0]} rows, expected (H + 2G) d = "
                    f"{(H + 2 * G) * d} from {CONFIG}"
                )
            q, k, v = t.split([H * d, G * d, G * d])
            if interleaved:
                q, k = interleaved_to_halves(q, H), interleaved_to_halves(k, G)
            tensors.update(
                {f"{prefix}self_attn.{n}_proj.weight": w for n, w in zip("qkv", (q, k, v))}
            )
        elif rest == "mlp.gate_up_proj.weight":
            if t.shape[0] % 2:
                raise ModelDirError(f"{path}: gate_up_proj has an odd number of rows")
            gate, up = t.chunk(2)
            tensors[f"{prefix}mlp.gate_proj.weight"] = gate
            tensors[f"{prefix}mlp.up_proj.weight"] = up
        elif rest == "attn.balance_factors":
            tensors[prefix + "self_attn.gate"] = t.float()  # gates stay float32
        elif rest in (LAYER_NAMES if layer else TOP_NAMES):
            tensors[prefix + (LAYER_NAMES if layer else TOP_NAMES)[rest]] = t
        else:
            raise ModelDirError(f"{path}: unexpected parameter {name!r}")
    V = keys["vocab_size"]  # nanotron may pad the vocabulary (make_vocab_size_divisible_by)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors and tensors[name].shape[0] > V:
            tensors[name] = tensors[name][:V]
    return keys, tensors, block["segment_length"]

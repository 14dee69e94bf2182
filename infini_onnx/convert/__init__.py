"""`infini convert SRC DST`: a checkpoint directory -> an infini-llama model directory
(docs/convert.md). Needs the [export] extra (torch, safetensors).

One function per source layout reads it into (config keys, tensors, what it was); `convert`
picks the layout, applies the user's options, checks every tensor against the shapes the
config implies, and writes the directory atomically: on any error nothing is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from infini_onnx import modeldir
from infini_onnx.config import MAX_SEGMENT_LEN, InfiniConfig
from infini_onnx.convert import llama, nanotron, source
from infini_onnx.errors import ModelDirError
from infini_onnx.model import InfiniLlamaForCausalLM, weights
from infini_onnx.model.modeling import stored_shapes

# The gate a converted Llama starts with: sigmoid(-5) = 0.0067 of each head's output comes from
# the memory, and the gate's gradient is sigmoid'(-5) = 0.0066 of the mix's, so training can
# open it (at -100 it would be ~1e-44: it never moves). docs/convert.md, "The gate".
GATE_INIT = -5.0
SEGMENT_LEN = 2048  # when neither the checkpoint nor the user gives one
MAX_SHARD_BYTES = 4 << 30  # the output's safetensors shards


@dataclass(frozen=True)
class Options:
    """What the user may set; None keeps the layout's own value or the default."""

    segment_len: int | None = None
    local_window: int | None = None
    memory_update: str | None = None
    gate_init: float = GATE_INIT


@dataclass
class Checkpoint:
    """A source directory read into infini-llama terms."""

    layout: str  # what it was, for the report
    keys: dict[str, Any]  # infini-llama config keys it determines
    tensors: dict[str, torch.Tensor]  # infini-llama names
    segment_len: int | None = None  # the layout's own, if it has one
    memory_update: str = "delta"  # the layout's rule
    window: bool = True  # False: the layout attends within the segment only (no local_window)


def read_hf(src: Path, options: Options) -> Checkpoint:
    """A Hugging Face Llama-family directory, or Beomi/InfiniTransformer's (gates present)."""
    config_path = src / modeldir.CONFIG
    hf = source.read_json(config_path)
    name = llama.architecture(hf, str(config_path))
    keys = llama.config_keys(hf, name, str(config_path))
    check_sizes(keys, str(config_path))  # before any tensor is read or made
    tensors = source.read_tensors(src)
    heads, kv_heads = keys["num_attention_heads"], keys["num_key_value_heads"]
    beomi = llama.beomi_gates(tensors, heads, kv_heads, str(src))
    tensors = llama.tensors_for(tensors, keys["num_hidden_layers"], heads, options.gate_init)
    if not beomi:
        return Checkpoint(f"Hugging Face {name}", keys, tensors)
    keys.pop("local_window", None)  # Beomi's attention stops at the segment start
    segment = hf.get("segment_size")
    if segment is not None and (not isinstance(segment, int) or isinstance(segment, bool)):
        raise ModelDirError(f"{config_path}: key 'segment_size' must be int, got {segment!r}")
    return Checkpoint(
        f"Beomi/InfiniTransformer ({name})", keys, tensors, segment, "linear", window=False
    )


def check_sizes(keys: dict[str, Any], source: str) -> None:
    """Validate a source's config keys as infini-llama's (sizes, heads, ids, the largest model
    and state) before anything is allocated from them."""
    sizes = {k: v for k, v in keys.items() if k != "local_window"}  # may be overridden: later
    InfiniConfig.from_dict(
        {"segment_len": 1, "memory_update": "delta", **sizes, "model_type": "infini-llama"},
        source=source,
    )


def read_nanotron(src: Path) -> Checkpoint:
    """A huggingface/nanotron infini-attention checkpoint step directory."""
    keys, tensors, segment_len = nanotron.read(src, check_sizes)
    return Checkpoint("nanotron infini-attention", keys, tensors, segment_len, "delta", False)


def read_checkpoint(src: Path, options: Options) -> Checkpoint:
    """The source directory in infini-llama terms, by its layout."""
    source.refuse_pickle(src)
    if nanotron.is_nanotron(src):
        return read_nanotron(src)
    if (src / modeldir.CONFIG).exists() or not source.has_weights(src):
        return read_hf(src, options)
    source.refuse_lucidrains(src)
    raise ModelDirError(
        f"{src}: no config.json (convertible: a Hugging Face Llama-family or "
        "Beomi/InfiniTransformer directory, a nanotron infini-attention checkpoint step)"
    )


def convert(
    src: str | Path, dst: str | Path, options: Options = Options(), log: Callable = print
) -> InfiniConfig:
    """Convert the checkpoint directory `src` into the new model directory `dst`."""
    src, dst = modeldir.check_dir(src), Path(dst)
    check_destination(src, dst)
    checkpoint = read_checkpoint(src, options)
    keys = dict(checkpoint.keys)
    keys["segment_len"] = next(
        n for n in (options.segment_len, checkpoint.segment_len, SEGMENT_LEN) if n is not None
    )
    keys["memory_update"] = options.memory_update or checkpoint.memory_update
    window = keys.get("local_window")
    if options.local_window is None and window is not None and window > MAX_SEGMENT_LEN:
        raise ModelDirError(
            f"{src}: sliding_window {window} is more than infini-llama's largest local window "
            f"({MAX_SEGMENT_LEN}); choose one with --local-window"
        )
    if options.local_window is not None:
        keys["local_window"] = options.local_window
    elif checkpoint.window and "local_window" not in keys:
        keys["local_window"] = keys["segment_len"]
    config = InfiniConfig.from_dict(
        {**keys, "model_type": "infini-llama"}, source=f"{src} (converted config)"
    )
    with torch.device("meta"):
        expected = stored_shapes(InfiniLlamaForCausalLM(config))
    weights.check_tensors(checkpoint.tensors, expected, str(src))
    tokenizer = modeldir.tokenizer_text(src)
    if tokenizer is not None:
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_str(tokenizer)
        except Exception as e:  # tokenizers raises its own Exception subclasses
            raise ModelDirError(f"{src / modeldir.TOKENIZER}: not a tokenizer ({e})") from None
    _write(dst, config, checkpoint.tensors, tokenizer)
    n = sum(t.numel() for t in checkpoint.tensors.values())
    window = config.local_window if config.local_window is not None else "the segment"
    log(
        f"wrote {dst}: {checkpoint.layout}, {n / 1e6:.2f}M parameters, segment_len "
        f"{config.segment_len}, local_window {window}, {config.memory_update} memory"
        + ("" if tokenizer else "; no tokenizer.json (the model runs on token ids)")
    )
    return config


def check_destination(src: Path, dst: Path) -> None:
    """Refuse, before reading anything, a destination that is not a new or empty directory
    outside SRC."""
    if dst.name in ("", ".", ".."):
        raise ModelDirError(f"{dst}: name a new directory")
    if os.path.lexists(dst) and (not dst.is_dir() or dst.is_symlink() or any(dst.iterdir())):
        raise ModelDirError(f"{dst}: exists and is not an empty directory; choose a new one")
    resolved = dst.resolve()
    if resolved == src.resolve() or src.resolve() in resolved.parents:
        raise ModelDirError(f"{dst}: inside the source directory {src}; choose another place")
    existing = next((p for p in dst.parents if os.path.lexists(p)), Path("."))
    if not existing.is_dir():
        raise ModelDirError(f"{dst}: cannot write ({existing} is not a directory)")


def _write(
    dst: Path, config: InfiniConfig, tensors: dict[str, torch.Tensor], tokenizer: str | None
) -> None:
    """Write the directory beside dst and rename it into place; on failure nothing is left,
    not even the parents it created, and the error is one ModelDirError."""
    from safetensors import SafetensorError

    created = [p for p in dst.parents if not os.path.lexists(p)]
    tmp = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
        (tmp / modeldir.CONFIG).write_text(config.to_json())
        contiguous = {k: v.contiguous() for k, v in tensors.items()}
        size = sum(t.numel() * t.element_size() for t in contiguous.values())
        weights.save_tensors(contiguous, tmp, MAX_SHARD_BYTES if size > MAX_SHARD_BYTES else None)
        if tokenizer is not None:
            (tmp / modeldir.TOKENIZER).write_text(tokenizer)
        if dst.is_dir():
            dst.rmdir()  # empty (checked above)
        tmp.rename(dst)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # the innermost first
            shutil.rmtree(parent, ignore_errors=True)
        if isinstance(e, (OSError, SafetensorError)):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise ModelDirError(f"{dst}: cannot write ({reason})") from None
        raise

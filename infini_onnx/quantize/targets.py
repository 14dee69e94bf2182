"""Settings of a quantisation mode and `--target` presets: which settings suit which hardware.

The modes are the variant table's (stepgraph/variants.py)."""

from __future__ import annotations

from dataclasses import dataclass

from infini_onnx.errors import QuantizeError
from infini_onnx.stepgraph.variants import QUANTIZE_MODES

DEFAULT_MODE = "int8"


@dataclass(frozen=True)
class Settings:
    """Everything a mode needs besides the graph and the calibration text."""

    mode: str = DEFAULT_MODE
    per_channel: bool = True  # int8-static: one weight scale per output channel
    block_size: int = 32  # int8, int4 (MatMulNBits): weights per scale
    accuracy_level: int = 4  # int8, int4: 4 = int8 compute kernels, activations per row; 0 = fp32


# target -> (default mode, modes it runs)
TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "arm64": ("int8", ("int8", "int4", "fp16")),
    "avx2": ("int8", ("int8", "int4")),
    "avx512_vnni": ("int8", ("int8", "int4")),
    "tensorrt": ("int8-static", ("int8-static", "fp16")),
}


def resolve(
    mode: str | None = None, target: str | None = None, block_size: int | None = None
) -> Settings:
    """The settings for a mode and/or a target preset; unknown or unsuitable pairs are refused."""
    if target is not None and target not in TARGETS:
        raise QuantizeError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    default_mode, allowed = TARGETS.get(target, (DEFAULT_MODE, QUANTIZE_MODES))
    mode = mode or default_mode
    if mode not in QUANTIZE_MODES:
        raise QuantizeError(f"unknown mode {mode!r} (choose from {', '.join(QUANTIZE_MODES)})")
    if mode not in allowed:
        raise QuantizeError(f"mode {mode} does not suit target {target} (use {', '.join(allowed)})")
    if block_size is not None and (block_size < 16 or block_size & (block_size - 1)):
        raise QuantizeError(f"--block-size must be a power of two >= 16, got {block_size}")
    return Settings(mode=mode, **({} if block_size is None else {"block_size": block_size}))

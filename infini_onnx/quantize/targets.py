"""Modes and `--target` presets: which quantiser settings suit which hardware."""

from __future__ import annotations

from dataclasses import dataclass

from infini_onnx.errors import QuantizeError

MODES = ("int8", "int8-static", "int4", "fp16")


@dataclass(frozen=True)
class Settings:
    """Everything a mode needs besides the graph and the calibration text."""

    mode: str = "int8"
    per_channel: bool = True  # int8 modes: one weight scale per output channel
    reduce_range: bool = False  # int8: 7-bit weights (AVX2 without VNNI saturates u8 x s8 pairs)
    block_size: int = 32  # int4: weights per scale
    accuracy_level: int | None = None  # int4: 4 = int8 compute kernels (ARM, x86)


# target -> (default mode, modes it runs, overrides)
TARGETS: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "arm64": ("int8", ("int8", "int4", "fp16"), dict(accuracy_level=4)),
    "avx2": ("int8", ("int8", "int4"), dict(reduce_range=True, accuracy_level=4)),
    "avx512_vnni": ("int8", ("int8", "int4"), dict(accuracy_level=4)),
    "tensorrt": ("int8-static", ("int8-static", "fp16"), {}),
}


def resolve(
    mode: str | None = None, target: str | None = None, block_size: int | None = None
) -> Settings:
    """The settings for a mode and/or a target preset; unknown or unsuitable pairs are refused."""
    if target is not None and target not in TARGETS:
        raise QuantizeError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    default_mode, allowed, overrides = TARGETS.get(target, ("int8", MODES, {}))
    mode = mode or default_mode
    if mode not in MODES:
        raise QuantizeError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    if mode not in allowed:
        raise QuantizeError(f"mode {mode} does not suit target {target} (use {', '.join(allowed)})")
    if block_size is not None and (block_size < 16 or block_size & (block_size - 1)):
        raise QuantizeError(f"--block-size must be a power of two >= 16, got {block_size}")
    extra = {} if block_size is None else {"block_size": block_size}
    return Settings(mode=mode, **{**overrides, **extra})

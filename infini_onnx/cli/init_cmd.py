"""`infini init OUT_DIR`: a randomly initialised model directory (needs the [export] extra)."""

from __future__ import annotations

import os

import click

from infini_onnx.cli.common import FiniteFloatRange, one_line_errors
from infini_onnx.config import MEMORY_UPDATES, PRESETS, preset_config


@click.command("init")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True)
@click.option(
    "--memory-update",
    type=click.Choice(MEMORY_UPDATES),
    default=None,
    help="Memory rule (default: the preset's, delta).",
)
@click.option("--segment-len", type=int, default=None, help="Override the preset's segment length.")
@click.option(
    "--local-window",
    type=int,
    default=None,
    help="Local attention window W in tokens (default: the segment length).",
)
@click.option(
    "--gate-init",
    type=FiniteFloatRange(-100, 100),
    default=None,
    help="Every head's gate logit: sigmoid(gate) of its output comes from the memory "
    "(default: 0, an even mix).",
)
@click.option(
    "--window-only",
    is_flag=True,
    help="Close every gate: the memory is never read (a baseline without memory).",
)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@one_line_errors
def init_command(
    out_dir: str,
    preset: str,
    memory_update: str | None,
    segment_len: int | None,
    local_window: int | None,
    gate_init: float | None,
    window_only: bool,
    seed: int,
) -> None:
    """Write a randomly initialised model directory with a byte-level tokenizer."""
    from pathlib import Path

    from infini_onnx.atomic import check_output
    from infini_onnx.errors import InfiniError
    from infini_onnx.model import init_model_dir
    from infini_onnx.model.modeling import CLOSED_GATE

    if window_only and gate_init is not None:
        raise InfiniError("--window-only closes the gates: leave out --gate-init")
    overrides = {}
    if memory_update:
        overrides["memory_update"] = memory_update
    if segment_len is not None:
        overrides["segment_len"] = segment_len
    if local_window is not None:
        overrides["local_window"] = local_window
    preset_config(preset, **overrides)  # a bad value is refused before torch loads or a write
    out = Path(out_dir)
    if os.path.lexists(out) and (not out.is_dir() or out.is_symlink() or any(out.iterdir())):
        raise InfiniError(f"{out_dir}: exists and is not an empty directory; choose a new one")
    check_output(out / "config.json")  # the parents can be created and written

    gate = CLOSED_GATE if window_only else gate_init or 0.0
    model = init_model_dir(out_dir, preset, seed=seed, gate=gate, **overrides)
    n = sum(p.numel() for p in model.parameters())
    only = ", window only" if window_only else ""
    click.echo(f"wrote {out_dir}: preset {preset}, {n / 1e6:.2f}M parameters{only}")

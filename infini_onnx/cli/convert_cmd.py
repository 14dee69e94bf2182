"""`infini convert SRC DST`: a checkpoint directory -> an infini-llama model directory."""

from __future__ import annotations

import click

from infini_onnx.cli.common import FiniteFloatRange, one_line_errors
from infini_onnx.config import MAX_SEGMENT_LEN, MEMORY_UPDATES


@click.command("convert")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option(
    "--segment-len",
    type=click.IntRange(1, MAX_SEGMENT_LEN),
    default=None,
    help="Tokens per memory segment (default: the checkpoint's, else 2048).",
)
@click.option(
    "--local-window",
    type=click.IntRange(1, MAX_SEGMENT_LEN),
    default=None,
    help="W: each token attends to the W - 1 tokens before it, across segments (default: "
    "Mistral's sliding_window, the segment length for a Llama, none for a checkpoint whose "
    "attention stops at the segment start).",
)
@click.option(
    "--memory-update",
    type=click.Choice(MEMORY_UPDATES),
    default=None,
    help="Memory rule (default: the checkpoint's, delta for a Llama).",
)
@click.option(
    "--gate-init",
    type=FiniteFloatRange(-100, 100),
    default=-5.0,
    show_default=True,
    help="Gate logit of each head for a checkpoint without gates: sigmoid(-5) = 0.0067 of "
    "the output from the memory, still learnable.",
)
@one_line_errors
def convert_command(
    src: str,
    dst: str,
    segment_len: int | None,
    local_window: int | None,
    memory_update: str | None,
    gate_init: float,
) -> None:
    """Convert a checkpoint directory SRC (Hugging Face Llama or Mistral, Beomi/InfiniTransformer,
    or a nanotron infini-attention checkpoint step) into the new infini-llama model directory
    DST (docs/convert.md). On any error: one line, nothing written."""
    from infini_onnx.convert import Options, convert

    options = Options(segment_len, local_window, memory_update, gate_init)
    convert(src, dst, options, log=click.echo)

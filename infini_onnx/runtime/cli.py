"""`infini-stream MODEL.onnx [FILE|-]` (also `infini stream`) and `infini generate`."""

from __future__ import annotations

import click

from infini_onnx.cli_utils import one_line_errors


@click.command("stream")
@click.argument("model", type=click.Path(dir_okay=False))
@one_line_errors
def stream_command(model: str) -> None:
    """Stream text through MODEL.onnx (not implemented yet)."""
    raise click.ClickException("not implemented yet")


@click.command("generate")
@click.argument("model", type=click.Path(dir_okay=False))
@one_line_errors
def generate_command(model: str) -> None:
    """Generate text from a prompt (not implemented yet)."""
    raise click.ClickException("not implemented yet")

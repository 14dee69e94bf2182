"""`infini-quantize IN.onnx OUT.onnx --mode ...` (also `infini quantize`)."""

from __future__ import annotations

import click

from infini_onnx.cli_utils import one_line_errors


@click.command("quantize")
@click.argument("in_path", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(dir_okay=False))
@one_line_errors
def quantize_command(in_path: str, out_path: str) -> None:
    """Quantize an exported step graph (not implemented yet)."""
    raise click.ClickException("not implemented yet")

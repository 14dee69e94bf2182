"""`infini-export MODEL_DIR OUT.onnx` (also `infini export`)."""

from __future__ import annotations

import click

from infini_onnx.cli_utils import one_line_errors


@click.command("export")
@click.argument("model_dir", type=click.Path())
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--opset", type=int, default=None, help="ONNX opset (default: 18).")
@one_line_errors
def export_command(model_dir: str, out: str, opset: int | None) -> None:
    """Export MODEL_DIR's segment step to the ONNX step graph OUT.onnx."""
    from infini_onnx.export.exporter import DEFAULT_OPSET, export_model

    export_model(model_dir, out, opset=opset or DEFAULT_OPSET, log=click.echo)
    click.echo(f"wrote {out}")

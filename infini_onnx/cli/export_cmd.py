"""`infini-export MODEL_DIR OUT.onnx` (also `infini export`)."""

from __future__ import annotations

import time

import click

from infini_onnx.cli.common import one_line_errors


@click.command("export")
@click.argument("model_dir", type=click.Path())
@click.argument("out", type=click.Path())
@click.option(
    "--dtype",
    default="fp32",
    show_default=True,
    metavar="fp32|fp16",
    help="Weights/activations/cache precision; memory math and state stay float32.",
)
@click.option(
    "--opset",
    type=int,
    default=None,
    help="ONNX opset, 18 or newer (default: 18, which ONNX Runtime >= 1.15 loads).",
)
@click.option(
    "--external-data",
    is_flag=True,
    help="Put the weights in OUT.data beside OUT (automatic past 1.8 GB).",
)
@click.option(
    "--validate/--no-validate",
    default=True,
    show_default=True,
    help="Compare with PyTorch in ONNX Runtime before writing OUT.",
)
@one_line_errors
def export_command(
    model_dir: str, out: str, dtype: str, opset: int | None, external_data: bool, validate: bool
) -> None:
    """Export MODEL_DIR's segment step to the ONNX step graph OUT.onnx."""
    t0 = time.perf_counter()
    from infini_onnx.export.exporter import DEFAULT_OPSET, export_model

    path = export_model(
        model_dir,
        out,
        opset=DEFAULT_OPSET if opset is None else opset,
        log=click.echo,
        dtype=dtype,
        external_data=external_data,
        validate=validate,
    )
    click.echo(f"wrote {path} in {time.perf_counter() - t0:.1f}s")

"""`infini-quantize IN.onnx OUT.onnx --mode ...` (also `infini quantize`)."""

from __future__ import annotations

from pathlib import Path

import click

from infini_onnx.cli.common import one_line_errors
from infini_onnx.stepgraph.variants import QUANTIZE_MODES, VARIANTS


@click.command("quantize")
@click.argument("in_path", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(dir_okay=False))
@click.option(
    "--mode",
    type=click.Choice(QUANTIZE_MODES),
    default=None,
    help="The variant (docs/quantize.md): "
    + "; ".join(f"{v.name}: {v.summary}" for v in VARIANTS.values() if v.name in QUANTIZE_MODES)
    + " [int8, or the target's default].",
)
@click.option(
    "--target",
    default=None,
    help="arm64 | avx2 | avx512_vnni | tensorrt preset (also picks the default mode).",
)
@click.option(
    "--block-size", type=int, default=None, help="int8, int4: weights per scale (default 32)."
)
@click.option(
    "--calib",
    type=click.Path(dir_okay=False),
    default=None,
    help="int8-static: calibration text file (default: generated English-like text).",
)
@click.option("--calib-segments", type=click.IntRange(1, 100_000), default=16, show_default=True)
@click.option(
    "--eval-segments",
    type=click.IntRange(0, 100_000),
    default=32,
    show_default=True,
    help="Length of the held-out stream of the accuracy report (0: no report).",
)
@click.option(
    "--eval-text",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Text file of the accuracy report's stream (default: generated English-like text).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the report as JSON here.",
)
@one_line_errors
def quantize_command(
    in_path: str,
    out_path: str,
    mode: str | None,
    target: str | None,
    block_size: int | None,
    calib: str | None,
    calib_segments: int,
    eval_segments: int,
    eval_text: str | None,
    report_path: str | None,
) -> None:
    """Quantize the fp32 step graph IN_PATH to OUT_PATH; memory and its math stay float32."""
    from infini_onnx.atomic import atomic_output, check_output
    from infini_onnx.errors import QuantizeError
    from infini_onnx.quantize.quantizer import accuracy_report, held_out_tokens, quantize_model
    from infini_onnx.quantize.targets import resolve
    from infini_onnx.stepgraph.files import graph_files

    settings = resolve(mode, target, block_size)
    if report_path:
        if eval_segments == 0:
            raise QuantizeError("--report needs an accuracy report (--eval-segments > 0)")
        if Path(report_path).resolve() == Path(out_path).resolve():
            raise QuantizeError(f"{report_path}: is OUT_PATH; write the report elsewhere")
        check_output(report_path, graph_files(in_path), QuantizeError)  # before any work
    held_out = None
    if eval_segments > 0 and eval_text:  # a bad text is refused before any work
        held_out = held_out_tokens(in_path, eval_segments, eval_text)
    quantize_model(in_path, out_path, settings, calib, calib_segments, log=click.echo)
    click.echo(f"wrote {out_path} ({settings.mode})")
    if eval_segments > 0:
        report = accuracy_report(in_path, out_path, eval_segments, tokens=held_out)
        for line in report.lines():
            click.echo(line)
        if report_path:
            with atomic_output(
                report_path, QuantizeError, [*graph_files(in_path), *graph_files(out_path)]
            ) as tmp:
                tmp.write_text(report.to_json())
            click.echo(f"wrote {report_path}")

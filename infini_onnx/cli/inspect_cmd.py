"""`infini inspect MODEL [--text FILE ...]`: the health of a model's memory."""

from __future__ import annotations

import click

from infini_onnx.cli.common import one_line_errors


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option(
    "--text",
    "texts",
    type=click.Path(dir_okay=False),
    multiple=True,
    help="Stream this text file (repeatable) and report the memory's growth over it.",
)
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads (default: all).")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="Also write the figures as JSON."
)
@one_line_errors
def inspect_command(
    model: str, texts: tuple[str, ...], threads: int | None, json_out: str | None
) -> None:
    """Memory health of MODEL (a model directory or an .onnx file): how far each head's gate
    opens the memory and which gates are saturated; with --text, the growth of the memory and
    of z over the text, and the stream length at which float32 z rounds a token's write away."""
    import json
    from pathlib import Path

    from infini_onnx.atomic import atomic_output, check_output
    from infini_onnx.health import inspect

    if json_out:
        check_output(json_out)  # before the work
    result = inspect(model, [Path(t) for t in texts] or None, threads, log=click.echo)
    if json_out:
        with atomic_output(json_out) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")

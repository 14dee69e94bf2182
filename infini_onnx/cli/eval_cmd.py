"""`infini eval MODEL TEXT...`: bits per byte over texts read as streams (docs/real-text.md)."""

from __future__ import annotations

import click

from infini_onnx.cli.common import one_line_errors


def _compared(ctx, param, values: tuple[str, ...]) -> dict[str, str]:
    """--compare LABEL=MODEL pairs, labels unique and none of the model's own runs."""
    from infini_onnx.evaluation import MODEL, RESET, WINDOW

    out = {}
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label or not path:
            raise click.BadParameter(f"{value!r}: expected LABEL=MODEL")
        if label in out or label in (MODEL, RESET, WINDOW):
            raise click.BadParameter(f"{value!r}: the label {label!r} is taken")
        out[label] = path
    return out


@click.command("eval")
@click.argument("model", type=click.Path())
@click.argument("texts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--compare",
    multiple=True,
    callback=_compared,
    metavar="LABEL=MODEL",
    help="Also score another model (a directory or .onnx), e.g. a baseline (repeatable).",
)
@click.option(
    "--ablations/--no-ablations",
    default=True,
    show_default=True,
    help="Also score MODEL with its memory reset at every segment and with its gates closed "
    "(the second needs a model directory).",
)
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads (default: all).")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="Also write the figures as JSON."
)
@click.option(
    "--plot", type=click.Path(dir_okay=False), help="Also plot bits per byte against position."
)
@one_line_errors
def eval_command(model, texts, compare, ablations, threads, json_out, plot) -> None:
    """Bits per byte of each TEXT read as one stream by MODEL (a model directory or an .onnx
    step graph), by position in the stream, against its ablations and any --compare models.
    A model directory is exported to a temporary fp32 graph first (the [export] extra)."""
    import json
    from pathlib import Path

    from infini_onnx.atomic import atomic_output, check_output
    from infini_onnx.errors import InfiniError
    from infini_onnx.evaluation import evaluate, json_ready, pyplot, table
    from infini_onnx.evaluation import plot as draw

    if json_out and plot and Path(json_out).resolve() == Path(plot).resolve():
        raise InfiniError("--json and --plot name the same file")
    for out in (json_out, plot):
        if out:
            check_output(out, texts)  # before the work, never over a text
    if plot:
        pyplot(plot)
    result = evaluate(
        Path(model),
        [Path(t) for t in texts],
        {label: Path(p) for label, p in compare.items()},
        ablations,
        threads,
        log=lambda msg: click.echo(msg, err=True),
    )
    for line in table(result):
        click.echo(line)
    if json_out:
        with atomic_output(json_out) as tmp:
            tmp.write_text(json.dumps(json_ready(result), indent=1, allow_nan=False) + "\n")
    if plot:
        with atomic_output(plot) as tmp:
            draw(result, str(tmp))

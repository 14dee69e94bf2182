"""`infini triton MODEL.onnx REPO`: a Triton model repository with implicit state (needs the
[export] extra for onnx)."""

from __future__ import annotations

import click

from infini_onnx.cli.common import FiniteFloatRange, one_line_errors
from infini_onnx.errors import InputError


@click.command("triton")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("repo", type=click.Path(file_okay=False))
@click.option(
    "--name",
    default="infini",
    show_default=True,
    help="The model's name: its directory in REPO, 1 to 128 of A-Z a-z 0-9 _ . -, not "
    "starting with . or -.",
)
@click.option(
    "--instances",
    type=click.IntRange(1, 1024),
    default=2,
    show_default=True,
    help="Model instances (each runs one sequence at a time).",
)
@click.option(
    "--kind",
    type=click.Choice(["cpu", "gpu"]),
    default="cpu",
    show_default=True,
    help="Where the instances run.",
)
@click.option(
    "--max-idle",
    type=FiniteFloatRange(0.001, 1e9),
    default=600.0,
    show_default=True,
    help="Seconds before Triton drops an idle sequence.",
)
@one_line_errors
def triton_command(model, repo, name, instances, kind, max_idle):  # fmt: skip
    """Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx for Triton's onnxruntime
    backend: the server keeps each sequence's state, a client sends only input_ids
    (docs/serving.md)."""
    try:
        from infini_onnx.serve.triton import write_repository
    except ImportError as e:
        raise InputError(f'infini triton needs onnx: pip install "infini-onnx[export]" '
                         f"({e.name} is missing)") from None  # fmt: skip
    out = write_repository(model, repo, name, instances, kind, max_idle)
    click.echo(f"wrote {out}/config.pbtxt and {out}/1/model.onnx")

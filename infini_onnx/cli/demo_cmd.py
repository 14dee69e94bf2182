"""`infini demo passkey`: the pass-key demo on the shipped model (runtime only, after the first
use of a model directory)."""

from __future__ import annotations

import sys

import click

from infini_onnx.cli.common import one_line_errors
from infini_onnx.passkey import DEMO_DEPTH, DEMO_LENGTH, GRID_DEPTHS, SWEEP_DEPTHS


@click.group("demo")
def demo_group() -> None:
    """Demos on the shipped models."""


@demo_group.command("passkey")
@click.argument("model", required=False)
@click.option(
    "--length", type=int, default=DEMO_LENGTH, show_default=True, help="Stream length in tokens."
)
@click.option(
    "--depth",
    type=click.FloatRange(0, 1),
    default=DEMO_DEPTH,
    show_default=True,
    help="Where the pass key sits: 0 = start, 1 = end.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Chooses the pass key.")
@click.option("--sweep", is_flag=True, help="Accuracy table over --lengths (or --grid) x --depths.")
@click.option(
    "--lengths",
    default="1024,2048,4096,8192,16384,65536,262144,1048576",
    show_default=True,
    help="Sweep lengths, comma separated.",
)
@click.option(
    "--grid",
    default=None,
    metavar="START:STOP:STEP",
    help="Sweep a fine grid of lengths instead, e.g. 1000:8200:97 (finds brittle lengths).",
)
@click.option(
    "--depths",
    default=None,
    help="Sweep depths: start, middle, end or numbers in [0, 1] "
    f"[default: {SWEEP_DEPTHS}; {GRID_DEPTHS} with --grid].",
)
@click.option(
    "--trials", type=click.IntRange(1), default=20, show_default=True, help="Sweep trials per cell."
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Sweep worker processes, at most the cores.",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="Intra-op threads, at most the cores (default: all; 1 per sweep job).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the sweep as JSON.",
)
@one_line_errors
def passkey_command(
    model: str | None,
    length: int,
    depth: float,
    seed: int,
    sweep: bool,
    lengths: str,
    grid: str | None,
    depths: str | None,
    trials: int,
    jobs: int,
    threads: int | None,
    json_path: str | None,
) -> None:
    """Find a pass key hidden in a stream of LENGTH tokens.

    MODEL is an .onnx file or a model directory (exported and int8-quantised on first use,
    then cached); the default is the shipped pass-key model: examples/models/passkey-tiny in a
    source checkout, its int8 graph inside the package otherwise (no torch needed). --sweep measures
    accuracy over many lengths and depths (--seed chooses the keys).
    """
    import json
    from pathlib import Path

    from infini_onnx import demo, passkey
    from infini_onnx.atomic import atomic_output, check_output
    from infini_onnx.errors import InfiniError
    from infini_onnx.runtime.device import check_threads
    from infini_onnx.stepgraph.files import graph_files

    if not 0 <= depth <= 1:  # FloatRange lets NaN through
        raise InfiniError(f"--depth must be in [0, 1], got {depth}")
    if json_path and model and Path(model).is_file():
        check_output(json_path, graph_files(model))  # before any work
    check_threads(threads)  # before a model directory is exported
    if sweep:
        sizes = demo.parse_lengths(lengths, grid)
        where = demo.parse_depths(depths or (GRID_DEPTHS if grid else SWEEP_DEPTHS))
        demo.check_jobs(jobs)
    demo.check_length(length)
    path = demo.resolve_model(model, log=click.echo)
    runtime = demo.open_model(path, threads)
    click.echo(f"model {path} ({runtime.variant}, segment {runtime.config.segment_len})")
    if sweep:
        table = demo.sweep(path, sizes, where, trials, seed, jobs, threads, log=click.echo)
        click.echo(demo.format_table(table, trials))
        if json_path:
            record = dict(model=str(path), variant=runtime.variant, trials=trials, seed=seed)
            record["accuracy"] = {str(n): row for n, row in table.items()}
            with atomic_output(json_path, inputs=graph_files(path)) as tmp:
                tmp.write_text(json.dumps(record, indent=2) + "\n")
            click.echo(f"wrote {json_path}")
        return
    key = passkey.demo_key(seed)
    trial = demo.run_trial(runtime, length, depth, key, out=sys.stderr)
    mb = 2**20
    click.echo(f"pass key {key} at depth {depth:.2f} of {trial.tokens:,} tokens")
    click.echo(f"answer  {trial.answer.strip()!r}: {'correct' if trial.correct else 'WRONG'}")
    click.echo(f"time {trial.seconds:.1f} s ({trial.tokens / trial.seconds:,.0f} tok/s)")
    if trial.warm_tokens < trial.tokens:
        grown = (trial.rss_end - trial.rss_warm) / mb
        click.echo(
            f"resident memory {trial.rss_warm / mb:.1f} MB after {trial.warm_tokens:,} tokens, "
            f"{trial.rss_end / mb:.1f} MB after all ({grown:+.1f} MB)"
        )
    else:  # too short for a reading after the warm-up
        click.echo(f"resident memory {trial.rss_end / mb:.1f} MB after all")

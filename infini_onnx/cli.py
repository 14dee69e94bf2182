"""The `infini` command: one subcommand per stage of the pipeline."""

from __future__ import annotations

import sys

import click

from infini_onnx.cli_utils import one_line_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="infini-onnx")
def main() -> None:
    """Infini-attention models over unbounded streams with ONNX Runtime.

    \b
    Stages:
      init      write a randomly initialised model directory (no download)
      export    MODEL_DIR -> OUT.onnx step graph (needs the [export] extra)
      quantize  OUT.onnx -> int8 / int4 / fp16 variant
      stream    stream text of any length through an .onnx model
      generate  generate text from a prompt
    """


@main.command("init")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option(
    "--preset", type=click.Choice(["tiny", "small", "base"]), default="tiny", show_default=True
)
@click.option(
    "--memory-update",
    type=click.Choice(["linear", "delta"]),
    default=None,
    help="Memory rule (default: the preset's, delta).",
)
@click.option("--segment-len", type=int, default=None, help="Override the preset's segment length.")
@click.option("--seed", type=int, default=0, show_default=True)
@one_line_errors
def init_command(
    out_dir: str, preset: str, memory_update: str | None, segment_len: int | None, seed: int
) -> None:
    """Write a randomly initialised model directory with a byte-level tokenizer."""
    from infini_onnx.model import init_model_dir

    overrides = {}
    if memory_update:
        overrides["memory_update"] = memory_update
    if segment_len is not None:
        overrides["segment_len"] = segment_len
    model = init_model_dir(out_dir, preset, seed=seed, **overrides)
    n = sum(p.numel() for p in model.parameters())
    click.echo(f"wrote {out_dir}: preset {preset}, {n / 1e6:.2f}M parameters")


@main.group("demo")
def demo_group() -> None:
    """Demos on the shipped models."""


@demo_group.command("passkey")
@click.argument("model", required=False)
@click.option(
    "--length", type=int, default=1_000_000, show_default=True, help="Stream length in tokens."
)
@click.option(
    "--depth",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Where the pass key sits: 0 = start, 1 = end.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Chooses the pass key.")
@click.option("--sweep", is_flag=True, help="Accuracy table over --lengths (or --grid) x --depths.")
@click.option(
    "--lengths",
    default="4096,16384,65536,262144,1048576",
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
    default="start,middle,end",
    show_default=True,
    help="Sweep depths: start, middle, end or numbers in [0, 1].",
)
@click.option("--trials", type=int, default=20, show_default=True, help="Sweep trials per cell.")
@click.option(
    "--jobs", type=click.IntRange(1), default=1, show_default=True, help="Sweep worker processes."
)
@click.option(
    "--threads", type=int, default=None, help="Intra-op threads (default: all; 1 per sweep job)."
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
    depths: str,
    trials: int,
    jobs: int,
    threads: int | None,
    json_path: str | None,
) -> None:
    """Find a pass key hidden in a stream of LENGTH tokens.

    MODEL is an .onnx file or a model directory (exported and int8-quantised on first use,
    then cached); the default is the shipped examples/models/passkey-tiny. --sweep measures
    accuracy over many lengths and depths (--seed chooses the keys).
    """
    import json
    import random
    from pathlib import Path

    from infini_onnx import demo, passkey
    from infini_onnx.runtime import InfiniModel

    if sweep:
        sizes = demo.parse_lengths(lengths, grid)
        where = demo.parse_depths(depths)
    demo.check_length(length)
    path = demo.resolve_model(model, log=click.echo)
    runtime = InfiniModel(path, threads=threads)
    click.echo(f"model {path} ({runtime.variant}, segment {runtime.config.segment_len})")
    if sweep:
        table = demo.sweep(path, sizes, where, trials, seed, jobs, threads, log=click.echo)
        click.echo(demo.format_table(table, trials))
        if json_path:
            record = dict(model=str(path), variant=runtime.variant, trials=trials, seed=seed)
            record["accuracy"] = {str(n): row for n, row in table.items()}
            Path(json_path).write_text(json.dumps(record, indent=2) + "\n")
            click.echo(f"wrote {json_path}")
        return
    key = passkey.random_key(random.Random(seed))
    trial = demo.run_trial(runtime, length, depth, key, out=sys.stderr)
    mb = 2**20
    click.echo(f"pass key {key} at depth {depth:.2f} of {trial.tokens:,} tokens")
    click.echo(f"answer  {trial.answer.strip()!r}: {'correct' if trial.correct else 'WRONG'}")
    click.echo(f"time {trial.seconds:.1f} s ({trial.tokens / trial.seconds:,.0f} tok/s)")
    click.echo(
        f"resident memory {trial.rss_warm / mb:.1f} MB after {demo.WARM_TOKENS:,} tokens, "
        f"{trial.rss_end / mb:.1f} MB after all ({(trial.rss_end - trial.rss_warm) / mb:+.1f} MB)"
    )


def _register_stage_commands() -> None:
    """Attach the commands each stage defines in its own module."""
    from infini_onnx.bench.cli import bench_command
    from infini_onnx.export.cli import export_command
    from infini_onnx.quantize.cli import quantize_command
    from infini_onnx.runtime.cli import generate_command, stream_command

    main.add_command(export_command, "export")
    main.add_command(quantize_command, "quantize")
    main.add_command(stream_command, "stream")
    main.add_command(generate_command, "generate")
    main.add_command(bench_command, "bench")


_register_stage_commands()

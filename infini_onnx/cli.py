"""The `infini` command: one subcommand per stage of the pipeline."""

from __future__ import annotations

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


def _register_stage_commands() -> None:
    """Attach the commands each stage defines in its own module."""
    from infini_onnx.export.cli import export_command
    from infini_onnx.quantize.cli import quantize_command
    from infini_onnx.runtime.cli import generate_command, stream_command

    main.add_command(export_command, "export")
    main.add_command(quantize_command, "quantize")
    main.add_command(stream_command, "stream")
    main.add_command(generate_command, "generate")


_register_stage_commands()

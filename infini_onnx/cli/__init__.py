"""The `infini` command: one subcommand per stage of the pipeline, each in its own module.

The group loads a subcommand's module only when that subcommand (or the group's help) needs
it, and those modules import their stage only inside the command: `infini --help` loads click
and nothing heavy, `infini stream` never loads torch.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of the click command
COMMANDS = {
    "init": "infini_onnx.cli.init_cmd:init_command",
    "convert": "infini_onnx.cli.convert_cmd:convert_command",
    "export": "infini_onnx.cli.export_cmd:export_command",
    "quantize": "infini_onnx.cli.quantize_cmd:quantize_command",
    "train": "infini_onnx.cli.train_cmd:train_command",
    "inspect": "infini_onnx.cli.inspect_cmd:inspect_command",
    "eval": "infini_onnx.cli.eval_cmd:eval_command",
    "stream": "infini_onnx.cli.stream_cmd:stream_command",
    "generate": "infini_onnx.cli.stream_cmd:generate_command",
    "demo": "infini_onnx.cli.demo_cmd:demo_group",
    "bench": "infini_onnx.cli.bench_cmd:bench_command",
    "serve": "infini_onnx.cli.serve_cmd:serve_command",
    "triton": "infini_onnx.cli.triton_cmd:triton_command",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="infini-onnx")
def main() -> None:
    """Infini-attention models over unbounded streams with ONNX Runtime.

    \b
    Stages:
      init      write a randomly initialised model directory (no download)
      convert   a Llama-family or Infini-attention checkpoint -> a model directory
      export    MODEL_DIR -> OUT.onnx step graph (needs the [export] extra)
      quantize  OUT.onnx -> int8 / int4 / fp16 variant
      train     continue pre-training a model directory on text (torchrun for several)
      inspect   memory health: gates, memory growth, float32 limits of z
      eval      bits per byte over texts as streams, with the memory's ablations
      stream    stream text of any length through an .onnx model
      generate  generate text from a prompt
      demo      the pass-key demo: find a key hidden in a long stream
      bench     benchmark against other systems (needs the [bench] extra)
      serve     serve streams over HTTP on Ray Serve (needs the [serve] extra)
      triton    MODEL.onnx -> a Triton model repository with implicit state
    """

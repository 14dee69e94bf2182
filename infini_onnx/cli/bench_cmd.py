"""The `infini bench` command."""

from __future__ import annotations

import shlex
import sys
from importlib.util import find_spec
from pathlib import Path

import click

from infini_onnx.cli.common import one_line_errors
from infini_onnx.errors import InfiniError

NEEDS = ("torch", "onnx", "matplotlib")  # export and plots; the [bench] extra brings them


@click.command("bench")
@click.option("--quick", is_flag=True, help="1K-16K tokens, short budgets (about 3 minutes).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="bench-results",
    show_default=True,
    help="Where results.json, results.md, command.txt and the PNG plots go.",
)
@click.option("--threads", type=int, default=None, help="Threads of every system [all cores].")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the built models here and reuse them [a temporary directory].",
)
@click.option("--note", default="", help="A line recorded with the results (e.g. other load).")
@click.option(
    "--decode",
    is_flag=True,
    help="Instead: decode ms/token of fp32/int8/int4 and the peers (onnxruntime-genai, "
    "llama.cpp; the [peers] extra) at each preset, 1K-1M context, with the bandwidth probe.",
)
@click.option(
    "--presets",
    default="small,base,0.5b",
    show_default=True,
    help="--decode: the `infini init` presets, comma-separated.",
)
@one_line_errors
def bench_command(
    quick: bool,
    out: str,
    threads: int | None,
    workdir: str | None,
    note: str,
    decode: bool,
    presets: str,
) -> None:
    """Benchmark infini-onnx (ORT fp32/int8/int4) against the PyTorch reference,
    infini-transformer-pytorch and a full-attention Llama in ORT: ingest speed, peak RSS and
    decode latency against stream length, model size, compute efficiency. Each system runs in
    its own fresh process. Needs the [bench] extra."""
    if find_spec("infini_onnx.bench") is None:
        raise InfiniError(
            "infini bench runs from a source checkout (the wheel leaves the harness out): "
            'git clone the repository, then pip install -e ".[bench]"'
        )
    missing = [name for name in NEEDS if find_spec(name) is None]
    if missing:
        raise InfiniError(
            f"infini bench needs {', '.join(missing)}: pip install 'infini-onnx[bench]'"
        )
    from infini_onnx.bench.markdown import summary_text
    from infini_onnx.bench.runner import run
    from infini_onnx.runtime.device import check_threads

    if threads is not None:
        check_threads(threads)

    program = Path(sys.argv[0])
    program = "infini" if program.name == "infini" else f"python {program}"
    command = " ".join([program, *map(shlex.quote, sys.argv[1:])])
    if decode:
        from infini_onnx.bench.decode import DecodePlan, run_decode
        from infini_onnx.bench.machine import cpu_info
        from infini_onnx.config import PRESETS

        names = tuple(p.strip() for p in presets.split(",") if p.strip())
        unknown = [p for p in names if p not in PRESETS]
        if unknown or not names:
            raise InfiniError(f"--presets: unknown {unknown} (choose from {', '.join(PRESETS)})")
        run_decode(
            Path(out),
            command,
            threads or cpu_info()["cores_available"],
            Path(workdir) if workdir else Path(out) / "models",
            DecodePlan(presets=names),
            note,
            click.echo,
        )
        click.echo(f"wrote {out}: decode.json, decode.md, command.txt and the plots")
        return
    results = run(
        Path(out),
        quick,
        command,
        threads=threads,
        workdir=Path(workdir) if workdir else None,
        note=note,
        log=click.echo,
    )
    click.echo(summary_text(results))
    click.echo(f"wrote {out}: results.json, results.md, command.txt and the plots")

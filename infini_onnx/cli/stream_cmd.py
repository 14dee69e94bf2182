"""`infini-stream MODEL.onnx [FILE|-]` (also `infini stream`) and `infini generate`.

Runtime only (numpy, onnxruntime, tokenizers), imported when a command runs.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

import click

from infini_onnx.cli.common import one_line_errors
from infini_onnx.devices import DEVICES
from infini_onnx.errors import InputError

if TYPE_CHECKING:
    from infini_onnx.runtime import InfiniModel, SamplingOptions, Stream

BLOCK_BYTES = 1 << 16  # input read and tokenized per chunk
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a program ended by SIGPIPE


def _model_options(fn: Callable) -> Callable:
    options = [
        click.argument("model", type=click.Path(dir_okay=False)),
        click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True),
        click.option(
            "--threads",
            type=click.IntRange(1, 1024),
            default=None,
            help="Intra-op threads, at most the cores this process may use (default: all).",
        ),
        click.option("--resume", type=click.Path(dir_okay=False), help="Continue a saved state."),
        click.option(
            "--save-state", type=click.Path(dir_okay=False), help="Save the state at the end."
        ),
        click.option(
            "--cache",
            type=click.Path(file_okay=False),
            default=None,
            help="A state store directory: resume from the longest prefix of the input it "
            "holds, and keep boundaries in it for the next run (docs/runtime.md).",
        ),
        click.option(
            "--cache-mb",
            type=click.IntRange(1),
            default=4096,
            show_default=True,
            help="The most the --cache directory may hold, in MiB.",
        ),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), fn)


def _generation_options(fn: Callable) -> Callable:
    """--prompt and the fields of SamplingOptions, gathered into `sampling` by _sampling."""
    options = [
        click.option("--prompt", default=None, help="Text fed before generating."),
        click.option(
            "--temperature", type=float, default=0.8, show_default=True, help="0 is greedy."
        ),
        click.option("--top-k", type=int, default=None),
        click.option("--top-p", type=float, default=None),
        click.option("--seed", type=int, default=None),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), fn)


def _sampling(options: dict) -> SamplingOptions:
    from infini_onnx.runtime import SamplingOptions

    return SamplingOptions(**options)


def _open_stream(
    model_path: str,
    device: str,
    threads: int | None,
    resume: str | None,
    save_state: str | None,
    cache: str | None,
    cache_mb: int,
    inputs: tuple[str, ...] = (),
) -> tuple[InfiniModel, Stream]:
    """The model and the stream (resumed or new, with the --cache store), once --save-state is
    known to be writable and none of the inputs (the model, its data file, `inputs`)."""
    from infini_onnx.atomic import check_output
    from infini_onnx.runtime import InfiniModel, StateFileError, StateStore, Stream
    from infini_onnx.stepgraph.files import graph_files

    if save_state:
        sources = [*graph_files(model_path), *(p for p in inputs if p != "-")]
        check_output(save_state, sources, StateFileError)  # before any streaming

    model = InfiniModel(model_path, device=device, threads=threads)
    store = StateStore(cache, disk_bytes=cache_mb << 20) if cache else None
    if resume:
        return model, Stream.load(model, resume, store=store)
    return model, Stream(model, store=store)


def _blocks(f: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: f.read(BLOCK_BYTES), b"")


def _generate(stream: Stream, n: int, prompt: str | None, sampling: SamplingOptions) -> bool:
    """Write generated text to stdout as it comes; False if the reader closed stdout (broken
    pipe), which then points to os.devnull so that no later write or the exit's flush fails."""
    try:
        for piece in stream.generate_text(prompt, max_new_tokens=n, sampling=sampling):
            click.echo(piece, nl=False)
            sys.stdout.flush()
        click.echo()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


def _finish(stream: Stream, save_state: str | None, output_open: bool = True) -> None:
    """Save the state if asked; say what the cache did; then, if stdout was closed, end with
    one line and exit status EXIT_BROKEN_PIPE (docs/runtime.md, "CLI")."""
    if save_state:
        stream.save(save_state)
    if stream.store is not None:
        stats = stream.store.stats()
        click.echo(
            f"cache: {stats.tokens_saved:,} tokens read from {stream.store.directory}, "
            f"{stats.stores} boundaries stored, {stats.disk_bytes / 2**20:.1f} MiB held"
            + (f", {stats.rejected} damaged entries ignored" if stats.rejected else ""),
            err=True,
        )
    if not output_open:
        saved = f"; state saved to {save_state}" if save_state else ""
        click.echo(f"error: output closed (broken pipe){saved}", err=True)
        sys.exit(EXIT_BROKEN_PIPE)
    if save_state:
        click.echo(f"saved state to {save_state} ({stream.tokens_seen:,} tokens)", err=True)


@click.command("stream")
@_model_options
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, allow_dash=True)
)
@click.option(
    "--generate",
    "generate_n",
    type=click.IntRange(0),
    default=0,
    metavar="N",
    help="Generate N tokens at the end.",
)
@_generation_options
@click.option(
    "--errors",
    type=click.Choice(["strict", "replace"]),
    default="strict",
    show_default=True,
    help="Invalid UTF-8 in FILE: refuse it, or replace it with U+FFFD (byte-level models "
    "always read the bytes as they are).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@one_line_errors
def stream_command(
    model: str,
    device: str,
    threads: int | None,
    resume: str | None,
    save_state: str | None,
    cache: str | None,
    cache_mb: int,
    file: str | None,
    generate_n: int,
    prompt: str | None,
    errors: str,
    progress: bool,
    **sampling,
) -> None:
    """Stream a text FILE (or - for stdin) of any size through MODEL.onnx.

    Memory stays flat whatever the length; a progress line shows tokens, tokens/s and resident
    memory. Then optionally generate, and save the state to resume later.
    """
    from infini_onnx.runtime.progress import Progress
    from infini_onnx.runtime.textio import check_unicode, encode_bytes

    if file is None and not (generate_n or save_state):
        raise InputError("nothing to do: give a FILE (or -), --generate N or --save-state")
    if prompt is not None and not generate_n:
        raise InputError("--prompt needs --generate N")
    if file == "-" and sys.stdin is None:
        raise InputError("-: standard input is closed")
    options = _sampling(sampling)
    if prompt is not None:
        check_unicode(prompt, "--prompt")
    onnx_model, stream = _open_stream(
        model, device, threads, resume, save_state, cache, cache_mb, (file,) if file else ()
    )
    if file is not None:
        meter = Progress() if progress else None
        try:
            with click.open_file(file, "rb") as f:
                chunks = encode_bytes(onnx_model.tokenizer, _blocks(f), errors)
                stream.feed(meter.track(chunks) if meter else chunks)
        except OSError as e:
            raise InputError(f"{file}: cannot read ({e.strerror or e})") from None
        if meter:
            meter.close()
    output_open = _generate(stream, generate_n, prompt, options) if generate_n else True
    _finish(stream, save_state, output_open)


@click.command("generate")
@_model_options
@_generation_options
@click.option("--max-new-tokens", "-n", type=click.IntRange(0), default=128, show_default=True)
@one_line_errors
def generate_command(
    model: str,
    device: str,
    threads: int | None,
    resume: str | None,
    save_state: str | None,
    cache: str | None,
    cache_mb: int,
    prompt: str | None,
    max_new_tokens: int,
    **sampling,
) -> None:
    """Generate text from a prompt (and/or a resumed state) with MODEL.onnx."""
    from infini_onnx.runtime.textio import check_unicode

    options = _sampling(sampling)
    if prompt is not None:
        check_unicode(prompt, "--prompt")
    _, stream = _open_stream(model, device, threads, resume, save_state, cache, cache_mb)
    _finish(stream, save_state, _generate(stream, max_new_tokens, prompt, options))

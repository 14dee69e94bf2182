"""`infini demo passkey`: find a pass key hidden in a stream of any length, through the runtime.

The haystack is generated as a stream (never whole in memory) and fed through ONNX Runtime;
the model then answers the question greedily. Runs on an .onnx file, or on a model directory
that is exported and int8-quantised on first use and cached; an installed package carries the
shipped model's int8 graph.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from infini_onnx import __version__, modeldir, passkey
from infini_onnx.errors import InfiniError, InputError
from infini_onnx.runtime import InfiniModel, Stream, StreamBatch
from infini_onnx.runtime.device import default_threads
from infini_onnx.runtime.progress import Progress, rss_bytes
from infini_onnx.stepgraph.state_spec import LATEST

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "passkey-tiny"
# The same model exported and int8-quantised, inside the package: what a runtime-only install
# (no torch, no examples/) runs. Rebuilt with the commands in docs/runtime.md, "The demo model".
PACKAGED_MODEL = Path(__file__).resolve().parent / "data" / "passkey-tiny-int8.onnx"
DEPTHS = {"start": 0.0, "middle": 0.5, "end": 1.0}
WARM_TOKENS = 50_000
CACHED_VARIANT = "int8"  # what a model directory is exported and quantised to


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "infini-onnx"


def resolve_model(model: str | Path | None, log=print) -> Path:
    """An .onnx path for `model`: an .onnx file as is; a model directory exported and
    int8-quantised once, then taken from the cache. Default: the shipped pass-key model's
    directory in a source checkout, its packaged int8 graph in an installed package."""
    if model is None and not SHIPPED_MODEL.is_dir():
        return PACKAGED_MODEL
    path = Path(model) if model is not None else SHIPPED_MODEL
    if path.is_file():
        return path
    if not path.is_dir():
        raise InfiniError(f"{path}: no such model file or directory")
    target = cache_dir() / cache_key(path)[:16] / f"model-{CACHED_VARIANT}.onnx"
    if target.is_file():
        return target
    from infini_onnx.export.exporter import export_model  # needs the [export] extra
    from infini_onnx.quantize.quantizer import quantize_model
    from infini_onnx.quantize.targets import resolve

    log(f"first use of {path}: exporting and quantising to {target}")
    fp32 = target.with_name("model-fp32.onnx")
    export_model(path, fp32, log=log, validate=True)
    quantize_model(fp32, target, resolve(CACHED_VARIANT), log=log)
    return target


def cache_key(model_dir: Path) -> str:
    """sha256 of everything the cached graph of a model directory embeds: the model (config and
    weights: modeldir.model_id), tokenizer.json's text, the step-graph format, the variant and
    the infini-onnx version that exported and quantised it. Refuses a directory without a
    tokenizer before any export: the demo needs text."""
    tokenizer = modeldir.tokenizer_text(model_dir)
    if tokenizer is None:
        raise InputError(f"{model_dir}: no {modeldir.TOKENIZER}: the pass-key demo needs text")
    model_id, version = modeldir.model_id(model_dir), str(LATEST.version)
    parts = [model_id, tokenizer, version, CACHED_VARIANT, __version__]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def open_model(path: str | Path, threads: int | None = None) -> InfiniModel:
    """The runtime's model of `path`, refused (InputError) without a tokenizer."""
    model = InfiniModel(path, threads=threads)
    if model.tokenizer is None:
        raise InputError(f"{path}: the graph has no tokenizer: the pass-key demo needs text")
    return model


@dataclass
class Trial:
    length: int
    depth: float
    key: str
    answer: str
    tokens: int  # the haystack's (the answer's tokens, fed back while generating, not counted)
    seconds: float
    rss_warm: int  # resident memory after WARM_TOKENS (ONNX Runtime's buffers all allocated)
    rss_end: int  # after the whole haystack
    warm_tokens: int  # tokens fed when rss_warm was read (all of them in a shorter stream)

    @property
    def correct(self) -> bool:
        return correct(self.answer, self.key)


def run_trial(
    model: InfiniModel, length: int, depth: float, key: str, out: TextIO | None = None
) -> Trial:
    """Stream one haystack and read back the model's greedy answer."""
    stream = Stream(model)
    tokenizer = model.tokenizer
    progress = Progress(out) if out is not None else None
    rss_warm: int | None = None
    fed, warm_tokens, start = 0, 0, time.perf_counter()

    def chunks():
        nonlocal fed, rss_warm, warm_tokens
        for text in passkey.haystack(length, depth, key):
            if fed >= WARM_TOKENS and rss_warm is None:  # the chunks so far have gone through
                rss_warm, warm_tokens = rss_bytes(), fed
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            fed += len(ids)
            if progress:
                progress.update(len(ids))
            yield ids

    stream.feed(chunks())
    rss_end = rss_bytes()
    if progress:
        progress.close()
    n_answer = len(passkey.answer(key).encode())
    ids = list(stream.generate(max_new_tokens=n_answer, temperature=0, stop=()))
    seconds = time.perf_counter() - start
    answer = tokenizer.decode(ids)
    if rss_warm is None:
        rss_warm, warm_tokens = rss_end, fed
    return Trial(length, depth, key, answer, fed, seconds, rss_warm, rss_end, warm_tokens)


def parse_lengths(lengths: str | None, grid: str | None) -> list[int]:
    """Sweep lengths from "4096,16384" or a grid "START:STOP:STEP" (START up to STOP)."""
    if grid:
        try:
            start, stop, step = (int(part) for part in grid.split(":"))
        except ValueError:
            raise InfiniError(f"--grid must be START:STOP:STEP in tokens, got {grid!r}") from None
        if not 0 < start <= stop or step < 1:
            raise InfiniError(f"--grid needs 0 < START <= STOP and STEP >= 1, got {grid!r}")
        return list(range(start, stop + 1, step))
    try:
        sizes = [int(n) for n in (lengths or "").split(",")]
    except ValueError:
        raise InfiniError(
            f"--lengths must be comma-separated token counts, got {lengths!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise InfiniError(f"--lengths must be positive token counts, got {lengths!r}")
    return sizes


def parse_depths(depths: str) -> dict[str, float]:
    """Depth names (start, middle, end) or numbers in [0, 1], comma separated."""
    out = {}
    for name in depths.split(","):
        name = name.strip()
        try:
            value = DEPTHS[name] if name in DEPTHS else float(name)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise InfiniError(f"--depths: {name!r} is not start, middle, end or a number in [0, 1]")
        out[name] = value
    return out


def check_length(length: int) -> None:
    try:
        passkey.haystack_room(length)
    except ValueError as e:
        raise InfiniError(str(e)) from None


def check_jobs(jobs: int) -> None:
    """Sweep worker processes: at most the cores this process may use."""
    cores = default_threads()
    if not 1 <= jobs <= cores:
        raise InputError(
            f"jobs must be in [1, {cores}] (the cores this process may use), got {jobs}"
        )


def run_cell(model: InfiniModel, length: int, depth: float, keys: list[str]) -> list[str]:
    """The greedy answers to haystacks of one length and depth, one per key: the text before the
    needle (the same for every key) is fed once, then a batch of one stream per key takes the
    needle, the rest and the question. Each answer equals `run_trial`'s on the same haystack up
    to the float rounding of batched kernels."""
    tokenizer = model.tokenizer
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    before, after = passkey.around_needle(length, depth)
    shared = Stream(model)
    head = [ids for ids in map(encode, before) if ids]
    if head:
        shared.feed(head)
    batch = StreamBatch([shared.fork() for _ in keys])
    batch.feed(np.array([encode(passkey.needle(key)) for key in keys]))
    batch.feed(np.tile(ids, (len(keys), 1)) for ids in map(encode, after))
    n_answer = len(encode(passkey.answer(keys[0])))
    tokens = np.stack(list(batch.generate(n_answer, temperature=0)), axis=1)  # [B, n_answer]
    return [tokenizer.decode(row.tolist()) for row in tokens]


def cell_keys(seed: int, length: int, depth: float, trials: int) -> list[str]:
    """The pass keys of a sweep cell."""
    rng = random.Random(f"{seed}:{length}:{depth}")
    return [passkey.random_key(rng) for _ in range(trials)]


def correct(answer: str, key: str) -> bool:
    return answer.strip().rstrip(".") == key


_worker_model: InfiniModel | None = None


def _start_worker(path: str, threads: int | None) -> None:
    global _worker_model
    _worker_model = open_model(path, threads)


def _worker_cell(job: tuple[int, float, list[str]]) -> int:
    assert _worker_model is not None
    return sum(map(correct, run_cell(_worker_model, *job), job[2]))


def run_cells(
    model_path: str | Path,
    cells: dict,
    jobs: int = 1,
    threads: int | None = None,
    done=lambda name, hits: None,
) -> dict:
    """Hits per cell of {name: (length, depth, keys)}, each one `run_cell`; `jobs` worker
    processes (each with its own ONNX Runtime session of `threads` intra-op threads, default 1
    when jobs > 1) take the costliest cells first. done(name, hits) as each cell ends."""
    check_jobs(jobs)
    hits = {}
    if jobs == 1:
        _start_worker(str(model_path), threads)
        for name, job in cells.items():
            hits[name] = _worker_cell(job)
            done(name, hits[name])
        return hits
    pool = ProcessPoolExecutor(  # spawn: forking a process with thread pools can deadlock
        jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(str(model_path), threads or 1),
    )
    cost = lambda job: job[0] * (1 + (len(job[2]) - 1) * (1 - job[1]))  # noqa: E731 tokens
    try:
        order = sorted(cells, key=lambda name: cost(cells[name]), reverse=True)
        futures = {pool.submit(_worker_cell, cells[name]): name for name in order}
        for future in as_completed(futures):
            name = futures[future]
            hits[name] = future.result()
            done(name, hits[name])
    finally:
        pool.shutdown(cancel_futures=True)
    return hits


def sweep(
    model_path: str | Path,
    lengths: list[int],
    depths: dict[str, float],
    trials: int,
    seed: int,
    jobs: int = 1,
    threads: int | None = None,
    log=print,
) -> dict[int, dict[str, float]]:
    """Accuracy per (length, depth) cell, `trials` random keys each (the paper's Table 3).

    A cell's keys depend on the seed, its length and depth alone (`cell_keys`), so that every
    sweep and variant that has the cell answers the same haystacks. The cells run as
    `run_cells` runs them.
    """
    for length in lengths:
        check_length(length)  # refuse a length too short before any work (run_cells: jobs)
    cells = {
        (n, name): (n, depths[name], cell_keys(seed, n, depths[name], trials))
        for n in lengths
        for name in depths
    }

    def done(cell: tuple[int, str], hits: int) -> None:
        log(f"length {cell[0]:>9,}  depth {cell[1]:<6}  {hits}/{trials}")

    hits = run_cells(model_path, cells, jobs, threads, done)
    return {n: {name: hits[n, name] / trials for name in depths} for n in lengths}


def format_table(table: dict[int, dict[str, float]], trials: int) -> str:
    """A markdown table: the paper's layout (lengths as columns, depths as rows), or lengths as
    rows for a grid of many lengths, with a summary of the lengths that missed."""
    lengths = list(table)
    depths = list(next(iter(table.values())))
    if len(lengths) <= 8:
        head = "| depth | " + " | ".join(_length_name(n) for n in lengths) + " |"
        rule = "|---|" + "---|" * len(lengths)
        rows = [
            f"| {d} | " + " | ".join(f"{table[n][d]:.0%}" for n in lengths) + " |" for d in depths
        ]
        return "\n".join([head, rule, *rows, f"\n{trials} trials per cell."])
    head = "| length | " + " | ".join(depths) + " | all |"
    rule = "|---|" + "---|" * (len(depths) + 1)
    rows = [
        f"| {n:,} | "
        + " | ".join(f"{table[n][d]:.0%}" for d in depths)
        + f" | {mean_accuracy(table[n]):.0%} |"
        for n in lengths
    ]
    missed, worst = misses(table)
    summary = (
        f"\n{trials} trials per cell. {len(lengths) - len(missed)} of {len(lengths)} lengths at "
        f"100%, worst {mean_accuracy(table[worst]):.0%}"
        + (f"; below 100%: {', '.join(f'{n:,}' for n in missed)}." if missed else ".")
    )
    return "\n".join([head, rule, *rows, summary])


def misses(table: dict[int, dict[str, float]]) -> tuple[list[int], int]:
    """The lengths not right at every depth, and the worst length."""
    missed = [n for n in table if mean_accuracy(table[n]) < 1.0]
    return missed, min(table, key=lambda n: mean_accuracy(table[n]))


def mean_accuracy(row: dict[str, float]) -> float:
    """A length's accuracy over its depths."""
    return sum(row.values()) / len(row)


def _length_name(n: int) -> str:
    if n % 2**20 == 0:
        return f"{n >> 20}M"
    return f"{n >> 10}K" if n % 2**10 == 0 else f"{n:,}"

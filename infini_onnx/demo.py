"""`infini demo passkey`: find a pass key hidden in a stream of any length, through the runtime.

The haystack is generated as a stream (never whole in memory) and fed through ONNX Runtime;
the model then answers the question greedily. Runs on an .onnx file, or on a model directory
that is exported and int8-quantised on first use and cached.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from infini_onnx import contract, passkey
from infini_onnx.errors import InfiniError
from infini_onnx.runtime import InfiniModel
from infini_onnx.runtime.progress import Progress, rss_bytes

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "passkey-tiny"
DEPTHS = {"start": 0.0, "middle": 0.5, "end": 1.0}
WARM_TOKENS = 50_000


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "infini-onnx"


def resolve_model(model: str | Path | None, log=print) -> Path:
    """An .onnx path for `model`: an .onnx file as is; a model directory (default: the shipped
    pass-key model) exported and int8-quantised once, then taken from the cache."""
    path = Path(model) if model is not None else SHIPPED_MODEL
    if path.is_file():
        return path
    if not path.is_dir():
        raise InfiniError(f"{path}: no such model file or directory")
    target = cache_dir() / contract.model_id(path)[:16] / "model-int8.onnx"
    if target.is_file():
        return target
    from infini_onnx.export.exporter import export_model  # needs the [export] extra
    from infini_onnx.quantize.quantizer import quantize_model
    from infini_onnx.quantize.targets import resolve

    log(f"first use of {path}: exporting and quantising to {target}")
    fp32 = target.with_name("model-fp32.onnx")
    export_model(path, fp32, log=log, validate=True)
    quantize_model(fp32, target, resolve("int8"), log=log)
    return target


@dataclass
class Trial:
    length: int
    depth: float
    key: str
    answer: str
    tokens: int
    seconds: float
    rss_warm: int  # resident memory after WARM_TOKENS (ONNX Runtime's buffers all allocated)
    rss_end: int  # after the whole haystack

    @property
    def correct(self) -> bool:
        return self.answer.strip().rstrip(".") == self.key


def run_trial(
    model: InfiniModel, length: int, depth: float, key: str, out: TextIO | None = None
) -> Trial:
    """Stream one haystack and read back the model's greedy answer."""
    stream = model.stream()
    tokenizer = model.tokenizer
    progress = Progress(out) if out is not None else None
    rss_warm: int | None = None
    fed, start = 0, time.perf_counter()

    def chunks():
        nonlocal fed, rss_warm
        for text in passkey.haystack(length, depth, key):
            if fed >= WARM_TOKENS and rss_warm is None:  # the chunks so far have gone through
                rss_warm = rss_bytes()
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
    warm = rss_end if rss_warm is None else rss_warm
    return Trial(length, depth, key, answer, stream.tokens_seen, seconds, warm, rss_end)


def sweep(
    model: InfiniModel,
    lengths: list[int],
    depths: dict[str, float],
    trials: int,
    seed: int,
    log=print,
) -> dict[int, dict[str, float]]:
    """Accuracy per (length, depth) cell, `trials` random keys each (the paper's Table 3)."""
    rng = random.Random(seed)
    table: dict[int, dict[str, float]] = {}
    for length in lengths:
        table[length] = {}
        for name, depth in depths.items():
            keys = [passkey.random_key(rng) for _ in range(trials)]
            hits = sum(run_trial(model, length, depth, key).correct for key in keys)
            table[length][name] = hits / trials
            log(f"length {length:>9,}  depth {name:<6}  {hits}/{trials}")
    return table


def format_table(table: dict[int, dict[str, float]], trials: int) -> str:
    """A markdown table: lengths as columns, depths as rows (the paper's layout)."""
    lengths = list(table)
    depths = list(next(iter(table.values())))
    head = "| depth | " + " | ".join(_length_name(n) for n in lengths) + " |"
    rule = "|---|" + "---|" * len(lengths)
    rows = [f"| {d} | " + " | ".join(f"{table[n][d]:.0%}" for n in lengths) + " |" for d in depths]
    return "\n".join([head, rule, *rows, f"\n{trials} trials per cell."])


def _length_name(n: int) -> str:
    if n % 2**20 == 0:
        return f"{n >> 20}M"
    return f"{n >> 10}K" if n % 2**10 == 0 else f"{n:,}"

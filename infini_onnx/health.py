"""`infini inspect MODEL`: the health of a model's memory (docs/training.md, "Memory health").

- The gates: sigmoid(gate) of every head, how far the memory is open, and which gates are
  saturated (|logit| > SATURATED: the gradient through the sigmoid is below 5e-5, so training
  barely moves them).
- With a text: the memory as the text streams through the runtime, segment by segment. The
  report gives the norm of M per layer and the growth of z. z grows by sigma(k) > 0 at every
  token, so float32 z eventually rounds a token's write away. The report extrapolates z's
  measured growth to the stream length where one token's write falls below one unit in the last
  place of z. That happens N times later when whole segments are fed (one write per segment).

Runs on an .onnx file (the gates come from its metadata) or a model directory (the gates from
its weights; a text needs the [export] extra, which exports it to a temporary graph first).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infini_onnx import modeldir
from infini_onnx.errors import InfiniError
from infini_onnx.runtime import InfiniModel, Stream
from infini_onnx.runtime.textio import encode_files
from infini_onnx.stepgraph.state_spec import MEMORY_INPUTS

SATURATED = 10.0  # |gate logit| above which sigmoid' < 4.5e-5
FLOAT32_BITS = 24  # significand bits: x + w == x once w < x / 2^24


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Growth:
    """The memory after each segment of a text: tokens, |M|_F and mean z per layer."""

    tokens: list[int] = field(default_factory=list)
    memory_norm: list[np.ndarray] = field(default_factory=list)  # [L] each
    z_mean: list[np.ndarray] = field(default_factory=list)  # [L] each
    write: np.ndarray | None = None  # [L, G, d]: one token's write to z at the end
    z: np.ndarray | None = None  # [L, G, d]: z at the end

    def tokens_until_lost(self, per_call: int = 1) -> np.ndarray:
        """[L]: the stream length at which the median head dimension's write (one call of
        `per_call` tokens) falls below z / 2^24, z growing as measured (linearly)."""
        rate = self.z / self.tokens[-1]  # z per token
        write = self.write * per_call
        length = np.where(rate > 0, write / np.maximum(rate, 1e-30), np.inf) * 2**FLOAT32_BITS
        return np.median(length.reshape(length.shape[0], -1), axis=1)


def gates_of_directory(model_dir: Path) -> np.ndarray:
    """[L, H] gate logits from a model directory's weights (safetensors' numpy reader)."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise InfiniError(
            "reading a model directory needs safetensors (pip install 'infini-onnx[export]'); "
            "an .onnx file needs nothing more"
        ) from None

    config = modeldir.load_config(model_dir)
    names = [f"model.layers.{i}.self_attn.gate" for i in range(config.num_hidden_layers)]
    files = modeldir.weight_files(model_dir)
    where = (
        {name: files[0] for name in names}
        if files[0].name == modeldir.WEIGHTS
        else {n: model_dir / f for n, f in modeldir.weight_index(model_dir).items()}
    )
    gates = []
    for name in names:
        if name not in where:
            raise InfiniError(f"{model_dir}: no tensor {name!r}")
        try:
            with safe_open(str(modeldir.member(model_dir, where[name].name)), "np") as f:
                gates.append(f.get_tensor(name).astype(np.float64))
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
            raise InfiniError(f"{where[name]}: cannot read {name!r} ({e})") from None
    return np.stack(gates)


def memory_growth(model: InfiniModel, ids: np.ndarray, log: Callable[[str], None]) -> Growth:
    """Stream `ids` through `model` one segment per call and record the memory after each."""
    N = model.config.segment_len
    if len(ids) < N + 1:
        raise InfiniError(
            f"the text has {len(ids):,} tokens; at least one segment and a token "
            f"({N + 1:,}) are needed to see the memory"
        )
    memory_name, norm_name = MEMORY_INPUTS[0], MEMORY_INPUTS[1]
    acc_name = MEMORY_INPUTS[3]  # z's accumulator: z plus the writes of the current segment
    stream, growth = Stream(model), Growth()
    whole = (len(ids) - 1) // N * N
    report_every = max(whole // N // 10, 1) * N  # about ten progress lines
    for start in range(0, whole, N):
        stream.feed(ids[start : start + N])
        host = stream.state.to_host()
        growth.tokens.append(start + N)
        growth.memory_norm.append(np.sqrt((host[memory_name][0] ** 2).sum(axis=(1, 2, 3))))
        growth.z_mean.append(host[norm_name][0].mean(axis=(1, 2)))
        if (start + N) % report_every == 0:
            log(f"  {start + N:,} of {whole:,} tokens")
    before = stream.state.to_host()[acc_name][0].astype(np.float64)
    stream.feed(ids[whole : whole + 1])
    growth.write = stream.state.to_host()[acc_name][0] - before
    growth.z = before
    return growth


def text_ids(model: InfiniModel, paths: Iterable[Path]) -> np.ndarray:
    if model.tokenizer is None:
        raise InfiniError(f"{model.path}: no tokenizer in the model: --text needs one")
    return encode_files(model.tokenizer, paths)


def gate_report(gates: np.ndarray) -> list[str]:
    """Lines: each layer's open fraction sigmoid(gate) (min, mean, max over heads) and its
    saturated heads."""
    lines = ["gates: sigmoid(gate) = the memory's share of each head's output"]
    lines.append("| layer | min | mean | max | saturated heads (|logit| > 10) |")
    lines.append("|---|---|---|---|---|")
    for i, row in enumerate(gates):
        open_ = sigmoid(row)
        stuck = [f"{h} ({row[h]:+.0f})" for h in np.flatnonzero(np.abs(row) > SATURATED)]
        lines.append(
            f"| {i} | {open_.min():.4f} | {open_.mean():.4f} | {open_.max():.4f} | "
            f"{', '.join(stuck) or '-'} |"
        )
    stuck = int((np.abs(gates) > SATURATED).sum())
    lines.append(
        f"{stuck} of {gates.size} gates saturated"
        + (": training cannot move them" if stuck else "")
    )
    return lines


def growth_report(growth: Growth, segment_len: int) -> list[str]:
    picks = sorted({0, *(2**k - 1 for k in range(1, 40) if 2**k <= len(growth.tokens))})
    picks = sorted({*picks, len(growth.tokens) - 1})
    lines = ["memory over the text: |M|_F (all heads) and mean z, per layer, after each segment"]
    L = len(growth.memory_norm[0])
    lines.append("| tokens | " + " | ".join(f"L{i} \\|M\\| | L{i} z" for i in range(L)) + " |")
    lines.append("|---|" + "---|---|" * L)
    for p in picks:
        cells = [f"{m:.3g} | {z:.3g}" for m, z in zip(growth.memory_norm[p], growth.z_mean[p])]
        lines.append(f"| {growth.tokens[p]:,} | " + " | ".join(cells) + " |")
    one, whole = growth.tokens_until_lost(1), growth.tokens_until_lost(segment_len)
    lines.append(
        "float32 z rounds away a token's write (median head dimension) at about: "
        + ", ".join(f"L{i} {fmt_tokens(t)}" for i, t in enumerate(one))
        + f" tokens decoded one per call; fed {segment_len} per call: "
        + ", ".join(f"L{i} {fmt_tokens(t)}" for i, t in enumerate(whole))
    )
    return lines


def fmt_tokens(n: float) -> str:
    if not math.isfinite(n):
        return "never"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def inspect(
    model: str | Path,
    texts: list[Path] | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Print the gate report (and with `texts` the memory report); return the figures."""
    path = Path(model)
    with tempfile.TemporaryDirectory(prefix="infini-inspect.") as tmp:
        runtime = None
        if path.is_dir():
            gates = gates_of_directory(path)
            if texts:
                try:
                    from infini_onnx.export.exporter import export_model
                except ImportError:
                    raise InfiniError(
                        "streaming a text through a model directory exports it first, which "
                        "needs pip install 'infini-onnx[export]' (or inspect its .onnx)"
                    ) from None

                log(f"exporting {path} to a temporary step graph")
                onnx_path = export_model(path, Path(tmp) / "model.onnx")
                runtime = InfiniModel(onnx_path, threads=threads, quiet=True)
        else:
            runtime = InfiniModel(path, threads=threads, quiet=True)
            if runtime.gates is None:
                raise InfiniError(
                    f"{path}: no gates in its metadata (exported before infini-onnx recorded "
                    "them): inspect its model directory, or export it again"
                )
            gates = np.array(runtime.gates, dtype=np.float64)
        for line in gate_report(gates):
            log(line)
        result: dict = {"gates": gates.tolist()}
        if texts:
            ids = text_ids(runtime, texts)
            N = runtime.config.segment_len
            log(f"streaming {len(ids):,} tokens, {N} per call")
            growth = memory_growth(runtime, ids, log)
            for line in growth_report(growth, N):
                log(line)
            result.update(
                tokens=growth.tokens,
                memory_norm=[m.tolist() for m in growth.memory_norm],
                z_mean=[z.tolist() for z in growth.z_mean],
                tokens_until_lost=growth.tokens_until_lost(1).tolist(),
            )
    return result

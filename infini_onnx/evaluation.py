"""`infini eval`: bits per byte of texts read as streams, by position, for a model, its two
ablations and any models compared with it (docs/real-text.md).

The runs of one evaluation:
- "model": the model as it is;
- "memory reset": the same graph, its memory emptied at every segment boundary;
- "window only": the same weights with every gate closed (the memory never read), exported
  from the model directory;
- one run per compared model (e.g. baselines trained without memory), as they are.

The margins say how much lower the model's bits per byte beyond 10K bytes are than each other
run's, as a mean over the texts with its standard error.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from infini_onnx.errors import InfiniError
from infini_onnx.runtime import InfiniModel
from infini_onnx.runtime.device import check_threads
from infini_onnx.runtime.evaluate import BUCKETS, Scored, score
from infini_onnx.runtime.progress import Progress
from infini_onnx.runtime.textio import read_text_file

MODEL, RESET, WINDOW = "model", "memory reset", "window only"
MARGIN_BUCKET = "10K+"
PLOT_COLUMNS = 3  # panels in a row of the plot
Log = Callable[[str], None]


def export_graph(model_dir: Path, out: Path, log: Log, window_only: bool = False) -> Path:
    """An fp32 step graph of a model directory (window_only: its gates closed first)."""
    try:
        from infini_onnx.export.exporter import export_model
        from infini_onnx.model import InfiniLlamaForCausalLM
        from infini_onnx.model.modeling import CLOSED_GATE
        from infini_onnx.modeldir import tokenizer_text
    except ImportError:
        raise InfiniError(
            "evaluating a model directory exports it first, which needs "
            "pip install 'infini-onnx[export]' (or evaluate its .onnx)"
        ) from None
    log(f"exporting {model_dir} to a temporary step graph{' (gates closed)' * window_only}")
    if window_only:
        model = InfiniLlamaForCausalLM.from_pretrained(model_dir)
        model.set_gates(CLOSED_GATE)
        model.save_pretrained(out.parent / "closed", tokenizer_text(model_dir))
        model_dir = out.parent / "closed"
    return export_model(model_dir, out)


def check_model_path(path: Path) -> None:
    if not path.is_dir() and not path.is_file():
        raise InfiniError(f"{path}: no such model directory or .onnx file")


def graph_of(path: Path, tmp: Path, log: Log) -> Path:
    """An .onnx as it is; a model directory exported to tmp/model.onnx."""
    if path.is_dir():
        tmp.mkdir(parents=True)
        return export_graph(path, tmp / "model.onnx", log)
    return path


def scored_with_progress(model: InfiniModel, text: str, reset: bool) -> Scored:
    """score() with a live progress line on a terminal (cleared when done)."""
    progress = Progress()
    scored = score(model, text, reset_memory=reset, progress=progress.update)
    if progress.live:
        progress.out.write("\r\033[K")
    return scored


def evaluate(
    model: Path,
    texts: list[Path],
    compare: dict[str, Path],
    ablations: bool,
    threads: int | None,
    log: Log,
) -> dict[str, Any]:
    """Every run over every text: {"texts": [...], "margins": {...}} (JSON-ready once
    `json_ready`). Every path and option is checked before the first export."""
    for path in (model, *compare.values()):
        check_model_path(path)
    if threads is not None:
        check_threads(threads)
    contents = {path: read_text_file(path) for path in texts}
    with tempfile.TemporaryDirectory(prefix="infini-eval.") as tmp:
        graphs = {MODEL: (graph_of(model, Path(tmp) / MODEL, log), False)}
        if ablations:
            graphs[RESET] = (graphs[MODEL][0], True)
            if model.is_dir():
                out = Path(tmp) / "window" / "model.onnx"
                out.parent.mkdir()
                graphs[WINDOW] = (export_graph(model, out, log, window_only=True), False)
            else:
                log(f"no {WINDOW!r} ablation: it needs the model directory, not an .onnx")
        for label, path in compare.items():
            graphs[label] = (graph_of(path, Path(tmp) / f"compare-{len(graphs)}", log), False)
        results, sessions = {path: {} for path in texts}, {}
        for label, (graph, reset) in graphs.items():
            if graph not in sessions:  # the memory reset runs the model's own session
                sessions[graph] = InfiniModel(graph, threads=threads)
            session = sessions[graph]
            for path, text in contents.items():
                t0 = time.perf_counter()
                scored = scored_with_progress(session, text, reset)
                seconds = time.perf_counter() - t0
                results[path][label] = scored
                log(
                    f"{label}: {path.name} {scored.bits_per_byte():.4f} bits/byte "
                    f"({len(scored.bits):,} tokens, {len(scored.bits) / seconds:,.0f} tok/s)"
                )
    return report(model, results)


def report(model: Path, results: dict[Path, dict[str, Scored]]) -> dict[str, Any]:
    texts = [
        dict(
            path=str(path),
            bytes=runs[MODEL].size,
            tokens=len(runs[MODEL].bits),
            runs={label: dict(buckets=s.buckets(), curve=s.curve()) for label, s in runs.items()},
        )
        for path, runs in results.items()
    ]
    return dict(model=str(model), texts=texts, margins=margins(texts))


def margins(texts: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """For each run other than the model: how much lower the model's bits per byte beyond 10K
    bytes are, over the texts long enough to have them (mean, standard error, the mean in
    standard errors, and in percent of the other run's mean)."""
    long = [t for t in texts if not math.isnan(t["runs"][MODEL]["buckets"][MARGIN_BUCKET])]
    if not long:
        return {}
    out = {}
    for label in long[0]["runs"]:
        if label == MODEL:
            continue
        other = np.array([t["runs"][label]["buckets"][MARGIN_BUCKET] for t in long])
        ours = np.array([t["runs"][MODEL]["buckets"][MARGIN_BUCKET] for t in long])
        diff = other - ours
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
        mean = float(diff.mean())
        out[label] = dict(
            texts=len(diff),
            mean=mean,
            standard_error=se,
            standard_errors=mean / se if se > 0 else math.nan,
            percent=100 * mean / float(other.mean()),
        )
    return out


def json_ready(value: Any) -> Any:
    """The result with NaN (a range the text does not reach) as None: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def table(result: dict[str, Any]) -> list[str]:
    """The report as text: one table of bits per byte per text, then the margins."""
    names = [name for name, _, _ in BUCKETS]
    lines = []
    for text in result["texts"]:
        width = max(len("bits/byte"), *(len(label) for label in text["runs"]))
        lines.append(f"\n{text['path']} ({text['bytes']:,} bytes, {text['tokens']:,} tokens)")
        lines.append(f"{'bits/byte':<{width}}  " + "  ".join(f"{n:>8}" for n in names))
        for label, run in text["runs"].items():
            cells = "  ".join(f"{run['buckets'][n]:>8.4f}" for n in names)
            lines.append(f"{label:<{width}}  {cells.replace('nan', '  -')}")
    if result["margins"]:
        lines.append(
            "\nthe model's margin beyond 10K bytes (the other's bits/byte minus the model's):"
        )
        for label, m in result["margins"].items():
            spread = (
                f"{m['standard_errors']:.1f} standard errors over {m['texts']} texts"
                if math.isfinite(m["standard_errors"])
                else f"no standard error from {m['texts']} text(s)"
            )
            lines.append(
                f"  vs {label}: {m['mean']:+.4f} bits/byte ({m['percent']:+.1f}%), {spread}"
            )
    elif result["texts"] and len(result["texts"][0]["runs"]) > 1:
        lines.append("\nno margins: no text is longer than 10K bytes")
    return lines


def pyplot(out: str):
    """matplotlib's pyplot for a plot file `out`; InfiniError if it is missing or cannot write
    that file type (checked before the work)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise InfiniError("--plot needs matplotlib (pip install matplotlib)") from None
    kinds = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(out).suffix.lstrip(".").lower()
    if suffix not in kinds:
        raise InfiniError(
            f"--plot {out}: name a file of a type matplotlib writes ({', '.join(kinds)})"
        )
    return plt


def plot(result: dict[str, Any], out: str) -> None:
    """Bits per byte against position (log scale), one panel per text (at most PLOT_COLUMNS to a
    row), one line per run."""
    plt = pyplot(out)
    texts = result["texts"]
    columns = min(len(texts), PLOT_COLUMNS)
    rows = -(-len(texts) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(texts) :]:
        ax.set_visible(False)
    for ax, text in zip(axes.flat, texts):
        for label, run in text["runs"].items():
            ends, bits = zip(*run["curve"])
            ax.plot(ends, bits, label=label, marker=".", linewidth=1)
        ax.set_xscale("log")
        ax.set_title(Path(text["path"]).name, fontsize=9)
        ax.set_xlabel("position in the stream (bytes)")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("bits per byte")
    axes.flat[len(texts) - 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110, format=Path(out).suffix.lstrip(".").lower())
    plt.close(fig)

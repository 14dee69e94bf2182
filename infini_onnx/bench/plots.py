"""The PNG figures of a run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from infini_onnx.bench.report import EFFICIENCY

MB = 2**20
FIGURES = (
    "ingest.png",
    "peak_rss.png",
    "decode.png",
    "model_size.png",
    "efficiency.png",
    "batch.png",
)


def _series(ax, results: dict, figure, synthetic: bool = False) -> None:
    """One line per system: figure(point) -> (median, low, high) against stream length."""
    for name, s in results["systems"].items():
        points = [p for p in s.get("points", []) if figure(p)]
        if points:
            x = [p["tokens"] for p in points]
            mid, low, high = zip(*(figure(p) for p in points))
            line = ax.errorbar(
                x,
                mid,
                yerr=[[m - lo for m, lo in zip(mid, low)], [h - m for m, h in zip(mid, high)]],
                marker="o",
                ms=4,
                capsize=2,
                label=name,
            )
        extra = [p for p in s.get("synthetic", []) if "peak_rss" in p] if synthetic else []
        if extra and points:
            ax.plot(
                [points[-1]["tokens"]] + [p["tokens"] for p in extra],
                [figure(points[-1])[0]] + [figure(p)[0] for p in extra],
                ls=":",
                marker="o",
                mfc="none",
                color=line[0].get_color(),
                label=f"{name} (random-filled cache)",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("stream length (tokens)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def write_all(results: dict, out_dir: Path) -> list[Path]:
    """The FIGURES."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpu = results["run"]["cpu"]
    title = (
        f"{cpu['model']} ({cpu.get('family/model/stepping', '?')}), "
        f"{results['run']['threads']} threads, {results['run']['date']}"
    )
    figures = []

    def save(fig, ax, name: str, heading: str) -> None:
        ax.set_title(f"{heading}\n{title}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        figures.append(out_dir / name)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _series(ax, results, lambda p: tuple(p["window_tok_s"][k] for k in ("median", "min", "max")))
    ax.set_yscale("log")
    ax.set_ylabel("ingest tokens/s (median, min-max)")
    save(fig, ax, "ingest.png", "Ingest throughput against stream length")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _series(ax, results, lambda p: (p["peak_rss"] / MB,) * 3, synthetic=True)
    ax.set_yscale("log")
    ax.set_ylabel("peak RSS (MB)")
    save(fig, ax, "peak_rss.png", "Peak resident memory after ingesting the stream")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _series(
        ax,
        results,
        lambda p: tuple(p["decode_ms"][k] for k in ("median", "min", "max")),
        synthetic=True,
    )
    for name, s in results["systems"].items():
        if "probe" in s:
            ms = s["probe"]["ms"]["median"]
            ax.axhline(ms, ls="--", lw=0.8, color="gray")
            ax.annotate(
                f"probe: {name.split()[-1]} weights read once",
                (0.01, ms),
                xycoords=("axes fraction", "data"),
                fontsize=6,
            )
    ax.set_yscale("log")
    ax.set_ylabel("decode latency (ms/token, median, min-max)")
    save(fig, ax, "decode.png", "Per-token decode latency against stream position")

    names = list(results["systems"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [results["systems"][n]["file_bytes"]["bytes"] / MB for n in names]
    bars = ax.barh(names, sizes)
    ax.bar_label(bars, fmt=" %.1f MB", fontsize=8)
    ax.set_xlim(0, 1.2 * max(sizes))
    ax.invert_yaxis()
    ax.set_xlabel("model weights (MB)")
    save(fig, ax, "model_size.png", "Model file size")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rated = [
        (n, s["headline"]["gflops"])
        for n, s in results["systems"].items()
        if "gflops" in s.get("headline", {})
    ]
    ceiling = results["ceiling"]["gflops"]
    bars = ax.barh(
        [n for n, _ in rated],
        [g["median"] for _, g in rated],
        xerr=[
            [g["median"] - g["min"] for _, g in rated],
            [g["max"] - g["median"] for _, g in rated],
        ],
    )
    ax.bar_label(
        bars,
        labels=[f"{g['median']:.0f} GFLOP/s = {g['median'] / ceiling:.0%}" for _, g in rated],
        label_type="center",
        color="white",
        fontsize=8,
    )
    ax.axvline(
        ceiling, color="k", ls="--", label=f"dense fp32 matmul ceiling {ceiling:.0f} GFLOP/s"
    )
    ax.axvline(EFFICIENCY * ceiling, color="gray", ls=":", label=f"{EFFICIENCY:.0%} of the ceiling")
    ax.invert_yaxis()
    ax.set_xlabel("achieved ingest GFLOP/s (fp32-equivalent)")
    ax.legend(fontsize=7, loc="lower right")
    save(fig, ax, "efficiency.png", "Compute efficiency of ingest (small preset, segment 512)")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in results["systems"].items():
        runs = s.get("batches", [])
        if runs:
            streams, tok_s = zip(*((b["streams"], b["tok_s"]) for b in runs))
            ax.plot(streams, tok_s, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("streams decoding as one batch")
    ax.set_ylabel("decode tokens/s (all streams)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, ax, "batch.png", "Batched decode throughput")
    return figures

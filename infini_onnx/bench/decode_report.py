"""decode.md and the two plots of `infini bench --decode` (bench/decode.py)."""

from __future__ import annotations

from pathlib import Path

from infini_onnx.bench.markdown import length
from infini_onnx.config import parameter_count, preset_config

MB = 2**20
HEADLINE = (1024, 4096)  # the contexts of the ratio table
# infini-onnx variant -> its peers of the same bits
SAME_BITS = {
    "fp32": ("GenAI fp32",),
    "int8": ("llama.cpp Q8_0",),
    "int4": ("GenAI int4", "llama.cpp Q4_0"),
}


def _decode_ms(system: dict, context: int) -> float | None:
    for p in system.get("points", []):
        if p["tokens"] == context:
            return p["decode_ms"]["median"]
    return None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def _batch_gain(system: dict) -> str:
    runs = {r["streams"]: r["step_ms"]["median"] for r in system.get("batches", [])}
    if 1 not in runs or len(runs) < 2:
        return "n/a"
    most = max(runs)
    return f"{most * runs[1] / runs[most]:.1f}x ({most} streams)"


def _preset_tables(preset: str, entry: dict, contexts: list[int]) -> list[str]:
    systems = entry["systems"]
    params = parameter_count(preset_config(preset)) / 1e6
    lines = [
        f"## {preset} ({params:,.0f}M parameters)",
        "",
        "| system | weights MB | probe ms | "
        + " | ".join(f"decode ms at {length(c)}" for c in contexts)
        + " | ingest tok/s | batched decode gain | stopped by |",
        "|---|---|---|" + "---|" * len(contexts) + "---|---|---|",
    ]
    for name, s in systems.items():
        cells = [f"{_decode_ms(s, c):.2f}" if _decode_ms(s, c) else "" for c in contexts]
        ingest = s["points"][-1]["ingest_tok_s"] if s.get("points") else None
        lines.append(
            f"| {name} | {s['weights_bytes'] / MB:,.1f} | {s['probe_ms']:.2f} | "
            + " | ".join(cells)
            + f" | {f'{ingest:,.0f}' if ingest else ''} | {_batch_gain(s)} | {s.get('stop', '')} |"
        )
    lines += [
        "",
        "| infini-onnx | "
        + " | ".join(
            f"vs {peer} at {length(c)}"
            for peer in ("same-bits GenAI", "same-bits llama.cpp")
            for c in HEADLINE
        )
        + " | decode / probe at 4K |",
        "|---|---|---|---|---|---|",
    ]
    for variant, peers in SAME_BITS.items():
        ours = systems.get(f"infini-onnx {variant}")
        if ours is None:
            continue
        cells = []
        for family in ("GenAI", "llama.cpp"):
            peer = next((systems.get(p) for p in peers if p.startswith(family)), None)
            for c in HEADLINE:
                cells.append(_ratio(_decode_ms(ours, c), peer and _decode_ms(peer, c)))
        cells.append(_ratio(_decode_ms(ours, 4096), ours["probe_ms"]))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    fp32, int4 = systems.get("infini-onnx fp32"), systems.get("infini-onnx int4")
    if fp32 and int4 and fp32.get("points") and int4.get("points"):
        gain = int4["points"][-1]["ingest_tok_s"] / fp32["points"][-1]["ingest_tok_s"]
        lines += ["", f"int4 ingest is {gain:.2f}x fp32's."]
    lines += ["", *(f"- {n}" for n in entry["notes"]), ""]
    return lines


def markdown(results: dict) -> str:
    run = results["run"]
    contexts = run["plan"]["contexts"]
    lines = [
        "# infini bench --decode",
        "",
        f"`{run['command']}` on {run['cpu']['model']}, {run['threads']} threads, "
        f"{run['date']}, {run['wall_seconds'] / 60:.0f} min; load average "
        f"{run['load_average_start']} -> {run['load_average_end']}. {run['note']}",
        "",
        "Decode: median ms of one token after the context (infini-onnx reads "
        f"{length(run['plan']['real_tokens'])} tokens for real, then its position is set; the "
        "peers read the whole context). probe: the time to read a buffer of the system's "
        "weight bytes once (a float32 GEMV), the floor of a step that reads its weights. "
        "Ratios below 1 are in infini-onnx's favour, except batched decode gain: tokens/s of "
        "the largest batch over one stream's. GenAI's files hold its cos/sin caches for "
        "2M positions (so that it can reach 1M), which its weights MB and probe count.",
        "",
    ]
    for preset, entry in results["presets"].items():
        lines += _preset_tables(preset, entry, contexts)
    return "\n".join(lines)


def plots(results: dict, out_dir: Path) -> None:
    """decode_context.png (ms/token against context, one panel per preset) and
    decode_size.png (ms/token at 4K against parameters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = results["presets"]
    fig, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 4.5), squeeze=False)
    for ax, (preset, entry) in zip(axes[0], presets.items()):
        for name, s in entry["systems"].items():
            points = s.get("points", [])
            if points:
                style = "-" if name.startswith("infini") else "--"
                x = [p["tokens"] for p in points]
                ax.plot(
                    x, [p["decode_ms"]["median"] for p in points], style, marker="o", label=name
                )
        ax.set(xscale="log", yscale="log", title=preset, xlabel="context (tokens)")
        ax.set_ylabel("decode ms/token")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "decode_context.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    names = {n for e in presets.values() for n in e["systems"]}
    for name in sorted(names):
        xs, ys = [], []
        for preset, entry in presets.items():
            ms = _decode_ms(entry["systems"].get(name, {}), 4096)
            if ms:
                xs.append(parameter_count(preset_config(preset)) / 1e6)
                ys.append(ms)
        if xs:
            ax.plot(xs, ys, "-" if name.startswith("infini") else "--", marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="parameters (M)", ylabel="decode ms/token at 4K")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "decode_size.png", dpi=110)
    plt.close(fig)

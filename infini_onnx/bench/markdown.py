"""results.md and the table `infini bench` prints."""

from __future__ import annotations

from collections.abc import Callable

from infini_onnx.bench.report import HEADLINE_TOKENS, MB


def _range(s: dict, digits: int = 0) -> str:
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])} [{f.format(s['min'])}-{f.format(s['max'])}]"


def length(tokens: int) -> str:
    """1024 -> 1K, 1048576 -> 1M."""
    return f"{tokens // 2**20}M" if tokens % 2**20 == 0 else f"{tokens // 1024}K"


def _summary_row(name: str, s: dict, ceiling: float) -> str:
    points, h = s.get("points", []), s.get("headline")
    if not points or not h:
        return f"| {name} |" + " |" * 8 + f" {s.get('stop', 'no result')} |"
    first, last = points[0], points[-1]
    ingest = _range(h["tok_s"])
    if h["tokens"] != HEADLINE_TOKENS:
        ingest += f" (at {length(h['tokens'])})"
    g = h.get("gflops")
    cells = [
        name,
        f"{s['params'] / 1e6:.3f}M",
        f"{s['file_bytes']['bytes'] / MB:.1f}",
        ingest,
        f"{g['median']:.1f} ({g['median'] / ceiling:.0%})" if g else "",
        f"{first['decode_ms']['median']:.2f} / {last['decode_ms']['median']:.2f}",
        f"{first['peak_rss'] / MB:,.0f} / {last['peak_rss'] / MB:,.0f}",
        length(last["tokens"]),
        s["stop"],
    ]
    return "| " + " | ".join(cells) + " |"


def _summary(results: dict) -> list[str]:
    ceiling = results["ceiling"]["gflops"]
    return [
        "## Summary",
        "",
        f"| system | params | weights MB | ingest tok/s at {length(HEADLINE_TOKENS)}: median "
        "[min-max] | GFLOP/s (% of ceiling) | decode ms first / last | peak RSS MB first / last "
        "| longest stream | stopped by |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_summary_row(n, s, ceiling) for n, s in results["systems"].items()),
        "",
        "Ingest: tokens/s of each ingest call (one segment; 512-token chunks for full attention) "
        f"over the calls since the previous stream length, at {length(HEADLINE_TOKENS)}. GFLOP/s "
        "counts the infini-llama FLOPs (int8/int4: fp32-equivalent). Decode and peak RSS: at the "
        "first and the longest stream length measured.",
        "",
    ]


def _decode_limits(results: dict) -> list[str]:
    """Batched decode and the bandwidth probe of each infini-onnx variant."""
    systems = {n: s for n, s in results["systems"].items() if "batches" in s or "probe" in s}
    counts = sorted({b["streams"] for s in systems.values() for b in s.get("batches", [])})
    if not systems:
        return []
    rows = []
    for name, s in systems.items():
        runs = {b["streams"]: b["tok_s"] for b in s.get("batches", [])}
        one = runs.get(1)
        cells = [
            f"{runs[n]:,.0f}" + (f" ({runs[n] / one:.1f}x)" if one else "") if n in runs else ""
            for n in counts
        ]
        probe = s.get("probe")
        if probe:
            ms, mb = probe["ms"]["median"], probe["bytes"] / MB
            cells.append(f"{ms:.2f} ms ({mb:.1f} MB at {probe['gb_s']:.1f} GB/s)")
        else:
            cells.append("")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return [
        "## Batched decode and the bandwidth limit",
        "",
        "| system | "
        + " | ".join(f"{n} stream{'s' if n > 1 else ''} tok/s" for n in counts)
        + " | bandwidth probe: reading the weights once |",
        "|---" * (len(counts) + 2) + "|",
        *rows,
        "",
        "Batched decode: StreamBatch of that many streams (each after one segment of its own "
        "tokens), one graph call per step for all; tokens/s and the gain over one stream. "
        "Bandwidth probe: an ONNX Runtime "
        "float32 GEMV over a matrix of the graph file's size (the faster of the runs before and "
        "after the systems).",
        "",
    ]


def _targets(results: dict) -> list[str]:
    lines = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in results["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    return lines + [""]


def _by_length(results: dict, title: str, cell: Callable[[dict], str]) -> list[str]:
    """One figure as a table: stream lengths down, systems across."""
    systems = results["systems"]
    measured = lambda s: [  # noqa: E731
        p for p in s.get("points", []) + s.get("synthetic", []) if "peak_rss" in p
    ]
    lengths = sorted({p["tokens"] for s in systems.values() for p in measured(s)})
    lines = [f"### {title}", "", "| tokens | " + " | ".join(systems) + " |"]
    lines.append("|---" * (len(systems) + 1) + "|")
    for n in lengths:
        row = []
        for s in systems.values():
            p = next((p for p in measured(s) if p["tokens"] == n), None)
            text = cell(p) if p else ""
            row.append(text + "*" if text and p.get("synthetic") else text)
        lines.append(f"| {length(n)} | " + " | ".join(row) + " |")
    return lines + [""]


def _header(results: dict) -> list[str]:
    run, model, c = results["run"], results["model"], results["ceiling"]
    cpu, cfg = run["cpu"], model["config"]
    ceilings = " / ".join(
        f"ORT {_range(m['onnxruntime'], 1)}, numpy {_range(m['numpy'], 1)}"
        for m in c["measurements"]
    )
    lines = [
        f"# infini bench results ({run['mode']})",
        "",
        f"- Command: `{run['command']}` ({run['date']}, {run['wall_seconds']:.0f} s)",
        f"- CPU: {cpu['model']} (family/model/stepping {cpu.get('family/model/stepping', '?')}; "
        f"{', '.join(cpu['flags'])}); {cpu['cores_available']} cores available; "
        f"**{run['threads']} threads** for every system (ORT intra-op, torch, BLAS)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items()),
        f"- Load average (1/5/15 min): {run['load_average_start']} at the start, "
        f"{run['load_average_end']} at the end",
        f"- Model: small preset, {model['params']:,} parameters ({model['matmul_params']:,} in the "
        f"layers' matmuls), segment {cfg['segment_len']}, head_dim {cfg['head_dim']}, "
        f"{cfg['memory_update']} rule; ingest {model['ingest_flops_per_token'] / 1e6:.2f} "
        "MFLOP/token (infini_onnx/bench/flops.py)",
        f"- Dense fp32 matmul ({c['measurements'][0]['size']}^3) GFLOP/s, median [min-max], before "
        f"/ after the systems: {ceilings}; ceiling used: **{c['gflops']:.1f} GFLOP/s**",
    ]
    if run.get("note"):
        lines.append(f"- Note: {run['note']}")
    return lines + [f"- {n}" for n in results["notes"]] + [""]


def markdown(results: dict) -> str:
    """results.md: the run, the summary, the targets, and every point by stream length."""
    lines = [*_header(results), *_summary(results), *_decode_limits(results)]
    lines += _targets(results)
    lines += [
        "## By stream length",
        "",
        "`*`: full-attention cache of that length filled with random values (past its ingest "
        "budget), each point in a fresh process.",
        "",
        *_by_length(
            results,
            "Ingest tokens/s (median of the calls since the previous length)",
            lambda p: f"{p['window_tok_s']['median']:,.0f}" if "window_tok_s" in p else "",
        ),
        *_by_length(
            results, "Decode ms/token, median [min-max]", lambda p: _range(p["decode_ms"], 2)
        ),
        *_by_length(results, "Peak RSS MB", lambda p: f"{p['peak_rss'] / MB:,.1f}"),
    ]
    return "\n".join(lines)


def summary_text(results: dict) -> str:
    """What `infini bench` prints at the end: the summary table and the targets."""
    return "\n".join(["", *_summary(results), *_decode_limits(results), *_targets(results)])

"""Pass-key retrieval of every quantised variant of a model directory, through ONNX Runtime (CPU).

    python benchmarks/bench_passkey.py examples/models/passkey-tiny --workdir /tmp/bp --jobs 16

Exports the model (fp32), quantises it to int8, int8-static and int4 (int8-static calibrated on
a haystack stream), then prints and writes (--out DIR: results.md, results.json):
- the quantisation report of each variant on the model's own kind of text (a held-out haystack
  stream): top-1 agreement with fp32 and the final memory error;
- pass-key accuracy per length and depth: --lengths with --trials per cell and --long-lengths
  with --long-trials, at --depths; a fine grid (--grid) and every question offset within a
  segment (--offset-segments), at --grid-depths, --grid-trials and --offset-trials per cell;
- the demo's default run (1M tokens, depth 0.5) for --seed 0 to --demo-seeds - 1;
- the largest difference between two variants in any cell both have (--include adds the
  variants of an earlier results.json, e.g. an int8 run, to compare with).

A cell's keys depend only on --seed, its length and its depth, so every variant and run answers
the same haystacks. A cell reads the text before the needle once for all its keys
(demo.run_cell). --jobs worker processes (one ONNX Runtime thread each) share the cells; the
figures do not depend on it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from infini_onnx import demo, passkey
from infini_onnx.modeldir import load_config

VARIANTS = ("fp32", "int8", "int8-static", "int4")
CALIB_SEGMENTS = 64


def haystack_text(path: Path, length: int, depth: float, key: str) -> Path:
    path.write_text("".join(passkey.haystack(length, depth, key)))
    return path


def build_variants(model_dir: Path, workdir: Path, variants: list[str], eval_segments: int) -> dict:
    """Export and quantise; returns {variant: (onnx path, quantize report or None)}."""
    from infini_onnx.export.exporter import export_model
    from infini_onnx.quantize.quantizer import accuracy_report, quantize_model
    from infini_onnx.quantize.targets import resolve

    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = export_model(model_dir, workdir / "fp32.onnx", validate=True)
    segment = load_config(model_dir).segment_len
    calib = haystack_text(workdir / "calib.txt", CALIB_SEGMENTS * segment, 0.3, "24680")
    held_out = haystack_text(workdir / "eval.txt", eval_segments * segment, 0.6, "13579")
    built = {}
    for variant in variants:
        if variant == "fp32":
            built[variant] = (fp32, None)
            continue
        out = workdir / f"{variant}.onnx"
        quantize_model(fp32, out, resolve(variant), calib, CALIB_SEGMENTS)
        report = accuracy_report(fp32, out, eval_segments, held_out, threads=1)
        built[variant] = (out, report)
        for line in report.lines():
            print(f"{variant}: {line}", flush=True)
    return built


def offset_lengths(segment_len: int, sizes: list[int]) -> list[int]:
    """Stream lengths that put the question at every offset 0 .. segment_len - 1 within a
    segment, at each of `sizes` whole segments (the question opens at length - len(QUESTION))."""
    q = len(passkey.QUESTION)
    return [q + o + m * segment_len for m in sizes for o in range(segment_len)]


def demo_seed_cells(seeds: int, jobs: int) -> dict:
    """The demo's default haystack (passkey.DEMO_LENGTH tokens at passkey.DEMO_DEPTH) with the
    key of each `--seed` 0 .. seeds - 1, as `jobs` cells (one per worker)."""
    keys = [passkey.demo_key(s) for s in range(seeds)]
    parts = [keys[i::jobs] for i in range(min(jobs, seeds))]
    return {i: (passkey.DEMO_LENGTH, passkey.DEMO_DEPTH, part) for i, part in enumerate(parts)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="write results.md and .json here")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--depths", default=passkey.SWEEP_DEPTHS, help="table and long")
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,65536,262144")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--long-lengths", default="1048576")
    parser.add_argument("--long-trials", type=int, default=5)
    parser.add_argument("--grid", default="1000:8200:97")
    parser.add_argument("--grid-trials", type=int, default=1)
    parser.add_argument("--grid-depths", default=passkey.GRID_DEPTHS, help="grid and offsets")
    parser.add_argument(
        "--offset-segments",
        default="16,64,256",
        help="the question at every offset in a segment, after this many whole segments",
    )
    parser.add_argument("--offset-trials", type=int, default=1, help="per depth, 0 to skip")
    parser.add_argument(
        "--demo-seeds", type=int, default=20, help="the demo's default run for seeds 0 .. N-1"
    )
    parser.add_argument("--include", type=Path, default=None, help="an earlier results.json")
    parser.add_argument("--eval-segments", type=int, default=512, help="quantize report stream")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    variants = args.variants.split(",")
    built = build_variants(args.model_dir, args.workdir, variants, args.eval_segments)
    segment_len = load_config(args.model_dir).segment_len
    depths = demo.parse_depths(args.depths)
    grid_depths = demo.parse_depths(args.grid_depths)
    offset_sizes = demo.parse_lengths(args.offset_segments, None)
    plans = [
        ("table", demo.parse_lengths(args.lengths, None), depths, args.trials),
        ("long", demo.parse_lengths(args.long_lengths, None), depths, args.long_trials),
        ("grid", demo.parse_lengths(None, args.grid), grid_depths, args.grid_trials),
        ("offsets", offset_lengths(segment_len, offset_sizes), grid_depths, args.offset_trials),
    ]
    results: dict = {"command": {k: str(v) for k, v in vars(args).items()}, "variants": {}}
    if args.include:
        results["variants"] = json.loads(args.include.read_text())["variants"]
    for variant, (path, report) in built.items():
        entry: dict = {"quantize_report": json.loads(report.to_json()) if report else None}
        for name, lengths, where, trials in plans:
            if not trials:
                continue
            print(f"--- {variant}: {name} ({len(lengths)} lengths, {trials} trials per cell)")
            began = time.perf_counter()
            table = demo.sweep(path, lengths, where, trials, args.seed, args.jobs)
            entry[name] = {
                "trials": trials,
                "seconds": time.perf_counter() - began,
                "accuracy": {str(n): r for n, r in table.items()},
            }
            print(demo.format_table(table, trials), flush=True)
        if args.demo_seeds:
            print(f"--- {variant}: the demo's default run, --seed 0 to {args.demo_seeds - 1}")
            began = time.perf_counter()
            hits = demo.run_cells(path, demo_seed_cells(args.demo_seeds, args.jobs), args.jobs)
            right = sum(hits.values())
            entry["demo_seeds"] = {
                "seeds": args.demo_seeds,
                "right": right,
                "seconds": time.perf_counter() - began,
            }
            print(f"{right} of {args.demo_seeds} seeds right", flush=True)
        results["variants"][variant] = entry
    results["seconds"] = time.perf_counter() - start
    markdown = to_markdown(results)
    print(markdown)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "results.md").write_text(markdown)


def to_markdown(results: dict) -> str:
    """The quantisation report, each variant's table per cell, the grids' and offsets' misses,
    the demo's seeds, and the largest difference between variants in any cell they share."""
    variants = results["variants"]
    lines = ["## Quantisation report on a held-out haystack stream", ""]
    lines += [
        "| variant | top-1 agreement | final memory error | size vs fp32 |",
        "|---|---|---|---|",
    ]
    for variant, entry in variants.items():
        r = entry["quantize_report"]
        if r:
            a = r["accuracy"]
            lines.append(
                f"| {variant} | {a['top1_agreement']:.2%} | {a['final_memory_rel_error']:.3%} "
                f"| {r['size_ratio']:.3f}x |"
            )
    for variant, entry in variants.items():
        for name in ("table", "long"):
            if name in entry:
                table = {int(n): row for n, row in entry[name]["accuracy"].items()}
                lines += [
                    "",
                    f"## {variant}: {name}",
                    "",
                    demo.format_table(table, entry[name]["trials"]),
                ]
        for name in ("grid", "offsets"):
            if name in entry:
                table = {int(n): row for n, row in entry[name]["accuracy"].items()}
                cells = [x for row in table.values() for x in row.values()]
                right = sum(x == 1.0 for x in cells)
                missed = [f"{n:,} {d}" for n, row in table.items() for d, x in row.items() if x < 1]
                lines += [
                    "",
                    f"## {variant}: {name}",
                    "",
                    f"{right} of {len(cells)} cells right ({right / len(cells):.1%}), "
                    f"{len(table)} lengths x {len(cells) // len(table)} depths, "
                    f"{entry[name]['trials']} trial per cell; missed: {', '.join(missed) or '-'}.",
                ]
        if "demo_seeds" in entry:
            seeds = entry["demo_seeds"]
            lines += [
                "",
                f"## {variant}: the demo's default run",
                "",
                f"{seeds['right']} of {seeds['seeds']} seeds (0 to {seeds['seeds'] - 1}) right.",
            ]
    lines += ["", "## Variants against each other", ""] + compare_variants(variants)
    lines += ["", f"Total time {results['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def compare_variants(variants: dict) -> list[str]:
    """Per variant pair: the largest difference in points over the table and long cells both
    have (same keys: demo.cell_keys)."""
    lines = []
    names = list(variants)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            worst, cells = 0.0, 0
            for plan in ("table", "long"):
                rows_a = variants[a].get(plan, {}).get("accuracy", {})
                rows_b = variants[b].get(plan, {}).get("accuracy", {})
                for n in set(rows_a) & set(rows_b):
                    for d in set(rows_a[n]) & set(rows_b[n]):
                        worst = max(worst, abs(rows_a[n][d] - rows_b[n][d]) * 100)
                        cells += 1
            if cells:
                lines.append(f"- {a} vs {b}: at most {worst:.0f} points apart over {cells} cells")
    return lines or ["- (one variant)"]


if __name__ == "__main__":
    main()

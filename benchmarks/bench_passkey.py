"""Pass-key retrieval of every quantised variant of a model directory, through ONNX Runtime (CPU).

    python benchmarks/bench_passkey.py examples/models/passkey-tiny --workdir /tmp/bp --jobs 16

Exports the model (fp32), quantises it to int8, int8-static and int4 (int8-static calibrated on
a haystack stream), then prints and writes (--out DIR: results.md, results.json):
- the quantisation report of each variant on the model's own kind of text (a held-out haystack
  stream): top-1 agreement with fp32 and the final memory error;
- pass-key accuracy per length and depth (--lengths with --trials per cell, --long-lengths with
  --long-trials), and per length of a fine grid (--grid, --grid-trials per depth);
- each variant's accuracy per length against fp32's, in points.

The keys depend only on --seed, so every variant answers the same haystacks. --jobs worker
processes (one ONNX Runtime thread each) share the trials; the figures do not depend on it.
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="write results.md and .json here")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--lengths", default="4096,16384,65536,262144")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--long-lengths", default="1048576")
    parser.add_argument("--long-trials", type=int, default=5)
    parser.add_argument("--grid", default="1000:8200:97")
    parser.add_argument("--grid-trials", type=int, default=1)
    parser.add_argument("--eval-segments", type=int, default=512, help="quantize report stream")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    variants = args.variants.split(",")
    built = build_variants(args.model_dir, args.workdir, variants, args.eval_segments)
    plans = [
        ("table", demo.parse_lengths(args.lengths, None), args.trials),
        ("long", demo.parse_lengths(args.long_lengths, None), args.long_trials),
        ("grid", demo.parse_lengths(None, args.grid), args.grid_trials),
    ]
    results: dict = {"command": {k: str(v) for k, v in vars(args).items()}, "variants": {}}
    for variant, (path, report) in built.items():
        entry: dict = {"quantize_report": json.loads(report.to_json()) if report else None}
        for name, lengths, trials in plans:
            if not trials:
                continue
            print(f"--- {variant}: {name} ({len(lengths)} lengths, {trials} trials per cell)")
            table = demo.sweep(path, lengths, demo.DEPTHS, trials, args.seed, args.jobs)
            entry[name] = {"trials": trials, "accuracy": {str(n): r for n, r in table.items()}}
            print(demo.format_table(table, trials), flush=True)
        results["variants"][variant] = entry
    results["seconds"] = time.perf_counter() - start
    markdown = to_markdown(results)
    print(markdown)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "results.md").write_text(markdown)


def to_markdown(results: dict) -> str:
    """The quantisation report and the per-length comparison against fp32."""
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
    for name in ("table", "long", "grid"):
        rows = {v: e[name] for v, e in variants.items() if name in e}
        if not rows:
            continue
        lengths = list(next(iter(rows.values()))["accuracy"])
        trials = next(iter(rows.values()))["trials"]
        lines += ["", f"## Pass-key accuracy ({name}: mean over depths, {trials} trials per cell)"]
        if name == "grid":
            lines += [
                "",
                "| variant | lengths | at 100% | worst length | below 100% |",
                "|---|---|---|---|---|",
            ]
            for variant, entry in rows.items():
                table = {int(n): r for n, r in entry["accuracy"].items()}
                missed, worst = demo.misses(table)
                lines.append(
                    f"| {variant} | {len(table)} | {len(table) - len(missed)} "
                    f"| {worst:,} ({demo.mean_accuracy(table[worst]):.0%}) "
                    f"| {', '.join(f'{n:,}' for n in missed) or '-'} |"
                )
            continue
        lines += ["", "| variant | " + " | ".join(lengths) + " |", "|---|" + "---|" * len(lengths)]
        for variant, entry in rows.items():
            cells = []
            for n in lengths:
                mean = demo.mean_accuracy(entry["accuracy"][n])
                cell = f"{mean:.0%}"
                if variant != "fp32" and "fp32" in rows:
                    cell += (
                        f" ({(mean - demo.mean_accuracy(rows['fp32']['accuracy'][n])) * 100:+.0f})"
                    )
                cells.append(cell)
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines += ["", "Per depth (start / middle / end):", ""]
        for variant, entry in rows.items():
            per = "; ".join(
                f"{n}: " + "/".join(f"{x:.0%}" for x in entry["accuracy"][n].values())
                for n in lengths
            )
            lines.append(f"- {variant}: {per}")
    lines += ["", f"Total time {results['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

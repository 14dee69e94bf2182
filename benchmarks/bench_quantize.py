"""Quantised variants of the small preset: file sizes, accuracy, ingest speed, long streams.

    python benchmarks/bench_quantize.py [--workdir DIR] [--train-steps N] [--json PATH]

Builds a `small` model directory (random init; --train-steps N first trains it briefly on
generated English-like text so that its logits have structure), exports it, quantises it to
int8, int8-static, int4 and fp16, and prints every figure the quantize issue asks for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from infini_onnx.quantize.graph import config_of, load_step_graph
from infini_onnx.quantize.quantizer import accuracy_report, quantize_model
from infini_onnx.quantize.report import compare
from infini_onnx.quantize.stream import open_model, segments
from infini_onnx.quantize.targets import resolve
from infini_onnx.quantize.text import token_stream

TRAIN_SEED, THROUGHPUT_SEED, LONG_SEED = 11, 12, 13


def build_model(workdir: Path, preset: str, train_steps: int) -> Path:
    """init (+ a short training run) + export; returns the fp32 .onnx."""
    from infini_onnx.export.exporter import export_model
    from infini_onnx.model import init_model_dir

    model_dir = workdir / preset
    model = init_model_dir(model_dir, preset, seed=0)
    if train_steps:
        train_briefly(model, model_dir, train_steps)
    return export_model(model_dir, workdir / "fp32.onnx")


def train_briefly(model, model_dir: Path, steps: int) -> None:
    """AdamW on two-segment windows of generated text (memory carried across the boundary)."""
    import torch
    import torch.nn.functional as F

    from infini_onnx.model.io import save_pretrained

    c = model.config
    meta = {}  # byte-level ids, as the preset's tokenizer gives for ASCII text
    tokens = token_stream(meta, c.to_dict(), 64, TRAIN_SEED)
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        start = rng.integers(0, tokens.size - 2 * c.segment_len - 1)
        ids = torch.from_numpy(tokens[start : start + 2 * c.segment_len + 1])[None]
        logits, _ = model(ids[:, :-1])
        loss = F.cross_entropy(logits[0], ids[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            print(f"  train step {step}: loss {loss.item():.3f}", flush=True)
    model.eval()
    save_pretrained(model, model_dir, tokenizer_json=(model_dir / "tokenizer.json").read_text())


def ingest_times(paths: list[Path], tokens: np.ndarray, threads: int) -> list[float]:
    """Median seconds per whole-segment call (new stream, all logits) of each model, calls
    interleaved model by model so that load from other processes hits all of them alike."""
    models = [open_model(p, threads) for p in paths]
    times: list[list[float]] = [[] for _ in paths]
    for ids in segments(tokens, models[0].config.segment_len):
        for model, bucket in zip(models, times):
            state = model.new_state()
            t0 = time.perf_counter()
            model.step(state, ids, num_logits=ids.size)
            bucket.append(time.perf_counter() - t0)
    return [statistics.median(t[1:]) for t in times]  # the first call warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--eval-segments", type=int, default=64)
    parser.add_argument("--long-segments", type=int, default=500)
    parser.add_argument("--speed-segments", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    results: dict = {"preset": args.preset, "train_steps": args.train_steps}

    fp32 = build_model(workdir, args.preset, args.train_steps)
    meta = load_step_graph(fp32)[1]
    config = config_of(meta)
    paths = {}
    for mode in ("int8", "int8-static", "int4", "fp16"):
        t0 = time.perf_counter()
        paths[mode] = quantize_model(fp32, workdir / f"{mode}.onnx", resolve(mode))
        print(f"quantised {mode} in {time.perf_counter() - t0:.1f}s", flush=True)

    print(f"\n== accuracy on a held-out stream of {args.eval_segments} segments ==")
    for mode, path in paths.items():
        report = accuracy_report(fp32, path, args.eval_segments, threads=args.threads)
        for line in report.lines():
            print(line)
        results[mode] = json.loads(report.to_json())

    print(f"\n== ingest throughput, ORT CPU, {args.threads} thread(s), same run ==")
    tokens = token_stream(meta, config, args.speed_segments + 1, THROUGHPUT_SEED)
    t_fp32, t_int8, t_int4 = ingest_times(
        [fp32, paths["int8"], paths["int4"]], tokens, args.threads
    )
    n = config["segment_len"]
    for name, t in (("fp32", t_fp32), ("int8", t_int8), ("int4", t_int4)):
        print(f"{name}: {n / t:,.0f} tokens/s ({t * 1e3:.1f} ms per {n}-token segment)")
    print(f"int8 speed-up over fp32: {t_fp32 / t_int8:.2f}x; int4: {t_fp32 / t_int4:.2f}x")
    results["throughput_tokens_per_s"] = {
        "fp32": n / t_fp32,
        "int8": n / t_int8,
        "int4": n / t_int4,
    }
    results["int8_speedup"] = t_fp32 / t_int8

    print(f"\n== {args.long_segments} segments through int8 ==")
    tokens = token_stream(meta, config, args.long_segments, LONG_SEED)
    long = compare(open_model(fp32, args.threads), open_model(paths["int8"], args.threads), tokens)
    first, last = long.agreement_per_segment[:50], long.agreement_per_segment[-50:]
    print(f"state finite: {long.state_finite}")
    print(f"top-1 agreement, first 50 segments: {np.mean(first):.2%}; last 50: {np.mean(last):.2%}")
    print(
        f"final memory rel. error {long.final_memory_rel_error:.3%}, "
        f"norm {long.final_norm_rel_error:.3%}, mean KL {long.mean_kl:.2e}"
    )
    results["long_int8"] = {
        "segments": long.segments,
        "state_finite": long.state_finite,
        "agreement_first_50": float(np.mean(first)),
        "agreement_last_50": float(np.mean(last)),
        "final_memory_rel_error": long.final_memory_rel_error,
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

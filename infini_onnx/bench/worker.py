"""One measurement in a fresh process: `python -m infini_onnx.bench.worker JOB.json`.

Jobs (JSON): {"kind": "ceiling" | "sweep" | "point" | "batch", "system": {...}, "threads": n,
"out": path, ...}. The parent sets the thread variables of every library in the environment before
this process starts; results are written to `out` as JSON (rewritten after every stream point, so a
run stopped by a timeout still leaves what it measured).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from infini_onnx.atomic import atomic_output
from infini_onnx.bench.stats import summary
from infini_onnx.runtime.progress import peak_rss_bytes, rss_bytes

WARMUP_CHUNKS, WARMUP_DECODE = 2, 4


def build_system(spec: dict, threads: int):
    """The System a job's "system" entry describes."""
    from infini_onnx.bench import systems

    kind = spec["type"]
    if kind == "ort":
        system = systems.OrtInfini(Path(spec["onnx"]), threads)
    elif kind == "torch":
        system = systems.TorchReference(Path(spec["model_dir"]), threads)
    elif kind == "itp":
        system = systems.InfiniTransformerPytorch(spec["kwargs"], spec["chunk"], threads)
    elif kind == "genai":
        system = systems.GenAI(Path(spec["dir"]), threads, spec["max_length"], spec["chunk"])
    elif kind == "llama.cpp":
        system = systems.LlamaCpp(Path(spec["gguf"]), threads, spec["max_length"], spec["chunk"])
    elif kind in ("llama", "optimum"):
        from infini_onnx.modeldir import load_config

        config = load_config(spec["model_dir"])
        full = systems.OrtFullAttention if kind == "llama" else systems.OptimumLlama
        system = full(Path(spec["onnx"]), config, threads)
    else:
        raise ValueError(f"unknown system type {kind!r}")
    system.params = spec.get("params") or system.params
    return system


def fresh(spec: dict, threads: int, vocab: int):
    """A system after warm-up (ingest and decode, then back to an empty stream)."""
    system = build_system(spec, threads)
    rng = np.random.default_rng(99)
    for _ in range(WARMUP_CHUNKS):
        system.ingest(rng.integers(0, vocab, system.chunk))
    system.decode(WARMUP_DECODE)
    system.reset()
    return system


def write(out: Path, result: dict) -> None:
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))


def sweep(job: dict, out: Path) -> None:
    """Ingest one stream up to each checkpoint in turn; at each, record ingest speed, peak RSS
    and decode latency. Stops after the last checkpoint, or when the next one would pass the
    time budget or the RSS cap."""
    rss_before = rss_bytes()
    system = fresh(job["system"], job["threads"], job["vocab"])
    checkpoints = sorted(job["checkpoints"])
    result = {
        "params": system.params,
        "rss_before_load": rss_before,
        "rss_after_load": rss_bytes(),
        "points": [],
        "stop": f"reached {checkpoints[-1]:,} tokens",
    }
    budget = f"time budget ({job['budget_s']:g} s of ingest)"
    rng = np.random.default_rng(job.get("seed", 0))
    tokens, elapsed = 0, 0.0
    for target in checkpoints:
        window = []
        while tokens < target and elapsed <= job["budget_s"] and rss_bytes() <= job["rss_cap"]:
            ids = rng.integers(0, job["vocab"], system.chunk)
            t0 = time.perf_counter()
            system.ingest(ids)
            window.append(time.perf_counter() - t0)
            elapsed += window[-1]
            tokens += system.chunk
        if tokens < target:
            over = elapsed > job["budget_s"]
            result["stop"] = budget if over else f"RSS cap ({job['rss_cap'] / 2**30:.1f} GiB)"
            break
        decode = system.decode(job["decode_tokens"])
        p = {
            "tokens": tokens,
            "ingest_s": elapsed,
            "cumulative_tok_s": tokens / elapsed,
            "window_tok_s": summary([system.chunk / t for t in window]),
            "decode_ms": summary([t * 1e3 for t in decode]),
            "peak_rss": peak_rss_bytes(),
        }
        if job["system"]["type"] == "ort":
            # The second of two steps, each after a fork fed N - 1 or N - 2 tokens: the step at
            # a segment's first position (of the next segment) or at its last, warmed alike.
            N = system.chunk
            ends = {after: [system.decode(2, after)[1] * 1e3 for _ in range(9)]
                    for after in (N - 1, N - 2)}  # fmt: skip
            p["decode_segment_ms"] = {"first": summary(ends[N - 1]), "last": summary(ends[N - 2])}
        result["points"].append(p)
        write(out, result)
        print(
            f"    {tokens:>9,} tokens: {p['window_tok_s']['median']:>7,.0f} tok/s, "
            f"decode {p['decode_ms']['median']:6.2f} ms, peak RSS {p['peak_rss'] / 2**20:,.0f} MB",
            flush=True,
        )
        # Stop early when the next point would pass the budget at the last window's speed.
        per_token = sum(window) / (len(window) * system.chunk)
        if target != checkpoints[-1]:
            following = checkpoints[checkpoints.index(target) + 1]
            if elapsed + (following - tokens) * per_token > job["budget_s"]:
                result["stop"] = budget
                break
    write(out, result)


def point(job: dict, out: Path) -> None:
    """Decode latency and peak RSS of the full-attention baseline at a cache of `tokens`
    positions filled with random values (positions beyond what the time budget ingests)."""
    system = fresh(job["system"], job["threads"], job["vocab"])
    system.fill(job["tokens"])
    decode = system.decode(job["decode_tokens"])
    write(
        out,
        {
            "tokens": job["tokens"],
            "decode_ms": summary([t * 1e3 for t in decode]),
            "peak_rss": peak_rss_bytes(),
            "synthetic": True,
        },
    )


def ceiling(job: dict, out: Path) -> None:
    """The matmul ceiling and the bandwidth probe of each weights size in job["probe_bytes"]."""
    from infini_onnx.bench.machine import bandwidth_probe, matmul_gflops

    result = matmul_gflops(job["threads"])
    result["bandwidth"] = bandwidth_probe(job["threads"], job.get("probe_bytes", {}))
    write(out, result)


def batch(job: dict, out: Path) -> None:
    """Batched decode of an infini-onnx graph: step times for each number of streams."""
    from infini_onnx.bench.systems import batch_decode

    onnx_path = Path(job["system"]["onnx"])
    runs = []
    for streams in job["streams"]:
        run = batch_decode(onnx_path, job["threads"], streams, job["decode_tokens"], job["vocab"])
        run["step_ms"] = summary(run["step_ms"])
        run["tok_s"] = streams / run["step_ms"]["median"] * 1e3
        runs.append(run)
        write(out, {"batches": runs})
        print(f"    {streams:>3} streams: {run['tok_s']:,.0f} tok/s", flush=True)


def decode(job: dict, out: Path) -> None:
    """Decode step times at each context length (bench/decode.py), ingest speed, and for
    infini-onnx the batched decode of each number of streams."""
    from infini_onnx.bench.systems import batch_decode

    spec = dict(job["system"])
    contexts = sorted(job["contexts"])
    peer = spec["type"] != "ort"
    if peer:  # a full-attention cache sized for the longest context it can reach
        longest = min(contexts[-1], job["peer_max_context"], job["max_cache_tokens"])
        spec.update(max_length=longest + job["decode_tokens"] + 64, chunk=512)
    system = fresh(spec, job["threads"], 256)
    rng = np.random.default_rng(0)
    result = {"points": [], "stop": f"reached {contexts[-1]:,} tokens"}
    tokens, ingest_s = 0, 0.0
    for context in contexts:
        real = context if peer else min(context, job["real_tokens"])
        if peer and real + job["decode_tokens"] > spec["max_length"]:
            result["stop"] = f"cache sized for {longest:,} tokens (peer_max_context, memory cap)"
            break
        if peer and tokens and ingest_s / tokens * (real - tokens) + ingest_s > job["budget_s"]:
            result["stop"] = f"prefill budget ({job['budget_s']:g} s)"
            break
        while tokens < real:
            ids = rng.integers(0, 256, min(system.chunk, real - tokens))
            t0 = time.perf_counter()
            system.ingest(ids)
            ingest_s += time.perf_counter() - t0
            tokens += len(ids)
        if not peer and context > tokens:
            system.jump(context - tokens)
        times = system.decode(job["decode_tokens"])
        if not peer and context > tokens:
            system.jump(tokens - context)
        p = {
            "tokens": context,
            "real_tokens": tokens,
            "decode_ms": summary([t * 1e3 for t in times]),
            "ingest_tok_s": tokens / ingest_s,
            "peak_rss": peak_rss_bytes(),
        }
        result["points"].append(p)
        write(out, result)
        print(f"    {context:>9,} tokens: decode {p['decode_ms']['median']:6.2f} ms", flush=True)
    if job["batches"]:
        runs = []
        for streams in job["batches"]:
            run = batch_decode(Path(spec["onnx"]), job["threads"], streams, 8, 256, prefix=64)
            runs.append({"streams": streams, "step_ms": summary(run["step_ms"])})
        result["batches"] = runs
    write(out, result)


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    kinds = {"sweep": sweep, "point": point, "ceiling": ceiling, "batch": batch, "decode": decode}
    kinds[job["kind"]](job, Path(job["out"]))


if __name__ == "__main__":
    main()

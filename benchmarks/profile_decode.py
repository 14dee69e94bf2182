"""Where a decode step's time goes: ONNX Runtime's profiler over greedy decode steps.

    python benchmarks/profile_decode.py MODEL.onnx [--context 4096] [--steps 20] [--threads 2]

A stream reads `--context` random tokens, then `--steps` greedy decode steps run under
onnxruntime's profiler. Prints the step time with and without the profiler's own cost, the
kernel time per op type, and the largest groups of nodes by (op type, first input's shape): a
ring-sized shape ([B, G, K, d]) marks work that reads the whole window at every step.
The profiler adds a fixed cost per node, so read the shares, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from infini_onnx.runtime import InfiniModel, Stream
from infini_onnx.runtime import device as dev


def step_times(stream: Stream, steps: int) -> list[float]:
    generator = stream.generate(max_new_tokens=steps, temperature=0, stop=())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        next(generator)
        times.append(time.perf_counter() - start)
    return times


def kernel_events(profile: Path, runs: int) -> list[dict]:
    """The node kernel events of the last `runs` model runs of a profile file."""
    events = json.loads(profile.read_text())
    first = [e for e in events if e.get("name") == "model_run"][-runs]["ts"]
    return [
        e
        for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    plain = InfiniModel(args.model, threads=args.threads, quiet=True)
    stream = Stream(plain)
    stream.feed(rng.integers(0, plain.config.vocab_size, args.context))
    unprofiled = statistics.median(step_times(stream, args.steps)) * 1e3
    del plain, stream

    with tempfile.TemporaryDirectory() as tmp:
        options = dev.session_options(args.threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "decode")
        model = InfiniModel(args.model, session_options=options, quiet=True)
        stream = Stream(model)
        stream.feed(rng.integers(0, model.config.vocab_size, args.context))
        profiled = statistics.median(step_times(stream, args.steps)) * 1e3
        profile = Path(model.layout.device.session.end_profiling())
        events = kernel_events(profile, args.steps)

    by_op, nodes, by_shape = Counter(), Counter(), Counter()
    for e in events:
        op, shapes = e["args"]["op_name"], e["args"].get("input_type_shape", [])
        first = next(iter(shapes[0].values())) if shapes else []
        by_op[op] += e["dur"]
        nodes[op] += 1
        by_shape[(op, tuple(first))] += e["dur"]
    total = sum(by_op.values())
    per_step = lambda us: us / args.steps / 1e3  # noqa: E731  (microseconds in all steps -> ms)
    print(
        f"{args.model}: {model.variant}, {args.context:,} tokens of context, {args.steps} steps, "
        f"{dev.check_threads(args.threads) if args.threads else dev.default_threads()} threads"
    )
    print(
        f"decode step: {unprofiled:.2f} ms (no profiler), {profiled:.2f} ms (profiler), "
        f"kernels {per_step(total):.2f} ms, {len(events) // args.steps} nodes per step\n"
    )
    print("| op type | nodes per step | ms per step | share |\n|---|---|---|---|")
    for op, us in by_op.most_common(args.top):
        print(f"| {op} | {nodes[op] // args.steps} | {per_step(us):.2f} | {us / total:.1%} |")
    print("\n| op type | first input's shape | ms per step | share |\n|---|---|---|---|")
    for (op, shape), us in by_shape.most_common(args.top):
        print(f"| {op} | {list(shape)} | {per_step(us):.2f} | {us / total:.1%} |")


if __name__ == "__main__":
    main()

"""Decode latency against the position inside a segment (docs/runtime.md, "Decode cost").

    python benchmarks/decode_positions.py MODEL.onnx [MODEL.onnx ...] [--threads 2]

For each graph: a stream fed one segment plus P tokens (random ids), then greedy decode steps
timed at P = 0, 128, 256 and 496 (16 steps each; median ms). The graphs are interleaved
round by round, so their figures share the machine's conditions.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from infini_onnx.runtime import InfiniModel, Stream

POSITIONS = (0, 128, 256, 496)
STEPS, ROUNDS = 16, 3


def decode_ms(model: InfiniModel, position: int, rng: np.random.Generator) -> list[float]:
    stream = Stream(model)
    vocab = model.config.vocab_size
    stream.feed(rng.integers(0, vocab, model.config.segment_len + position))
    tokens = stream.generate(max_new_tokens=STEPS + 1, temperature=0, stop=())
    next(tokens)  # the first step also feeds nothing new; time the rest
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        next(tokens)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    models = {path: InfiniModel(path, threads=args.threads) for path in args.models}
    rng = np.random.default_rng(0)
    times = {(path, p): [] for path in models for p in POSITIONS}
    for _ in range(ROUNDS):
        for path, model in models.items():
            for p in POSITIONS:
                times[path, p] += decode_ms(model, p, rng)
    print("decode ms per token (median) at position P in the segment")
    print(f"{'model':40s}" + "".join(f"{f'P={p}':>10s}" for p in POSITIONS))
    for path in models:
        cells = "".join(f"{statistics.median(times[path, p]):10.2f}" for p in POSITIONS)
        print(f"{path:40s}{cells}")


if __name__ == "__main__":
    main()

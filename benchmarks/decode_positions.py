"""Decode latency against the position inside a segment (docs/runtime.md, "Decode cost").

    python benchmarks/decode_positions.py MODEL.onnx [MODEL.onnx ...] [--threads 2]

For each graph: a stream fed one segment plus P tokens (random ids), then greedy decode steps
timed at P = 0, N/4, N/2 and N - 1 (16 steps each, timed as `infini bench` does; median ms).
The graphs are interleaved round by round, so their figures share the machine's conditions.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from infini_onnx.bench.systems import OrtInfini

FRACTIONS = (0, 0.25, 0.5, 1)  # of the segment; 1 is its last position, N - 1
STEPS, ROUNDS = 16, 3


def positions(system: OrtInfini) -> list[int]:
    N = system.model.config.segment_len
    return [min(int(f * N), N - 1) for f in FRACTIONS]


def decode_ms(system: OrtInfini, position: int, rng: np.random.Generator) -> list[float]:
    """Decode step times after one segment plus `position` tokens of a new stream."""
    system.reset()
    config = system.model.config
    system.ingest(rng.integers(0, config.vocab_size, config.segment_len))
    return [t * 1e3 for t in system.decode(STEPS, after=position)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    systems = {path: OrtInfini(Path(path), args.threads) for path in args.models}
    rng = np.random.default_rng(0)
    times = {(path, p): [] for path, system in systems.items() for p in positions(system)}
    for _ in range(ROUNDS):
        for path, system in systems.items():
            for p in positions(system):
                times[path, p] += decode_ms(system, p, rng)
    print("decode ms per token (median) at position P in the segment")
    for path, system in systems.items():
        cells = "  ".join(
            f"P={p}: {statistics.median(times[path, p]):.2f}" for p in positions(system)
        )
        print(f"{path:40s} {cells}")


if __name__ == "__main__":
    main()

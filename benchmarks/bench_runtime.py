"""Runtime benchmarks (issue 4's "Done when" figures). Needs the dev install (exports models).

1. Flat memory and constant decode cost: TOKENS (default 1,000,000) tokens through the tiny
   model; peak RSS after 50K and after all of them; median decode latency after 1K and after all.
2. Small preset (~12.8M parameters) against the PyTorch reference at the same thread count:
   decode latency per token and ingest throughput (whole segments, last-position logits only).

    python benchmarks/bench_runtime.py [--tokens N] [--threads N] [--skip-flat] [--skip-small]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from infini_onnx.export.exporter import export_model
from infini_onnx.model import from_pretrained, init_model_dir
from infini_onnx.runtime import InfiniModel, Stream
from infini_onnx.runtime.graph import default_threads
from infini_onnx.runtime.progress import peak_rss_bytes

CHUNK = 8192
MB = 2**20


def build(workdir: Path, preset: str) -> tuple[Path, Path]:
    model_dir, onnx_path = workdir / preset, workdir / f"{preset}.onnx"
    if not onnx_path.exists():
        init_model_dir(model_dir, preset, seed=0)
        export_model(model_dir, onnx_path)
    return model_dir, onnx_path


def random_chunks(total: int, vocab: int, seed: int):
    rng = np.random.default_rng(seed)
    for start in range(0, total, CHUNK):
        yield rng.integers(0, vocab, min(CHUNK, total - start))


def decode_latencies(stream: Stream, tokens: int) -> list[float]:
    """Seconds per generated token (one graph call each), on a fork of the stream."""
    generator = stream.fork().generate(max_new_tokens=tokens, temperature=0, stop=())
    times = []
    while True:
        t0 = time.perf_counter()
        if next(generator, None) is None:
            return times
        times.append(time.perf_counter() - t0)


def bench_flat(workdir: Path, total: int, threads: int) -> None:
    _, onnx_path = build(workdir, "tiny")
    model = InfiniModel(onnx_path, threads=threads)
    decode_tokens = 4 * model.config.segment_len * 4  # every position of the segment, 4 times
    print(f"== flat memory: {total:,} tokens through tiny ({onnx_path.name}, {threads} threads)")
    stream = model.stream()
    stream.feed(random_chunks(1000, model.config.vocab_size, seed=1))
    early = statistics.median(decode_latencies(stream, decode_tokens))
    stream.feed(random_chunks(50_000 - 1000, model.config.vocab_size, seed=2))
    peak_50k = peak_rss_bytes()
    t0 = time.perf_counter()
    stream.feed(random_chunks(total - 50_000, model.config.vocab_size, seed=3))
    ingest = (total - 50_000) / (time.perf_counter() - t0)
    peak_end = peak_rss_bytes()
    late = statistics.median(decode_latencies(stream, decode_tokens))
    print(f"tokens streamed: {stream.tokens_seen:,} (ingest {ingest:,.0f} tokens/s)")
    print(f"peak RSS after 50K: {peak_50k / MB:.2f} MB")
    print(f"peak RSS after {total / 1e6:g}M: {peak_end / MB:.2f} MB")
    print(f"peak RSS delta: {(peak_end - peak_50k) / MB:.2f} MB (target <= 2 MB)")
    print(f"median decode latency after 1K: {early * 1e3:.3f} ms/token")
    print(f"median decode latency after {total / 1e6:g}M: {late * 1e3:.3f} ms/token")
    print(f"ratio: {late / early:.3f} (target within 10%: 0.90-1.10)")


class Reference:
    """The PyTorch reference run the way the runtime runs: one step call per segment."""

    def __init__(self, model_dir: Path):
        self.model = from_pretrained(model_dir).eval()
        self.state = self.model.new_state()

    @torch.inference_mode()
    def ingest(self, ids: np.ndarray) -> None:
        """Whole segments (the stream starts at a segment boundary), last logits only."""
        _, self.state = self.model(torch.from_numpy(ids[None]), self.state, last_logits_only=True)

    @torch.inference_mode()
    def decode_latencies(self, tokens: int) -> list[float]:
        state, token, times = self.state, self.model.config.bos_token_id, []
        for _ in range(tokens):
            t0 = time.perf_counter()
            logits, state = self.model(torch.tensor([[token]]), state)
            token = int(logits[0, -1].argmax())
            times.append(time.perf_counter() - t0)
        return times


def bench_small(workdir: Path, threads: int, rounds: int = 3) -> None:
    torch.set_num_threads(threads)
    model_dir, onnx_path = build(workdir, "small")
    model = InfiniModel(onnx_path, threads=threads)
    reference = Reference(model_dir)
    c = model.config
    params = sum(p.numel() for p in reference.model.parameters())
    print(
        f"== small preset ({params / 1e6:.1f}M parameters, segment {c.segment_len}), "
        f"{threads} threads, ORT vs PyTorch {torch.__version__}"
    )
    ids = np.random.default_rng(0).integers(0, c.vocab_size, 4 * c.segment_len)
    decode_tokens = c.segment_len // 2
    ort_ingest, ref_ingest, ort_decode, ref_decode = [], [], [], []
    for _ in range(rounds):  # interleaved, so that load from other processes hits both
        stream = model.stream()
        t0 = time.perf_counter()
        stream.feed(ids)
        ort_ingest.append(len(ids) / (time.perf_counter() - t0))
        reference.state = reference.model.new_state()
        t0 = time.perf_counter()
        reference.ingest(ids)
        ref_ingest.append(len(ids) / (time.perf_counter() - t0))
        ort_decode += decode_latencies(stream, decode_tokens)
        ref_decode += reference.decode_latencies(decode_tokens)
    ort_ms, ref_ms = statistics.median(ort_decode) * 1e3, statistics.median(ref_decode) * 1e3
    ort_tps, ref_tps = max(ort_ingest), max(ref_ingest)
    print(
        f"decode latency: ORT {ort_ms:.3f} ms/token, PyTorch {ref_ms:.3f} ms/token, "
        f"ratio {ort_ms / ref_ms:.2f}x (target <= 0.5x)"
    )
    print(
        f"ingest throughput: ORT {ort_tps:,.0f} tokens/s, PyTorch {ref_tps:,.0f} tokens/s, "
        f"ratio {ort_tps / ref_tps:.2f}x (target >= 1.0x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the models here.")
    parser.add_argument("--skip-flat", action="store_true")
    parser.add_argument("--skip-small", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if not args.skip_flat:
            bench_flat(workdir, args.tokens, args.threads)
        if not args.skip_small:
            bench_small(workdir, args.threads)


if __name__ == "__main__":
    main()

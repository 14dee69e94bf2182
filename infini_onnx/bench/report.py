"""What a run's measurements add up to: headline speeds, compute efficiency, the targets."""

from __future__ import annotations

import statistics

from infini_onnx.bench.flops import ingest_flops_per_token, matmul_params
from infini_onnx.config import InfiniConfig

HEADLINE_TOKENS = 16 * 1024  # ingest speeds are compared over the calls ending here
MB = 2**20
FLAT_DECODE = 1.10  # "flat": decode latency at the longest stream / at the first
FLAT_RSS_MB = 5.0  # "flat": peak RSS growth from the first to the longest stream
SEGMENT_FLAT = 0.10  # decode at a segment's last position within 10% of its first
# The targets (benchmarks/README.md, "Targets").
INT8_VS_REFERENCE, VS_ITP, INT4_VS_FP32, EFFICIENCY = 3.5, 2.0, 1.3, 0.70
DECODE_VS_REFERENCE = 0.1  # int8 decode ms / the PyTorch reference's, at every length
PROBE_LIMITS = {"int8": 2.0, "fp32": 1.5}  # decode ms / the bandwidth probe of its weights
BATCH_STREAMS, BATCH_GAIN = 32, 8.0  # tokens/s of 32 streams as one batch / of one stream
FP32, INT8, INT4 = "infini-onnx fp32", "infini-onnx int8", "infini-onnx int4"
REFERENCE, ITP = "PyTorch reference", "infini-transformer-pytorch"
LLAMA = "full-attention Llama (ORT)"
OPTIMUM = "full-attention Llama (optimum)"
FULL_ATTENTION = (LLAMA, OPTIMUM)
SAME_MODEL = (FP32, INT8, INT4, REFERENCE)  # run the infini-llama model: its FLOP count applies


def headline_point(points: list[dict]) -> dict | None:
    """The point at HEADLINE_TOKENS, or the last one when the stream stopped before it."""
    reached = [p for p in points if p["tokens"] <= HEADLINE_TOKENS]
    return reached[-1] if reached else None


def derive(
    run: dict,
    config: InfiniConfig,
    params: int,
    ceilings: list[dict],
    systems: dict[str, dict],
    notes: list[str],
) -> dict:
    """Everything results.json holds: the measurements plus what is computed from them."""
    flops = ingest_flops_per_token(config)
    ceiling = max(max(c["onnxruntime"]["median"], c["numpy"]["median"]) for c in ceilings)
    for name, s in systems.items():
        probes = [c["bandwidth"][name] for c in ceilings if name in c.get("bandwidth", {})]
        if probes:  # the faster of the two probes (before and after): the stricter limit
            s["probe"] = min(probes, key=lambda p: p["ms"]["median"])
    for name, s in systems.items():
        p = headline_point(s.get("points", []))
        if p is None:
            continue
        s["headline"] = {"tokens": p["tokens"], "tok_s": p["window_tok_s"]}
        if name in SAME_MODEL:
            gflops = {k: v * flops / 1e9 for k, v in p["window_tok_s"].items() if k != "n"}
            s["headline"].update(gflops=gflops, efficiency=gflops["median"] / ceiling)
    results = {
        "run": run,
        "model": {
            "preset": "small",
            "config": config.to_dict(),
            "params": params,
            "matmul_params": matmul_params(config),
            "ingest_flops_per_token": flops,
        },
        "ceiling": {"gflops": ceiling, "measurements": ceilings},
        "systems": systems,
        "notes": notes,
    }
    results["targets"] = targets(systems)
    return results


def _median(systems: dict, name: str) -> float | None:
    h = systems.get(name, {}).get("headline")
    return h["tok_s"]["median"] if h else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def growth(s: dict) -> tuple[float, float, int] | None:
    """(decode latency last / first, peak RSS growth in MB, last length) over a system's
    stream, its random-filled full-attention points included."""
    points = [p for p in s.get("points", []) + s.get("synthetic", []) if "decode_ms" in p]
    if len(points) < 2:
        return None
    first, last = points[0], points[-1]
    return (
        last["decode_ms"]["median"] / first["decode_ms"]["median"],
        (last["peak_rss"] - first["peak_rss"]) / MB,
        last["tokens"],
    )


def _target(name: str, value: float | None, met: bool, measured: str) -> dict:
    return {
        "target": name,
        "value": value,
        "met": None if value is None else met,
        "measured": measured,
    }


def segment_ends(s: dict) -> tuple[float, float] | None:
    """Median decode ms at a segment's first and last position, over all stream lengths."""
    points = [p["decode_segment_ms"] for p in s.get("points", []) if "decode_segment_ms" in p]
    if not points:
        return None
    return tuple(statistics.median(p[end]["median"] for p in points) for end in ("first", "last"))


def decode_by_length(s: dict) -> dict[int, float]:
    """Median decode ms at each stream length measured (random-filled points excluded)."""
    return {p["tokens"]: p["decode_ms"]["median"] for p in s.get("points", [])}


def batch_gain(s: dict, streams: int) -> float | None:
    """Tokens/s of `streams` streams decoding as one batch / of one stream."""
    runs = {b["streams"]: b["tok_s"] for b in s.get("batches", [])}
    return _ratio(runs.get(streams), runs.get(1))


def targets(systems: dict[str, dict]) -> list[dict]:
    """The issue's targets as measured; `met` is None where a figure is missing."""
    rows = []
    ingest = lambda name: _median(systems, name)  # noqa: E731
    for what, a, b, limit in (
        ("int8 ingest >= {:g}x the PyTorch reference", INT8, REFERENCE, INT8_VS_REFERENCE),
        ("int8 ingest >= {:g}x infini-transformer-pytorch", INT8, ITP, VS_ITP),
        ("int4 ingest >= {:g}x fp32", INT4, FP32, INT4_VS_FP32),
    ):
        r = _ratio(ingest(a), ingest(b))
        rows.append(
            _target(what.format(limit), r, bool(r and r >= limit), f"{r:.2f}x" if r else "n/a")
        )
    e = systems.get(FP32, {}).get("headline", {}).get("efficiency")
    rows.append(
        _target(
            f"fp32 ingest >= {EFFICIENCY:.0%} of the matmul ceiling",
            e,
            bool(e and e >= EFFICIENCY),
            f"{e:.0%}" if e else "n/a",
        )
    )
    int8, reference = (decode_by_length(systems.get(n, {})) for n in (INT8, REFERENCE))
    common = sorted(set(int8) & set(reference))
    r = max((int8[n] / reference[n] for n in common), default=None)
    rows.append(
        _target(
            f"int8 decode <= {DECODE_VS_REFERENCE:g}x the PyTorch reference's at every stream "
            "length",
            r,
            bool(r and r <= DECODE_VS_REFERENCE),
            f"at most {r:.2f}x ({common[0]:,} to {common[-1]:,} tokens, the reference's lengths)"
            if r
            else "n/a",
        )
    )
    for variant, limit in PROBE_LIMITS.items():
        s = systems.get(f"infini-onnx {variant}", {})
        decode, probe = decode_by_length(s), s.get("probe")
        typical = statistics.median(decode.values()) if decode else None  # over the lengths
        r = _ratio(typical, probe and probe["ms"]["median"])
        rows.append(
            _target(
                f"{variant} decode within {limit:g}x of its bandwidth probe",
                r,
                bool(r and r <= limit),
                f"{r:.2f}x (decode {typical:.2f} ms, median over lengths; probe "
                f"{probe['ms']['median']:.2f} ms)"
                if r
                else "n/a",
            )
        )
    for name in (FP32, INT8, INT4):
        g = batch_gain(systems.get(name, {}), BATCH_STREAMS)
        rows.append(
            _target(
                f"{name}: {BATCH_STREAMS} streams as one batch >= {BATCH_GAIN:g}x the "
                "tokens/s of one",
                g,
                bool(g and g >= BATCH_GAIN),
                f"{g:.2f}x" if g else "n/a",
            )
        )
    for name in (FP32, INT8, INT4):
        g = growth(systems.get(name, {}))
        if g is None:
            continue
        decode, rss, last = g
        rows.append(
            _target(
                f"{name}: decode latency flat to {last:,} tokens (<= {FLAT_DECODE:.2f}x)",
                decode,
                decode <= FLAT_DECODE,
                f"{decode:.2f}x",
            )
        )
        rows.append(
            _target(
                f"{name}: peak RSS flat to {last:,} tokens (<= {FLAT_RSS_MB:g} MB growth)",
                rss,
                rss <= FLAT_RSS_MB,
                f"{rss:+.1f} MB",
            )
        )
    for name in (FP32, INT8, INT4):
        ends = segment_ends(systems.get(name, {}))
        if ends is None:
            continue
        first, last = ends
        rows.append(
            _target(
                f"{name}: decode at a segment's last position within "
                f"{SEGMENT_FLAT:.0%} of its first",
                last / first - 1,
                abs(last / first - 1) <= SEGMENT_FLAT,
                f"{first:.2f} / {last:.2f} ms ({last / first - 1:+.1%})",
            )
        )
    for name in FULL_ATTENTION:
        g = growth(systems.get(name, {}))
        if g:
            decode, rss, last = g
            rows.append(
                _target(
                    f"{name}: grows (to {last:,} tokens)",
                    decode,
                    decode > FLAT_DECODE and rss > FLAT_RSS_MB,
                    f"decode {decode:.2f}x, peak RSS {rss:+,.0f} MB",
                )
            )
    return rows

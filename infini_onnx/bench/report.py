"""What a run's measurements add up to: headline speeds, compute efficiency, the targets."""

from __future__ import annotations

from infini_onnx.bench.flops import ingest_flops_per_token, matmul_params
from infini_onnx.config import InfiniConfig

HEADLINE_TOKENS = 16 * 1024  # ingest speeds are compared over the calls ending here
MB = 2**20
FLAT_DECODE = 1.10  # "flat": decode latency at the longest stream / at the first
FLAT_RSS_MB = 5.0  # "flat": peak RSS growth from the first to the longest stream
INT8_VS_REFERENCE, VS_ITP, EFFICIENCY = 2.0, 2.0, 0.60
FP32, INT8, INT4 = "infini-onnx fp32", "infini-onnx int8", "infini-onnx int4"
REFERENCE, ITP = "PyTorch reference", "infini-transformer-pytorch"
LLAMA = "full-attention Llama (ORT)"
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


def targets(systems: dict[str, dict]) -> list[dict]:
    """The issue's targets as measured; `met` is None where a figure is missing."""
    rows = []
    r = _ratio(_median(systems, INT8), _median(systems, REFERENCE))
    rows.append(
        _target(
            "int8 ingest >= 2x the PyTorch reference",
            r,
            bool(r and r >= INT8_VS_REFERENCE),
            f"{r:.2f}x" if r else "n/a",
        )
    )
    r8, r32 = (_ratio(_median(systems, v), _median(systems, ITP)) for v in (INT8, FP32))
    rows.append(
        _target(
            ">= 2x infini-transformer-pytorch tokens/s at equal parameters",
            r8,
            bool(r8 and r8 >= VS_ITP),
            f"int8 {r8:.2f}x, fp32 {r32:.2f}x" if r8 and r32 else "n/a (not measured)",
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
    g = growth(systems.get(LLAMA, {}))
    if g:
        decode, rss, last = g
        rows.append(
            _target(
                f"full attention grows (to {last:,} tokens)",
                decode,
                decode > FLAT_DECODE and rss > FLAT_RSS_MB,
                f"decode {decode:.2f}x, peak RSS {rss:+,.0f} MB",
            )
        )
    e = systems.get(FP32, {}).get("headline", {}).get("efficiency")
    rows.append(
        _target(
            "fp32 ingest >= 60% of the matmul ceiling",
            e,
            bool(e and e >= EFFICIENCY),
            f"{e:.0%}" if e else "n/a",
        )
    )
    return rows

"""The benchmark harness: FLOP counts, the report writers, a worker run, the baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infini_onnx.bench import flops, markdown, plots, report
from infini_onnx.bench.runner import run_worker
from infini_onnx.config import preset_config

MB = 2**20


def test_flops_by_hand():
    c = preset_config("tiny")  # D 64, I 128, L 2, H 4, G 2, d 16, N 32, V 258, delta
    dense = 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128)  # q k v o gate up down
    attention = 4 * 32 * 4 * 16  # N keys, H heads, d: q k^T and A v
    read = 4 * (2 * 16 * 16 + 2 * 16)  # per query head: sigma(q) M, sigma(q) z
    write = 2 * (2 * 16 * 16 + 16)  # per kv head: sigma(K)^T V, sum sigma(K)
    delta = 2 * (2 * 16 * 16 + 2 * 16)  # per kv head: sigma(K) M, sigma(K) z
    head = 2 * 64 * 258 / 32  # last position only, once per segment
    assert dense == 73728
    assert flops.ingest_flops_per_token(c) == 2 * (dense + attention + read + write + delta) + head
    linear = preset_config("tiny", memory_update="linear")
    assert flops.ingest_flops_per_token(linear) == 2 * (dense + attention + read + write) + head
    assert flops.matmul_params(c) == 2 * dense // 2


def _point(tokens: int, tok_s: float, decode_ms: float, rss_mb: float) -> dict:
    stat = lambda x: {"median": x, "min": 0.9 * x, "max": 1.1 * x, "n": 3}  # noqa: E731
    return {
        "tokens": tokens,
        "ingest_s": tokens / tok_s,
        "cumulative_tok_s": tok_s,
        "window_tok_s": stat(tok_s),
        "decode_ms": stat(decode_ms),
        "peak_rss": rss_mb * MB,
    }


def _fake_results() -> dict:
    c = preset_config("small")
    lengths = [1024, 4096, 16384]
    flat = lambda tok_s, ms, mb: [_point(n, tok_s, ms, mb) for n in lengths]  # noqa: E731
    system = lambda group, points, stop="reached": {  # noqa: E731
        "group": group,
        "params": 12_787_632,
        "points": points,
        "stop": stop,
        "file_bytes": {"bytes": 50 * MB, "what": "x.onnx"},
    }
    systems = {
        report.FP32: system("infini-onnx", flat(3000, 4.0, 250)),
        report.INT8: system("infini-onnx", flat(6000, 2.5, 180)),
        report.REFERENCE: system("baseline", flat(2000, 20.0, 430)),
        report.ITP: system("baseline", flat(1500, 25.0, 400)),
        report.LLAMA: system(
            "baseline",
            [_point(n, 3000 * 1024 / n, 5.0 * n / 1024, 250 + n / 100) for n in lengths[:2]],
            "time budget",
        ),
    }
    systems[report.LLAMA]["synthetic"] = [
        {
            "tokens": 65536,
            "decode_ms": {"median": 300.0, "min": 290.0, "max": 310.0, "n": 8},
            "peak_rss": 2000 * MB,
            "synthetic": True,
        },
        {"tokens": 1 << 20, "skipped": "needs ~24 GiB"},
    ]
    run = {
        "command": "infini bench --quick",
        "date": "2026-01-01 00:00 UTC",
        "mode": "quick",
        "threads": 2,
        "cpu": {"model": "Test CPU", "flags": ["avx2"], "cores_available": 2},
        "versions": {"python": "3.11"},
        "load_average_start": [0.1, 0.1, 0.1],
        "load_average_end": [0.2, 0.1, 0.1],
        "wall_seconds": 100.0,
        "note": "",
    }
    stat = {"median": 150.0, "min": 140.0, "max": 155.0, "n": 5}
    probe = lambda ms: {"bytes": 10 * MB, "ms": {**stat, "median": ms}, "gb_s": 1.0}  # noqa: E731
    ceilings = [
        {
            "onnxruntime": stat,
            "numpy": {**stat, "median": 100.0},
            "size": 2048,
            "bandwidth": {report.FP32: probe(fp32_ms), report.INT8: probe(int8_ms)},
        }
        for fp32_ms, int8_ms in ((3.0, 1.5), (3.5, 1.0))
    ]
    systems[report.FP32]["batches"] = [
        {"streams": n, "tok_s": tok_s, "step_ms": stat} for n, tok_s in ((1, 250.0), (32, 2250.0))
    ]
    return report.derive(run, c, 12_787_632, ceilings, systems, ["a note"])


def test_report_derives_targets_and_writes(tmp_path):
    results = _fake_results()
    fp32 = results["systems"][report.FP32]["headline"]
    expected = 3000 * flops.ingest_flops_per_token(preset_config("small")) / 1e9
    assert fp32["gflops"]["median"] == pytest.approx(expected)
    assert fp32["efficiency"] == pytest.approx(expected / 150.0)
    met = {t["target"]: t for t in results["targets"]}
    vs_reference = met["int8 ingest >= 3.5x the PyTorch reference"]
    assert vs_reference["value"] == pytest.approx(3.0) and vs_reference["met"] is False
    itp = met["int8 ingest >= 2x infini-transformer-pytorch"]
    assert itp["value"] == pytest.approx(4.0) and itp["met"] is True
    # int8 decode 2.5 ms against the reference's 20 ms at every common length: 0.125x
    decode = met["int8 decode <= 0.1x the PyTorch reference's at every stream length"]
    assert decode["value"] == pytest.approx(0.125) and decode["met"] is False
    # probes: the faster of the two runs (int8: 1.0 ms after, fp32: 3.0 ms before)
    assert met["int8 decode within 2x of its bandwidth probe"]["value"] == pytest.approx(2.5)
    fp32_probe = met["fp32 decode within 1.5x of its bandwidth probe"]
    assert fp32_probe["value"] == pytest.approx(4.0 / 3.0) and fp32_probe["met"] is True
    batch = met["infini-onnx fp32: 32 streams as one batch >= 8x the tokens/s of one"]
    assert batch["value"] == pytest.approx(9.0) and batch["met"] is True
    grows = next(t for t in results["targets"] if t["target"].startswith(report.LLAMA))
    assert grows["met"] is True and grows["value"] == pytest.approx(60.0)  # 300 ms / 5 ms
    json.dumps(results)  # JSON-serialisable as written

    text = markdown.markdown(results)
    assert "`infini bench --quick`" in text and "- a note" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {report.FP32} |"))
    assert "3,000 [2,700-3,300]" in row and "12.788M" in row
    assert "| 64K |" in text and "300.00 [290.00-310.00]*" in text  # the synthetic point
    assert f"| {report.FP32} | 250 (1.0x) | 2,250 (9.0x) | 3.00 ms (10.0 MB" in text
    assert f"| {report.INT8} |  |  | 1.00 ms (10.0 MB" in text  # no batches: empty cells
    assert "| 1M |" not in text  # skipped points have no row
    assert markdown.summary_text(results).count("| yes |") == len(
        [t for t in results["targets"] if t["met"]]
    )

    written = plots.write_all(results, tmp_path)
    assert [p.name for p in written] == list(plots.FIGURES)
    assert all(p.stat().st_size > 10_000 for p in written)


def test_worker_sweep_smoke(tiny_onnx, tmp_path):
    """A fresh worker process streams the tiny model to two lengths and reports both."""
    model_dir, onnx_path = tiny_onnx
    job = {
        "kind": "sweep",
        "system": {"type": "ort", "onnx": str(onnx_path), "params": 1},
        "checkpoints": [64, 128],
        "budget_s": 30,
        "decode_tokens": 3,
        "vocab": 258,
        "rss_cap": 8 * 2**30,
    }
    result, error = run_worker(job, threads=1, timeout=60, tmp=tmp_path)
    assert error is None
    assert [p["tokens"] for p in result["points"]] == [64, 128]
    assert result["stop"] == "reached 128 tokens"
    point = result["points"][-1]
    assert point["decode_ms"]["n"] == 3 and point["window_tok_s"]["n"] == 2
    assert point["peak_rss"] >= result["rss_after_load"] > 0


def test_worker_batch_and_probe(tiny_onnx, tmp_path):
    """Batched decode reports one entry per batch size; the probe reads buffers of the sizes
    asked for."""
    _, onnx_path = tiny_onnx
    job = {
        "kind": "batch",
        "system": {"type": "ort", "onnx": str(onnx_path)},
        "streams": [1, 3],
        "decode_tokens": 4,
        "vocab": 258,
    }
    result, error = run_worker(job, threads=1, timeout=60, tmp=tmp_path)
    assert error is None
    runs = result["batches"]
    assert [b["streams"] for b in runs] == [1, 3] and runs[1]["step_ms"]["n"] == 4
    assert runs[1]["tok_s"] == pytest.approx(3e3 / runs[1]["step_ms"]["median"])
    sizes = {"a": 4 * MB, "b": 1 * MB}
    result, error = run_worker(
        {"kind": "ceiling", "probe_bytes": sizes}, threads=1, timeout=120, tmp=tmp_path
    )
    assert error is None
    probes = result["bandwidth"]
    assert {k: p["bytes"] for k, p in probes.items()} == sizes
    assert all(p["ms"]["n"] == 20 and p["ms"]["min"] > 0 for p in probes.values())


def test_optimum_baseline_matches_the_llama(model_dir_factory, tmp_path):
    """optimum's export of the same weights, chunked with its cache, gives the logits of the
    hand-made full-attention Llama; a decode step continues it."""
    pytest.importorskip("optimum.onnxruntime")
    import torch

    from infini_onnx.bench.llama import FullAttentionLlama
    from infini_onnx.bench.optimum_llama import export_optimum
    from infini_onnx.bench.systems import OptimumLlama
    from infini_onnx.model import from_pretrained

    model_dir = model_dir_factory()
    model = from_pretrained(model_dir)
    onnx_dir = export_optimum(model, tmp_path / "optimum")
    system = OptimumLlama(onnx_dir, model.config, threads=1)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, 70)
    system.ingest(ids[:32])
    system.ingest(ids[32:])
    c = model.config
    logits, _ = system.forward(torch.tensor([[7]]), system.past, system.seen)
    with torch.no_grad():
        zero = torch.zeros(1, c.num_key_value_heads, 0, c.head_dim)
        full = torch.from_numpy(np.append(ids, 7)[None])
        expected = FullAttentionLlama(model)(full, *[zero] * 2 * c.num_hidden_layers)[0]
    np.testing.assert_allclose(logits[:, -1:].numpy(), expected.numpy(), atol=1e-4)
    assert len(system.decode(3)) == 3 and system.seen == 70  # decoding leaves the stream


def test_worker_failure_is_reported(tmp_path):
    job = {"kind": "sweep", "system": {"type": "nonsense"}, "checkpoints": [64]}
    result, error = run_worker(
        {**job, "vocab": 258, "budget_s": 1, "decode_tokens": 1, "rss_cap": 2**30},
        threads=1,
        timeout=60,
        tmp=tmp_path,
    )
    assert result == {} and "unknown system type" in error


def test_full_attention_llama_export(model_dir_factory, tmp_path):
    """The baseline graph: chunked calls with the growing cache give the one-shot logits."""
    import onnxruntime as ort
    import torch

    from infini_onnx.bench.llama import FullAttentionLlama, cache_names, export_llama
    from infini_onnx.model import from_pretrained

    model = from_pretrained(model_dir_factory())
    path = export_llama(model, tmp_path / "llama.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    c = model.config
    names = cache_names(c.num_hidden_layers, "past_key_values")
    cache = [np.zeros((1, c.num_key_value_heads, 0, c.head_dim), np.float32)] * len(names)
    ids = np.random.default_rng(0).integers(0, c.vocab_size, (1, 75))
    for start, stop in [(0, 32), (32, 74), (74, 75)]:  # two chunks, then one decoded token
        logits, *cache = session.run(
            None, {"input_ids": ids[:, start:stop], **dict(zip(names, cache))}
        )
    with torch.no_grad():
        zero = torch.zeros(1, c.num_key_value_heads, 0, c.head_dim)
        expected = FullAttentionLlama(model)(torch.from_numpy(ids), *[zero] * len(names))[0]
    assert cache[0].shape[2] == 75
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-5)


def test_itp_matched_parameters():
    pytest.importorskip("infini_transformer_pytorch")
    from infini_transformer_pytorch import InfiniTransformer

    from infini_onnx.bench.systems import itp_kwargs

    target = 12_787_632  # the small preset
    model = InfiniTransformer(**itp_kwargs(preset_config("small"), target))
    assert abs(sum(p.numel() for p in model.parameters()) - target) / target < 1e-3


def test_worker_decode_reads_then_moves_the_position(tiny_onnx, tmp_path):
    """The decode job reads `real_tokens` for real and moves the position counter for longer
    contexts (a multiple of the segment length), then decodes batches of streams."""
    _, onnx_path = tiny_onnx
    job = {
        "kind": "decode",
        "system": {"type": "ort", "onnx": str(onnx_path), "variant": "fp32"},
        "contexts": [64, 256, 1 << 20],
        "real_tokens": 128,
        "budget_s": 60,
        "decode_tokens": 3,
        "max_cache_tokens": 1 << 20,
        "peer_max_context": 1 << 20,
        "batches": [1, 4],
    }
    result, error = run_worker(job, threads=1, timeout=120, tmp=tmp_path)
    assert error is None, error
    points = result["points"]
    assert [p["tokens"] for p in points] == [64, 256, 1 << 20]
    assert [p["real_tokens"] for p in points] == [64, 128, 128]
    assert all(p["decode_ms"]["n"] == 3 and p["ingest_tok_s"] > 0 for p in points)
    assert [b["streams"] for b in result["batches"]] == [1, 4]


def test_decode_report_ratios_and_plots(tmp_path):
    """decode.md puts infini-onnx against the same bits of each peer and the probe."""
    from infini_onnx.bench import decode_report

    def system(ms: float, probe: float = 1.0, batches=()) -> dict:
        points = [
            {"tokens": n, "real_tokens": n, "decode_ms": {"median": ms * f}, "ingest_tok_s": 100}
            for n, f in ((1024, 1), (4096, 2))
        ]
        return {"points": points, "weights_bytes": MB, "probe_ms": probe, "batches": list(batches),
                "stop": "reached"}  # fmt: skip

    batches = [
        {"streams": 1, "step_ms": {"median": 2.0}},
        {"streams": 32, "step_ms": {"median": 4.0}},
    ]
    results = {
        "run": {"command": "infini bench --decode", "cpu": {"model": "cpu"}, "threads": 2,
                "date": "d", "wall_seconds": 60, "load_average_start": [], "load_average_end": [],
                "note": "", "plan": {"contexts": [1024, 4096], "real_tokens": 4096}},
        "presets": {"tiny": {"notes": ["llama.cpp Q8_0 skipped: not installed"], "systems": {
            "infini-onnx int4": system(2.0, probe=0.5, batches=batches),
            "infini-onnx fp32": system(4.0),
            "GenAI int4": system(4.0),
            "llama.cpp Q4_0": system(1.0),
        }}},
    }  # fmt: skip
    text = decode_report.markdown(results)
    row = next(line for line in text.splitlines() if line.startswith("| int4 |"))
    # vs GenAI at 1K and 4K, vs llama.cpp at 1K and 4K, decode / probe at 4K
    assert row == "| int4 | 0.50x | 0.50x | 2.00x | 2.00x | 8.00x |"
    assert "16.0x (32 streams)" in text and "int4 ingest is 1.00x fp32's" in text
    assert "- llama.cpp Q8_0 skipped: not installed" in text
    decode_report.plots(results, tmp_path)
    assert (tmp_path / "decode_context.png").stat().st_size > 0
    assert (tmp_path / "decode_size.png").stat().st_size > 0

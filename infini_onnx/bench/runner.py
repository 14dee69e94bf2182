"""`infini bench`: build the models, measure every system in its own fresh process, write
results.json, results.md and the plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path

from infini_onnx.bench import machine
from infini_onnx.bench.build import Models, build_models
from infini_onnx.config import InfiniConfig
from infini_onnx.modeldir import WEIGHTS, load_config
from infini_onnx.quantize.accuracy import file_bytes

K = 1024
PRESET = "small"


@dataclass(frozen=True)
class Plan:
    """How much a run measures."""

    checkpoints: tuple[int, ...]  # stream lengths (multiples of the segment)
    infini_budget_s: float  # seconds of ingest for each infini-onnx variant
    baseline_budget_s: float  # ... for each baseline
    decode_tokens: int  # decode steps timed at each stream length
    synthetic: tuple[int, ...]  # cache lengths of the full-attention decode points
    batches: tuple[int, ...] = (1, 8, 32)  # streams decoding together (StreamBatch)
    worker_slack_s: float = 240.0  # start-up, warm-up and decoding on top of the budget


QUICK = Plan(
    checkpoints=tuple(K * 2**i for i in range(5)),  # 1K .. 16K
    infini_budget_s=20,
    baseline_budget_s=15,
    decode_tokens=8,
    synthetic=(64 * K,),
)
FULL = Plan(
    checkpoints=tuple(K * 2**i for i in range(11)),  # 1K .. 1M
    infini_budget_s=400,
    baseline_budget_s=90,
    decode_tokens=32,
    synthetic=(128 * K, 256 * K),
)


@dataclass(frozen=True)
class SystemSpec:
    name: str
    group: str  # "infini-onnx" | "baseline"
    spec: dict  # the worker's "system" entry


def system_specs(models: Models, config: InfiniConfig, params: int) -> tuple[list, list[str]]:
    """The systems of a run, and notes on any left out."""
    ort = lambda v: dict(type="ort", onnx=str(models.onnx[v]), params=params)  # noqa: E731
    specs = [
        SystemSpec(f"infini-onnx {v}", "infini-onnx", ort(v)) for v in ("fp32", "int8", "int4")
    ]
    specs.append(
        SystemSpec(
            "PyTorch reference", "baseline", dict(type="torch", model_dir=str(models.model_dir))
        )
    )
    notes = list(models.notes)
    if find_spec("infini_transformer_pytorch") is None:
        notes.append(
            "infini-transformer-pytorch is not installed (pip install 'infini-onnx[bench]'): "
            "that system was skipped"
        )
    else:
        from infini_onnx.bench.systems import itp_kwargs

        kwargs = itp_kwargs(config, params)
        specs.append(
            SystemSpec(
                "infini-transformer-pytorch",
                "baseline",
                dict(type="itp", kwargs=kwargs, chunk=config.segment_len),
            )
        )
    no_gates = params - config.num_hidden_layers * config.num_attention_heads
    full = dict(model_dir=str(models.model_dir), params=no_gates)
    specs.append(
        SystemSpec(
            "full-attention Llama (ORT)",
            "baseline",
            dict(type="llama", onnx=str(models.onnx["llama"]), **full),
        )
    )
    if "optimum" in models.onnx:
        specs.append(
            SystemSpec(
                "full-attention Llama (optimum)",
                "baseline",
                dict(type="optimum", onnx=str(models.onnx["optimum"]), **full),
            )
        )
    elif not models.notes:
        notes.append(
            "optimum-onnx is not installed (pip install 'infini-onnx[bench]'): the optimum "
            "full-attention baseline was skipped"
        )
    return specs, notes


def worker_env(threads: int) -> dict[str, str]:
    """Every library's thread count fixed to `threads` before the worker imports it."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_worker(job: dict, threads: int, timeout: float, tmp: Path) -> tuple[dict, str | None]:
    """Run one job in a fresh process; returns its JSON (partial if it was stopped) and an
    error note (None when it finished)."""
    out = tmp / f"job-{time.monotonic_ns()}.json"
    job_path = out.with_suffix(".job")
    job_path.write_text(json.dumps({**job, "threads": threads, "out": str(out)}))
    cmd = [sys.executable, "-m", "infini_onnx.bench.worker", str(job_path)]
    error = None
    try:
        proc = subprocess.run(
            cmd, env=worker_env(threads), timeout=timeout, stderr=subprocess.PIPE, text=True
        )
        if proc.returncode:
            reason = "killed (out of memory?)" if proc.returncode < 0 else "failed"
            tail = proc.stderr.strip().splitlines()[-1:] or [""]
            error = f"worker {reason}, exit {proc.returncode}: {tail[0]}"
    except subprocess.TimeoutExpired:
        error = f"worker timed out after {timeout:.0f} s"
    result = json.loads(out.read_text()) if out.exists() else {}
    return result, error


def ceiling(threads: int, tmp: Path, probe_bytes: dict[str, int]) -> dict:
    job = {"kind": "ceiling", "probe_bytes": probe_bytes}
    result, error = run_worker(job, threads, 300, tmp)
    if error:
        raise RuntimeError(f"matmul ceiling: {error}")
    return result


def synthetic_points(
    spec: SystemSpec, plan: Plan, config: InfiniConfig, threads: int, cap: int, tmp: Path, log
) -> list[dict]:
    """Full-attention decode latency and peak RSS at cache lengths past its ingest budget,
    each in a fresh process; skipped where past + present caches would not fit."""
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    points = []
    for tokens in plan.synthetic:
        need = 4 * tokens * per_token + 2**29  # cache in, cache out, their copies (measured)
        if need > cap:
            log(f"    {tokens:>9,} tokens: skipped (needs ~{need / 2**30:.1f} GiB > cap)")
            points.append({"tokens": tokens, "skipped": f"needs ~{need / 2**30:.1f} GiB"})
            continue
        job = dict(
            kind="point",
            system=spec.spec,
            tokens=tokens,
            vocab=config.vocab_size,
            decode_tokens=min(plan.decode_tokens, 8),
        )
        result, error = run_worker(job, threads, 600, tmp)
        if error:
            log(f"    {tokens:>9,} tokens: {error}")
            points.append({"tokens": tokens, "skipped": error})
            continue
        ms, mb = result["decode_ms"]["median"], result["peak_rss"] / 2**20
        log(
            f"    {tokens:>9,} tokens (random-filled cache): decode {ms:.2f} ms, "
            f"peak RSS {mb:,.0f} MB"
        )
        points.append(result)
    return points


def measure(
    spec: SystemSpec,
    plan: Plan,
    models: Models,
    config: InfiniConfig,
    threads: int,
    cap: int,
    tmp: Path,
    log,
) -> dict:
    """One system's sweep in a fresh process (and the full-attention random-filled points)."""
    budget = plan.infini_budget_s if spec.group == "infini-onnx" else plan.baseline_budget_s
    log(f"  {spec.name} (ingest budget {budget:g} s)")
    job = dict(
        kind="sweep",
        system=spec.spec,
        checkpoints=list(plan.checkpoints),
        budget_s=budget,
        decode_tokens=plan.decode_tokens,
        vocab=config.vocab_size,
        rss_cap=cap,
    )
    result, error = run_worker(job, threads, budget + plan.worker_slack_s, tmp)
    if error:
        result["stop"] = error
        log(f"    {error}")
    result["group"] = spec.group
    result["file_bytes"] = _weights_bytes(spec, models, result.get("params", 0))
    if spec.spec["type"] in ("llama", "optimum"):
        result["synthetic"] = synthetic_points(spec, plan, config, threads, cap, tmp, log)
    return result


def measure_batches(
    spec: SystemSpec, plan: Plan, config: InfiniConfig, threads: int, tmp: Path, log
) -> list[dict]:
    """Batched decode of one infini-onnx variant (a fresh process)."""
    log(f"  {spec.name}: batched decode of {', '.join(map(str, plan.batches))} streams")
    job = dict(
        kind="batch",
        system=spec.spec,
        streams=list(plan.batches),
        decode_tokens=plan.decode_tokens,
        vocab=config.vocab_size,
    )
    result, error = run_worker(job, threads, 600, tmp)
    if error:
        log(f"    {error}")
    return result.get("batches", [])


def run(
    out_dir: Path,
    quick: bool,
    command: str,
    threads: int | None = None,
    workdir: Path | None = None,
    note: str = "",
    log=print,
) -> dict:
    """A whole benchmark run; writes out_dir/results.json, results.md, command.txt, *.png."""
    from infini_onnx.bench import markdown, plots, report

    plan = QUICK if quick else FULL
    threads = threads or machine.cpu_info()["cores_available"]
    started = time.perf_counter()
    mode = "quick" if quick else "full"
    run_info = machine.run_record(command, asdict(plan), threads, note, mode=mode)
    log(f"infini bench ({run_info['mode']}): {run_info['cpu']['model']}, {threads} threads")
    with tempfile.TemporaryDirectory(prefix="infini-bench-") as scratch:
        tmp = Path(scratch)
        models = build_models(workdir or tmp / "models", PRESET, log)
        config = load_config(models.model_dir)
        from infini_onnx.model import InfiniLlamaForCausalLM

        model = InfiniLlamaForCausalLM.from_pretrained(models.model_dir)
        params = sum(p.numel() for p in model.parameters())
        specs, notes = system_specs(models, config, params)
        cap = memory_cap()
        probe_bytes = {s.name: file_bytes(s.spec["onnx"]) for s in specs if s.spec["type"] == "ort"}
        log("  matmul ceiling and bandwidth probe")
        ceilings = [ceiling(threads, tmp, probe_bytes)]
        systems = {
            spec.name: measure(spec, plan, models, config, threads, cap, tmp, log) for spec in specs
        }
        for spec in specs:
            if spec.group == "infini-onnx":
                systems[spec.name]["batches"] = measure_batches(
                    spec, plan, config, threads, tmp, log
                )
        log("  matmul ceiling and bandwidth probe (again)")
        ceilings.append(ceiling(threads, tmp, probe_bytes))
    run_info["load_average_end"] = machine.load_average()
    run_info["build_seconds"] = models.seconds
    run_info["wall_seconds"] = round(time.perf_counter() - started, 1)
    results = report.derive(run_info, config, params, ceilings, systems, notes)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "results.md").write_text(markdown.markdown(results))
    (out_dir / "command.txt").write_text(run_info["command"] + "\n")
    plots.write_all(results, out_dir)
    return results


def _weights_bytes(spec: SystemSpec, models: Models, params: int) -> dict:
    """What a deployment of the system loads: its file, or for infini-transformer-pytorch
    (no file format of its own) its fp32 weights."""
    kind = spec.spec["type"]
    if kind in ("ort", "llama"):  # .onnx plus its external data
        return {"bytes": file_bytes(spec.spec["onnx"]), "what": Path(spec.spec["onnx"]).name}
    if kind == "optimum":
        return {"bytes": file_bytes(Path(spec.spec["onnx"]) / "model.onnx"), "what": "model.onnx"}
    if kind == "torch":
        weights = models.model_dir / WEIGHTS
        return {"bytes": weights.stat().st_size, "what": weights.name}
    return {"bytes": 4 * params, "what": "fp32 weights in memory (no file format)"}


def memory_cap() -> int:
    """The most RSS a worker may reach: 70% of the memory available now, at most 16 GiB."""
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError):
        pass
    return int(min(16 * 2**30, 0.7 * available))

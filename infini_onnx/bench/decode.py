"""`infini bench --decode`: decode ms/token of infini-onnx and its peers at each preset, against
context length and against model size, with the bandwidth probe, ingest and batches.

Per preset: the model directory (`infini init`, random weights), its infini-onnx variants
(fp32, int8, int4) and the peers of bench/peers.py built from the same weights. Every system
runs in its own fresh process (runner.run_worker), one after the other.

A point at context C is a decode step after C tokens. infini-onnx reads the first
`real_tokens` for real; past them its state keeps its tensors and its position is set to C (a
step's work does not depend on the position: the window and the memory have fixed sizes). A
full-attention peer reads all C tokens for real (its cache must hold them), as far as its
prefill time budget and the memory cap allow.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from infini_onnx.bench import machine, peers
from infini_onnx.bench.runner import ceiling, memory_cap, run_worker
from infini_onnx.config import preset_config
from infini_onnx.quantize.accuracy import file_bytes

K = 1024
INFINI_VARIANTS = ("fp32", "int8", "int4")
# peer name -> (package, the variant it matches, how it is built)
PEERS = {
    "GenAI fp32": ("onnxruntime_genai", "fp32"),
    "GenAI int4": ("onnxruntime_genai", "int4"),
    "llama.cpp Q8_0": ("llama_cpp", "int8"),
    "llama.cpp Q4_0": ("llama_cpp", "int4"),
}


@dataclass(frozen=True)
class DecodePlan:
    presets: tuple[str, ...] = ("small", "base", "0.5b")
    contexts: tuple[int, ...] = tuple(K * 4**i for i in range(6))  # 1K .. 1M
    real_tokens: int = 4 * K  # infini-onnx reads this much for real
    prefill_budget_s: float = 150.0  # a peer's prefill seconds, all its contexts together
    peer_max_context: int = 64 * K  # a peer's cache is allocated for this many tokens at most
    decode_tokens: int = 16
    batches: tuple[int, ...] = (1, 32)


def build_preset(workdir: Path, preset: str, log) -> tuple[dict[str, dict], list[str]]:
    """system name -> worker spec, and notes on peers left out. Files in workdir are reused."""
    from infini_onnx.bench.build import build_models
    from infini_onnx.model import InfiniLlamaForCausalLM

    models = build_models(workdir, preset, log, only=INFINI_VARIANTS)
    specs = {
        f"infini-onnx {v}": dict(type="ort", onnx=str(models.onnx[v]), variant=v)
        for v in INFINI_VARIANTS
    }
    notes, model = [], None
    for name, (package, variant) in PEERS.items():
        missing = peers.missing_note(package)
        if missing:
            notes.append(f"{name} skipped: {missing}")
            continue
        model = model or InfiniLlamaForCausalLM.from_pretrained(models.model_dir)
        t0 = time.perf_counter()
        if package == "onnxruntime_genai":
            path = workdir / f"{preset}-genai-{variant}"
            if not path.exists():
                log(f"  build {name} -> {path.name}")
                hf = workdir / f"{preset}-hf"
                if not hf.exists():
                    peers.hf_directory(model, models.model_dir, hf)
                peers.build_genai(hf, path, variant)
            specs[name] = dict(type="genai", dir=str(path), variant=variant)
        else:
            path = workdir / f"{preset}-{peers.GGUF_TYPES[variant]}.gguf"
            if not path.exists():
                log(f"  build {name} -> {path.name}")
                peers.write_gguf(model, path, variant)
            specs[name] = dict(type="llama.cpp", gguf=str(path), variant=variant)
        if time.perf_counter() - t0 > 1:
            log(f"    {time.perf_counter() - t0:.0f} s")
    return specs, notes


def weights_bytes(spec: dict) -> int:
    if spec["type"] == "ort":
        return file_bytes(spec["onnx"])
    if spec["type"] == "genai":
        return sum(f.stat().st_size for f in Path(spec["dir"]).glob("model.onnx*"))
    return Path(spec["gguf"]).stat().st_size


def run_decode(
    out_dir: Path, command: str, threads: int, workdir: Path, plan: DecodePlan, note: str, log
) -> dict:
    """The whole run; writes out_dir/decode.json, decode.md, command.txt and two plots after
    every preset, and keeps the presets an earlier run left in out_dir/decode.json."""
    started = time.perf_counter()
    run_info = machine.run_record(command, asdict(plan), threads, note)
    log(f"infini bench --decode: {run_info['cpu']['model']}, {threads} threads")
    cap = memory_cap()
    done = out_dir / "decode.json"
    presets = json.loads(done.read_text())["presets"] if done.exists() else {}
    tmp = workdir / "jobs"
    tmp.mkdir(parents=True, exist_ok=True)
    for preset in plan.presets:
        if preset in presets:  # a run stopped midway goes on where it stopped
            log(f"preset {preset}: kept from {done}")
            continue
        log(f"preset {preset}")
        specs, notes = build_preset(workdir / preset, preset, log)
        c = preset_config(preset)
        cache_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
        max_cache_tokens = cap // 2 // cache_bytes  # float32 K and V, and room for a copy
        sizes = {name: weights_bytes(spec) for name, spec in specs.items()}
        log("  bandwidth probe")
        probe = ceiling(threads, tmp, sizes)["bandwidth"]
        systems = {}
        for name, spec in specs.items():
            log(f"  {name}")
            job = dict(
                kind="decode",
                system=spec,
                contexts=list(plan.contexts),
                real_tokens=plan.real_tokens,
                budget_s=plan.prefill_budget_s,
                decode_tokens=plan.decode_tokens,
                max_cache_tokens=max_cache_tokens,
                peer_max_context=plan.peer_max_context,
                batches=list(plan.batches) if spec["type"] == "ort" else [],
            )
            result, error = run_worker(job, threads, plan.prefill_budget_s + 900, tmp)
            if error:
                result["stop"] = error
                log(f"    {error}")
            result["weights_bytes"] = sizes[name]
            result["probe_ms"] = probe[name]["ms"]["median"]
            systems[name] = result
        presets[preset] = {"systems": systems, "notes": notes}
        write_results(run_info, started, presets, plan, out_dir)  # a stopped run keeps them
    return write_results(run_info, started, presets, plan, out_dir)


def write_results(
    run_info: dict, started: float, presets: dict, plan: DecodePlan, out_dir: Path
) -> dict:
    """The results so far (the run's end stamps, the presets measured, in the plan's order) as
    decode.json, decode.md, command.txt and the plots."""
    from infini_onnx.bench import decode_report

    run_info["load_average_end"] = machine.load_average()
    run_info["wall_seconds"] = round(time.perf_counter() - started, 1)
    results = {"run": run_info, "presets": {p: presets[p] for p in plan.presets if p in presets}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "decode.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "decode.md").write_text(decode_report.markdown(results))
    (out_dir / "command.txt").write_text(results["run"]["command"] + "\n")
    decode_report.plots(results, out_dir)
    return results

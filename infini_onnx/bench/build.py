"""The models a run measures, built from one `infini init` model directory (no downloads)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from infini_onnx.bench.machine import cpu_info


@dataclass(frozen=True)
class Models:
    model_dir: Path
    onnx: dict[str, Path]  # fp32, int8, int4, llama; optimum (a directory) if installed
    seconds: dict[str, float]  # build time of each
    notes: list[str]  # baselines that could not be built


def quantize_target(flags: list[str]) -> str | None:
    """The `infini quantize --target` for this CPU (x86 only; None elsewhere)."""
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx2" in flags:
        return "avx2"
    return None


def build_models(
    workdir: Path, preset: str, log=print, only: tuple[str, ...] | None = None
) -> Models:
    """init + export (fp32) + quantize (int8, int4) + the full-attention exports (hand-made,
    and optimum's when installed), or init and the `only` ones; files already in `workdir` are
    reused."""
    from infini_onnx.bench.llama import export_llama
    from infini_onnx.export.exporter import export_model
    from infini_onnx.model import InfiniLlamaForCausalLM, init_model_dir
    from infini_onnx.quantize.quantizer import quantize_model
    from infini_onnx.quantize.targets import resolve

    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / preset
    onnx = {v: workdir / f"{preset}-{v}.onnx" for v in ("fp32", "int8", "int4", "llama")}
    target = quantize_target(cpu_info()["flags"])
    steps = {
        "init": (
            model_dir / "model.safetensors",
            lambda: init_model_dir(model_dir, preset, seed=0),
        ),
        "fp32": (onnx["fp32"], lambda: export_model(model_dir, onnx["fp32"])),
        "int8": (
            onnx["int8"],
            lambda: quantize_model(onnx["fp32"], onnx["int8"], resolve("int8", target)),
        ),
        "int4": (
            onnx["int4"],
            lambda: quantize_model(onnx["fp32"], onnx["int4"], resolve("int4", target)),
        ),
        "llama": (
            onnx["llama"],
            lambda: export_llama(InfiniLlamaForCausalLM.from_pretrained(model_dir), onnx["llama"]),
        ),
    }
    if only is not None:
        steps = {k: v for k, v in steps.items() if k == "init" or k in only}
        onnx = {k: v for k, v in onnx.items() if k in only}
    elif find_spec("optimum") and find_spec("optimum.onnxruntime"):
        from infini_onnx.bench.optimum_llama import export_optimum

        onnx["optimum"] = workdir / f"{preset}-optimum"
        steps["optimum"] = (
            onnx["optimum"],
            lambda: export_optimum(
                InfiniLlamaForCausalLM.from_pretrained(model_dir), onnx["optimum"]
            ),
        )
    seconds, notes = {}, []
    for name, (path, make) in steps.items():
        if path.exists():
            continue
        log(f"  build {name} -> {path.name}")
        t0 = time.perf_counter()
        try:
            make()
        except Exception as e:  # optimum's exporter: a baseline, not the product
            if name != "optimum":
                raise
            onnx.pop(name)
            notes.append(f"optimum's export failed, that baseline was skipped: {e!r:.300}")
            log(f"    {notes[-1]}")
            continue
        seconds[name] = round(time.perf_counter() - t0, 1)
    return Models(model_dir, onnx, seconds, notes)

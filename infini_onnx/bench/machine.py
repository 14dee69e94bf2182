"""The machine a run measures: CPU, threads, library versions, and its dense matmul ceiling."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from functools import partial
from importlib import metadata

import numpy as np

from infini_onnx.bench.stats import summary, time_calls

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")
PACKAGES = (
    "numpy",
    "onnxruntime",
    "torch",
    "infini-transformer-pytorch",
    "optimum-onnx",
    "transformers",
    "infini-onnx",
)


def cpu_info() -> dict:
    """CPU model name, family/model/stepping, ISA flags of interest, cores this process may use."""
    info: dict = {"model": platform.processor() or platform.machine(), "flags": []}
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in f) if k
            )
    except OSError:
        fields = {}
    if fields:
        info["model"] = fields.get("model name", info["model"])
        info["family/model/stepping"] = "/".join(
            fields.get(k, "?") for k in ("cpu family", "model", "stepping")
        )
        flags = set(fields.get("flags", "").split())
        info["flags"] = [f for f in ISA_FLAGS if f in flags]
    info["cores_available"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    return info


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_record(command: str, plan: dict, threads: int, note: str, **extra) -> dict:
    """What a run records about itself at its start: command, date, plan, threads, CPU,
    versions, load average, the user's note (and `extra`)."""
    return {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **extra,
        "plan": plan,
        "threads": threads,
        "cpu": cpu_info(),
        "versions": versions(),
        "load_average_start": load_average(),
        "note": note,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, dict]:
    """Dense fp32 n x n x n matmul GFLOP/s through ONNX Runtime's MatMul and through numpy.

    Run in a worker whose BLAS thread variables are set to `threads` before numpy loads.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from infini_onnx.runtime import session_options

    spec = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "abc"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", spec[:2], spec[2:]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(
        model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    flops = 2 * n**3
    to_gflops = lambda times: summary([flops / t / 1e9 for t in times])  # noqa: E731
    run_ort = lambda: session.run(None, {"a": a, "b": b})  # noqa: E731
    run_numpy = lambda: a @ b  # noqa: E731
    run_ort(), run_numpy()  # warm-up
    return {
        "onnxruntime": to_gflops(time_calls(run_ort, repeats)),
        "numpy": to_gflops(time_calls(run_numpy, repeats)),
        "size": n,
    }


PROBE_MAX_BYTES = 1 << 30


def bandwidth_probe(threads: int, sizes: dict[str, int], repeats: int = 20) -> dict[str, dict]:
    """The time to read a buffer of each size once, the floor of a decode step that reads its
    weights once: a float32 [1, K] x [K, 1024] MatMul through ONNX Runtime (a GEMV: each
    weight read once, two FLOPs each) on a matrix of `size` bytes, median of `repeats` after a
    warm-up; also as GB/s. A size past PROBE_MAX_BYTES is timed at that size and scaled (both
    read from DRAM at the same rate). Run in a worker like matmul_gflops."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from infini_onnx.runtime import session_options

    columns = 1024
    probes = {}
    rng = np.random.default_rng(0)
    for name, size in sizes.items():
        read = min(size, PROBE_MAX_BYTES)  # a protobuf holds < 2 GiB; past 1 GiB, DRAM speed
        rows = max(1, read // (4 * columns))
        weights = rng.standard_normal((rows, columns), dtype=np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "gemv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, columns])],
            [numpy_helper.from_array(weights, "w")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        session = ort.InferenceSession(
            model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
        )
        feeds = {"x": np.ones((1, rows), np.float32)}
        session.run(None, feeds)
        ms = summary([t * 1e3 for t in time_calls(partial(session.run, None, feeds), repeats)])
        gb_s = weights.nbytes / ms["median"] / 1e6
        if read < size:  # the time to read `size` bytes at the rate measured on `read`
            ms = {k: v * size / weights.nbytes if k != "n" else v for k, v in ms.items()}
        probes[name] = {"bytes": size if read < size else weights.nbytes, "ms": ms, "gb_s": gb_s}
    return probes

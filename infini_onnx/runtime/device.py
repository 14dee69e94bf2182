"""How a call of the step graph is made on a device, and where the state tensors live.

State tensors are opaque "device values": numpy arrays on the CPU, OrtValues in GPU memory with
CUDA/TensorRT (IO binding, so the memory and a format-1 cache never travel through the host
between calls; the window ring of format 2 lives on the host, and only a call's new rows come
back from the device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from infini_onnx.devices import DEVICES, PROVIDERS
from infini_onnx.errors import DeviceError, InputError
from infini_onnx.stepgraph.state_spec import MEMORY_OUTPUTS, MODEL, REPLACE, RING, StateSpec

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class Outputs:
    """The outputs of one call: logits on the host, the state outputs as device values."""

    logits: np.ndarray  # [B, n, V] float32
    state: dict[str, Any]  # by output name (the spec's)


def default_threads() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_threads(threads: object) -> int:
    """An intra-op thread count: None is every usable core; anything but an integer in
    [1, default_threads()] is refused (more threads than cores only slow calls down:
    docs/runtime.md, "Threads")."""
    cores = default_threads()
    if threads is None:
        return cores
    integer = isinstance(threads, (int, np.integer)) and not isinstance(threads, bool)
    if integer and 1 <= threads <= cores:
        return int(threads)
    raise InputError(
        f"threads must be an integer in [1, {cores}] (the cores this process may use), "
        f"got {threads!r}"
    )


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options for small CPUs: all graph optimisations, one op at a time, worker threads that
    spin during a call and sleep between calls; threads as `check_threads` takes them."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.intra_op_num_threads = check_threads(threads)
    # A decode call is hundreds of small ops: waking a sleeping worker for each costs more than
    # the op (decode 1.1-1.6x slower without spinning). Spinning stops when a call returns, so
    # no core burns between calls (docs/runtime.md, "Threads").
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def providers_for(device: str) -> list[str]:
    """The execution providers of a device name; refuses a device this onnxruntime lacks."""
    if device not in PROVIDERS:
        raise DeviceError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    wanted = PROVIDERS[device][0]
    if wanted not in ort.get_available_providers():
        raise DeviceError(
            f"device {device!r} needs {wanted}, which this onnxruntime lacks "
            f"(available: {', '.join(ort.get_available_providers())}); on NVIDIA GPUs install "
            "onnxruntime-gpu instead of onnxruntime"
        )
    return PROVIDERS[device]


class CpuCalls:
    """Calls on the CPU: numpy in, numpy out (onnxruntime reads numpy inputs without copying).
    A batch is one call: every variant keeps its rows independent (stepgraph/variants.py)."""

    def __init__(self, session: ort.InferenceSession, spec: StateSpec):
        self.session = session
        self.spec = spec

    def run(self, input_ids: np.ndarray, num_logits: int, state: dict[str, Any]) -> Outputs:
        feeds = {**state, "input_ids": input_ids, "num_logits": np.array([num_logits], np.int64)}
        logits, *rest = self.session.run(list(self.spec.output_names), feeds)
        return Outputs(logits, dict(zip(self.spec.output_names[1:], rest, strict=True)))

    def to_device(self, array: np.ndarray) -> np.ndarray:
        return array

    def to_host(self, value: np.ndarray) -> np.ndarray:
        return value

    def finite(self, out: Outputs, cached: int) -> bool:
        """All new values finite: logits, the new cache rows, the accumulators."""
        arrays = [out.logits]
        for t in self.spec.tensors:
            value = out.state.get(t.output)
            if t.on_call == REPLACE and t.dtype == MODEL:  # a format-1 cache: P old + T new rows
                value = value[:, :, :, cached:]
            if value is not None:
                arrays.append(value)
        return all(np.isfinite(a).all() for a in arrays)


class BoundCalls:
    """Calls with IO binding: state inputs and outputs stay in device memory (CUDA for the
    CUDA and TensorRT providers; "cpu" runs the same code on the CPU, for tests)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        spec: StateSpec,
        device_type: str = "cuda",
        device_id: int = 0,
    ):
        self.session = session
        self.spec = spec
        self.device_type, self.device_id = device_type, device_id

    def run(self, input_ids: np.ndarray, num_logits: int, state: dict[str, Any]) -> Outputs:
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", input_ids)
        binding.bind_cpu_input("num_logits", np.array([num_logits], np.int64))
        for name, value in state.items():
            if isinstance(value, np.ndarray):  # an empty cache, the ring, the position
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        names = self.spec.output_names
        rings = {t.output for t in self.spec.tensors if t.on_call == RING}
        for name in names[1:]:  # a ring's new rows come to the host, where the ring lives
            binding.bind_output(
                name, *(("cpu",) if name in rings else (self.device_type, self.device_id))
            )
        self.session.run_with_iobinding(binding)
        logits, *rest = binding.get_outputs()
        return Outputs(logits.numpy(), dict(zip(names[1:], rest, strict=True)))

    def to_device(self, array: np.ndarray) -> ort.OrtValue:
        array = np.ascontiguousarray(array)
        return ort.OrtValue.ortvalue_from_numpy(array, self.device_type, self.device_id)

    def to_host(self, value: ort.OrtValue | np.ndarray) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def finite(self, out: Outputs, cached: int) -> bool:
        """Logits and z only (a few KB to the host): NaN or inf in any new key, value or memory
        write reaches both, since every position attends to itself and z sums sigma(k)."""
        norm = out.state[MEMORY_OUTPUTS[1]]  # z's accumulator
        return bool(np.isfinite(out.logits).all() and np.isfinite(norm.numpy()).all())


DeviceCalls = CpuCalls | BoundCalls


def device_calls(session: ort.InferenceSession, device: str, spec: StateSpec) -> DeviceCalls:
    """The way calls are made on `device` (one of DEVICES)."""
    return CpuCalls(session, spec) if device == "cpu" else BoundCalls(session, spec)

"""The runtime with IO binding: on a CUDA GPU (skipped where onnxruntime has no CUDA provider),
and the same binding code on the CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from infini_onnx.runtime import InfiniModel, Stream, StreamBatch
from infini_onnx.runtime.device import BoundCalls

needs_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs onnxruntime-gpu and a CUDA GPU",
)


def test_io_binding_code_path_on_the_cpu(tiny_onnx, tmp_path):
    plain = InfiniModel(tiny_onnx[1], threads=1)
    bound = InfiniModel(tiny_onnx[1], threads=1)
    calls = BoundCalls(bound.layout.device.session, bound.layout.spec, device_type="cpu")
    bound.layout = dataclasses.replace(bound.layout, device=calls)
    ids = np.random.default_rng(0).integers(0, 258, 100)
    a, b = Stream(plain), Stream(bound)
    np.testing.assert_array_equal(b.feed(ids, all_logits=True), a.feed(ids, all_logits=True))
    assert isinstance(b.state.tensors["memory_acc"], ort.OrtValue)
    options = dict(max_new_tokens=40, temperature=0, stop=())
    assert list(b.generate(**options)) == list(a.generate(**options))
    b.save(tmp_path / "s.state")
    resumed = Stream.load(plain, tmp_path / "s.state")
    np.testing.assert_array_equal(resumed.feed([1, 2, 3]), a.feed([1, 2, 3]))
    batch = StreamBatch([Stream(bound), Stream(bound)])
    logits = batch.feed(np.stack([ids[:40], ids[40:80]]))
    np.testing.assert_allclose(logits[1], Stream(plain).feed(ids[40:80]), atol=1e-5)


@pytest.fixture(scope="module")
def models(tiny_onnx):
    return InfiniModel(tiny_onnx[1], threads=1), InfiniModel(tiny_onnx[1], device="cuda")


@pytest.mark.gpu
@needs_cuda
def test_cuda_matches_cpu_and_keeps_state_on_the_device(models):
    cpu, cuda = models
    ids = np.random.default_rng(0).integers(0, 258, 100)
    a, b = Stream(cpu), Stream(cuda)
    np.testing.assert_allclose(
        b.feed(ids, all_logits=True), a.feed(ids, all_logits=True), atol=1e-4
    )
    assert isinstance(b.state.tensors["memory_acc"], ort.OrtValue)
    assert b.state.tensors["memory_acc"].device_name().lower() == "cuda"
    assert list(b.generate(max_new_tokens=30, temperature=0, stop=())) == list(
        a.generate(max_new_tokens=30, temperature=0, stop=())
    )
    np.testing.assert_allclose(b.logits, a.logits, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_cuda_state_saves_resumes_and_batches(models, tmp_path):
    cpu, cuda = models
    stream = Stream(cuda)
    stream.feed(np.arange(50) % 256)
    stream.save(tmp_path / "s.state")
    resumed = Stream.load(cuda, tmp_path / "s.state")
    options = dict(max_new_tokens=20, temperature=0.8, seed=1, stop=())
    assert list(stream.generate(**options)) == list(resumed.generate(**options))
    on_cpu = Stream.load(cpu, tmp_path / "s.state")
    np.testing.assert_allclose(
        on_cpu.feed([1, 2, 3]), Stream.load(cuda, tmp_path / "s.state").feed([1, 2, 3]), atol=1e-4
    )

    streams = [Stream(cuda) for _ in range(3)]
    batch = StreamBatch(streams)
    new = np.arange(3 * 40).reshape(3, 40) % 256
    logits = batch.feed(new, all_logits=True)
    for row, ids in zip(logits, new):
        np.testing.assert_allclose(row, Stream(cuda).feed(ids, all_logits=True), atol=1e-4)

"""The runtime on a CUDA GPU with IO binding (skipped where onnxruntime has no CUDA provider)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from infini_onnx.runtime import InfiniModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="needs onnxruntime-gpu and a CUDA GPU",
    ),
]


@pytest.fixture(scope="module")
def models(tiny_onnx):
    return InfiniModel(tiny_onnx[1], threads=1), InfiniModel(tiny_onnx[1], device="cuda")


def test_cuda_matches_cpu_and_keeps_state_on_the_device(models):
    cpu, cuda = models
    ids = np.random.default_rng(0).integers(0, 258, 100)
    a, b = cpu.stream(), cuda.stream()
    np.testing.assert_allclose(
        b.feed(ids, all_logits=True), a.feed(ids, all_logits=True), atol=1e-4
    )
    assert isinstance(b.state.memory_acc, ort.OrtValue)
    assert b.state.memory_acc.device_name().lower() == "cuda"
    assert list(b.generate(max_new_tokens=30, temperature=0, stop=())) == list(
        a.generate(max_new_tokens=30, temperature=0, stop=())
    )
    np.testing.assert_allclose(b.logits, a.logits, atol=1e-4)


def test_cuda_state_saves_resumes_and_batches(models, tmp_path):
    cpu, cuda = models
    stream = cuda.stream()
    stream.feed(np.arange(50) % 256)
    stream.save(tmp_path / "s.state")
    resumed = cuda.load_stream(tmp_path / "s.state")
    options = dict(max_new_tokens=20, temperature=0.8, seed=1, stop=())
    assert list(stream.generate(**options)) == list(resumed.generate(**options))
    on_cpu = cpu.load_stream(tmp_path / "s.state")
    np.testing.assert_allclose(
        on_cpu.feed([1, 2, 3]), cuda.load_stream(tmp_path / "s.state").feed([1, 2, 3]), atol=1e-4
    )

    streams = [cuda.stream() for _ in range(3)]
    batch = cuda.batch(streams)
    new = np.arange(3 * 40).reshape(3, 40) % 256
    logits = batch.feed(new, all_logits=True)
    for row, ids in zip(logits, new):
        np.testing.assert_allclose(row, cuda.stream().feed(ids, all_logits=True), atol=1e-4)

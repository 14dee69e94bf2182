"""Stream state files: bit-identical resume, the documented format, refusals."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from infini_onnx.runtime import InfiniModel, StateFileError

SAMPLING = dict(max_new_tokens=40, temperature=0.9, top_k=50, seed=3, stop=())


@pytest.fixture(scope="module")
def tiny_model(tiny_onnx):
    return InfiniModel(tiny_onnx[1], threads=1)


def fed_stream(model: InfiniModel, n: int = 50):
    stream = model.stream()
    stream.feed(np.random.default_rng(0).integers(0, 258, n))
    return stream


def assert_states_identical(model, a, b):
    ha, hb = model.to_host(a.state), model.to_host(b.state)
    assert ha.keys() == hb.keys()
    for name in ha:
        assert ha[name].dtype == hb[name].dtype and ha[name].tobytes() == hb[name].tobytes(), name


@pytest.mark.parametrize("fed", [50, 64, 1])  # mid-segment, at a boundary, one token
def test_save_load_go_on_is_bit_identical(tiny_model, tmp_path, fed):
    stream = fed_stream(tiny_model, fed)
    stream.save(tmp_path / "s.state")
    resumed = tiny_model.load_stream(tmp_path / "s.state")
    assert resumed.tokens_seen == fed and resumed.state.cached == fed % 32
    assert_states_identical(tiny_model, stream, resumed)

    assert list(stream.generate(**SAMPLING)) == list(resumed.generate(**SAMPLING))
    more = np.arange(70) % 256
    assert stream.feed(more).tobytes() == resumed.feed(more).tobytes()
    assert_states_identical(tiny_model, stream, resumed)


def test_fresh_stream_round_trips(tiny_model, tmp_path):
    tiny_model.stream().save(tmp_path / "empty.state")
    stream = tiny_model.load_stream(tmp_path / "empty.state")
    assert stream.tokens_seen == 0 and stream.logits is None


def test_file_is_safetensors_with_identity_and_checksum(tiny_model, tmp_path):
    path = tmp_path / "s.state"
    fed_stream(tiny_model).save(path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    meta = header["__metadata__"]
    assert meta["format"] == "infini-stream-state" and meta["version"] == "1"
    assert meta["model_id"] == tiny_model.model_id
    assert meta["checksum"].startswith("sha256:")
    expected = {"memory", "norm", "memory_acc", "norm_acc", "past_key", "past_value"}
    assert expected | {"tokens_seen", "logits"} == set(header) - {"__metadata__"}
    assert header["past_key"]["shape"] == [1, 2, 2, 50 - 32, 16]
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed

    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    tensors = safetensors_numpy.load_file(str(path))
    np.testing.assert_array_equal(tensors["tokens_seen"], [50])
    np.testing.assert_array_equal(
        tensors["memory"], tiny_model.to_host(fed_stream(tiny_model).state)["memory"]
    )


def test_corrupt_truncated_missing_and_foreign_files_fail_clearly(
    tiny_model, onnx_factory, tmp_path
):
    path = tmp_path / "s.state"
    fed_stream(tiny_model).save(path)
    raw = bytearray(path.read_bytes())

    flipped = tmp_path / "flipped.state"
    raw[-100] ^= 0x01
    flipped.write_bytes(bytes(raw))
    with pytest.raises(StateFileError, match="checksum mismatch"):
        tiny_model.load_stream(flipped)

    truncated = tmp_path / "truncated.state"
    truncated.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StateFileError, match="corrupt state file"):
        tiny_model.load_stream(truncated)
    truncated.write_bytes(path.read_bytes()[:20])
    with pytest.raises(StateFileError, match="truncated header"):
        tiny_model.load_stream(truncated)

    with pytest.raises(StateFileError, match="no such state file"):
        tiny_model.load_stream(tmp_path / "missing.state")

    other = InfiniModel(onnx_factory("linear", False)[1], threads=1)
    with pytest.raises(StateFileError, match="another model"):
        other.load_stream(path)


def test_saved_state_with_nan_is_refused(tiny_model, tmp_path):
    from infini_onnx.runtime import statefile

    stream = fed_stream(tiny_model)
    host = tiny_model.to_host(stream.state)
    host["memory"] = host["memory"].copy()
    host["memory"][0, 0, 0, 0, 0] = np.nan
    statefile.save_state(tmp_path / "nan.state", host, tiny_model.model_id, "fp32")
    with pytest.raises(StateFileError, match="NaN or inf"):
        tiny_model.load_stream(tmp_path / "nan.state")

"""Stream state files: bit-identical resume, the documented format, refusals."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from statefiles import read_header, write_header

from infini_onnx.runtime import InfiniModel, StateFileError, Stream

SAMPLING = dict(max_new_tokens=40, temperature=0.9, top_k=50, seed=3, stop=())


def fed_stream(model: InfiniModel, n: int = 50):
    stream = Stream(model)
    stream.feed(np.random.default_rng(0).integers(0, 258, n))
    return stream


def assert_states_identical(model, a, b):
    ha, hb = a.state.to_host(), b.state.to_host()
    assert ha.keys() == hb.keys()
    for name in ha:
        assert ha[name].dtype == hb[name].dtype and ha[name].tobytes() == hb[name].tobytes(), name


@pytest.mark.parametrize("fed", [50, 64, 1])  # mid-segment, at a boundary, one token
def test_save_load_go_on_is_bit_identical(tiny_model, tmp_path, fed):
    stream = fed_stream(tiny_model, fed)
    stream.save(tmp_path / "s.state")
    resumed = Stream.load(tiny_model, tmp_path / "s.state")
    assert resumed.tokens_seen == fed and resumed.state.cached == fed % 32
    assert_states_identical(tiny_model, stream, resumed)

    assert list(stream.generate(**SAMPLING)) == list(resumed.generate(**SAMPLING))
    more = np.arange(70) % 256
    assert stream.feed(more).tobytes() == resumed.feed(more).tobytes()
    assert_states_identical(tiny_model, stream, resumed)


def test_fresh_stream_round_trips(tiny_model, tmp_path):
    Stream(tiny_model).save(tmp_path / "empty.state")
    stream = Stream.load(tiny_model, tmp_path / "empty.state")
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
    assert meta["model_id"] == tiny_model.model_id and meta["graph_format"] == "2"
    assert meta["checksum"].startswith("sha256:")
    expected = {"memory", "norm", "memory_acc", "norm_acc", "past_key", "past_value"}
    assert expected | {"tokens_seen", "logits"} == set(header) - {"__metadata__"}
    assert header["past_key"]["shape"] == [1, 2, 2, 32 - 1, 16]  # the ring: W - 1 slots
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed

    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    tensors = safetensors_numpy.load_file(str(path))
    np.testing.assert_array_equal(tensors["tokens_seen"], [50])
    np.testing.assert_array_equal(
        tensors["memory"], fed_stream(tiny_model).state.to_host()["memory"]
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
        Stream.load(tiny_model, flipped)

    truncated = tmp_path / "truncated.state"
    truncated.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StateFileError, match="corrupt state file"):
        Stream.load(tiny_model, truncated)
    truncated.write_bytes(path.read_bytes()[:20])
    with pytest.raises(StateFileError, match="truncated header"):
        Stream.load(tiny_model, truncated)

    with pytest.raises(StateFileError, match="no such state file"):
        Stream.load(tiny_model, tmp_path / "missing.state")

    other = InfiniModel(onnx_factory("linear", False)[1], threads=1)
    with pytest.raises(StateFileError, match="another model"):
        Stream.load(other, path)


def test_saved_state_with_nan_is_refused(tiny_model, tmp_path):
    from infini_onnx.runtime import statefile

    stream = fed_stream(tiny_model)
    host = stream.state.to_host()
    host["memory"] = host["memory"].copy()
    host["memory"][0, 0, 0, 0, 0] = np.nan
    statefile.save_state(tmp_path / "nan.state", host, tiny_model.model_id, "fp32", 2)
    with pytest.raises(StateFileError, match="NaN or inf"):
        Stream.load(tiny_model, tmp_path / "nan.state")


def rewrite_header(path, edit) -> None:
    """Apply edit(header) to a state file's JSON header, keeping its data and checksum."""
    header, data = read_header(path)
    edit(header)
    write_header(path, header, data)


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h["__metadata__"].update(variant="int8"),
        lambda h: h["__metadata__"].update(note="added"),
        lambda h: h["memory"].update(shape=h["memory"]["shape"][::-1]),
        lambda h: h["tokens_seen"].update(dtype="F64"),
        lambda h: h.update(norm=h["norm_acc"], norm_acc=h["norm"]),  # swapped names
    ],
    ids=["variant", "extra-metadata", "shape", "dtype", "swapped-tensors"],
)
def test_any_header_edit_is_detected(tiny_model, tmp_path, edit):
    path = tmp_path / "s.state"
    fed_stream(tiny_model).save(path)
    rewrite_header(path, edit)
    with pytest.raises(StateFileError, match="checksum mismatch"):
        Stream.load(tiny_model, path)


def test_a_write_cut_short_keeps_the_previous_file(tiny_model, tmp_path):
    """A disk that fills up mid-write (here: a file-size limit) must leave the last saved state
    whole and loadable, and no temporary file behind."""
    import resource
    import signal

    path = tmp_path / "s.state"
    first = fed_stream(tiny_model, 40)
    first.save(path)
    saved = path.read_bytes()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(saved) // 2, limits[1]))
    try:
        with pytest.raises(StateFileError, match="cannot write"):
            fed_stream(tiny_model, 70).save(path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert path.read_bytes() == saved
    assert Stream.load(tiny_model, path).tokens_seen == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.state"]


@pytest.mark.parametrize(
    "name,shape",
    [("memory", lambda s: s[:-1] + (s[-1] - 1,)), ("past_key", lambda s: s[:3] + (40,) + s[4:])],
    ids=["memory-dim", "ring-of-another-window"],
)
def test_state_of_the_wrong_shape_is_refused(tiny_model, tmp_path, name, shape):
    from infini_onnx.runtime import statefile

    host = fed_stream(tiny_model).state.to_host()
    host[name] = np.zeros(shape(host[name].shape), host[name].dtype)
    statefile.save_state(tmp_path / "bad.state", host, tiny_model.model_id, "fp32", 2)
    with pytest.raises(StateFileError, match="not a state of this model"):
        Stream.load(tiny_model, tmp_path / "bad.state")


@pytest.mark.parametrize("fed", [0, 1, 5, 31, 32, 50, 77])
def test_checksum_and_layout_as_documented(tiny_model, tmp_path, fed):
    """docs/runtime.md: sha256 of the header without the checksum (sorted keys, no spaces),
    then the data; the header padded so that the data starts 8-byte aligned."""
    import hashlib

    path = tmp_path / "s.state"
    stream = fed_stream(tiny_model, fed) if fed else Stream(tiny_model)
    stream.save(path)
    header, data = read_header(path)
    meta = header["__metadata__"]
    assert meta["variant"] == "fp32"
    checksum = meta.pop("checksum")
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert checksum == "sha256:" + hashlib.sha256(canonical + data).hexdigest()


def test_save_into_new_directories_through_a_temporary_directory_beside_the_target(
    tiny_model, tmp_path, monkeypatch
):
    import os

    path = tmp_path / "a" / "b" / "s.state"
    renames = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renames.append(src) or replace(src, dst))
    fed_stream(tiny_model).save(path)
    assert Stream.load(tiny_model, path).tokens_seen == 50
    (tmp,) = renames
    tmp = type(path)(tmp)
    assert tmp.name == "s.state"  # in a private directory beside the target: same file system,
    assert tmp.parent.parent == path.parent  # so the rename is atomic
    assert tmp.parent.name.startswith("s.state.") and tmp.parent.name.endswith(".tmp")
    assert not tmp.parent.exists()


def test_safetensors_round_trip_keeps_dtypes_and_allows_no_tensors(tmp_path):
    from infini_onnx.runtime import statefile

    tensors = {
        "half": np.arange(6, dtype=np.float16).reshape(2, 3),
        "single": np.linspace(0, 1, 4, dtype=np.float32),
        "ids": np.array([2**40, -1], np.int64),
    }
    statefile.write_safetensors(tmp_path / "t", tensors, {"k": "v"})
    got, meta = statefile.read_safetensors(tmp_path / "t")
    assert meta["k"] == "v"
    for name, array in tensors.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name
    statefile.write_safetensors(tmp_path / "empty", {}, {})
    assert statefile.read_safetensors(tmp_path / "empty")[0] == {}


def test_a_header_cut_short_is_reported_as_truncated(tiny_model, tmp_path):
    path = tmp_path / "s.state"
    fed_stream(tiny_model).save(path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(raw[: 8 + n - 1])
    with pytest.raises(StateFileError, match="truncated header"):
        Stream.load(tiny_model, path)


def test_a_superseded_state_is_freed_without_the_garbage_collector(tiny_model):
    """States a stream leaves behind (a feed starts from a copy; decoding writes the ring in
    place) must go as soon as nothing holds them: a reference cycle kept every fed state's
    tensors until the collector ran, and `infini bench`'s peak RSS grew with the stream."""
    import gc
    import weakref

    stream = Stream(tiny_model)
    gc.disable()
    try:
        for step in ("feed", "feed", "decode"):
            before = weakref.ref(stream.state)
            if step == "feed":
                stream.feed([1, 2, 3])
            else:
                list(stream.generate([], 2, stop=[], temperature=0))
            assert before() is None, step
    finally:
        gc.enable()

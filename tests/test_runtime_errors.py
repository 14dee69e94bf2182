"""Bad input: clear errors, no crash, and the stream keeps its previous state."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from infini_onnx.runtime import (
    DeviceError,
    InfiniModel,
    InputError,
    ModelFileError,
    NonFiniteError,
    Stream,
)


def edited_copy(onnx_path: Path, out: Path, edit) -> Path:
    """A copy of an exported graph after edit(model_proto)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    edit(proto)
    onnx.save(proto, str(out))
    return out


def set_metadata(key: str, value: str | None):
    """An edit that sets (or with None removes) one metadata entry."""

    def edit(proto) -> None:
        props = {p.key: p.value for p in proto.metadata_props}
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
        del proto.metadata_props[:]
        for k, v in props.items():
            proto.metadata_props.add(key=k, value=v)

    return edit


def poison_embedding(token: int):
    """An edit that makes the embedding row of `token` inf (NaN downstream)."""

    def edit(proto) -> None:
        from onnx import numpy_helper

        gathers = {n.input[0] for n in proto.graph.node if n.op_type == "Gather"}
        for init in proto.graph.initializer:
            if init.name in gathers and len(init.dims) == 2 and "embed" in init.name:
                table = numpy_helper.to_array(init).copy()
                table[token] = np.inf
                init.CopyFrom(numpy_helper.from_array(table, init.name))
                return
        raise AssertionError("no embedding table found")

    return edit


@pytest.mark.parametrize(
    "tokens, message",
    [
        ([1, 2, 258], "token id 258 outside the vocabulary"),
        ([-1], "token id -1 outside the vocabulary"),
        (np.array([1.0, 2.0]), "must be integers"),
        ([], "empty input"),
        (iter([]), "empty input"),
        ([[], []], "empty input"),
        ([list(range(40)), [7, 300]], "token id 300"),  # after a whole segment was run
        ("text", "expected a sequence of token ids"),
    ],
)
def test_bad_tokens_leave_the_stream_intact(tiny_model, tokens, message):
    stream = Stream(tiny_model)
    stream.feed([5, 6, 7])
    before = stream.state
    with pytest.raises(InputError, match=message):
        stream.feed(tokens)
    assert stream.state is before and stream.tokens_seen == 3


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ],
)
def test_bad_generation_options(tiny_model, options, message):
    with pytest.raises(InputError, match=message):
        Stream(tiny_model).generate("hi", **options)


def test_bad_prompt_leaves_the_stream_intact(tiny_model):
    stream = Stream(tiny_model)
    stream.feed([1, 2])
    before = stream.state
    with pytest.raises(InputError, match="outside the vocabulary"):
        list(stream.generate([1, 999], max_new_tokens=3))
    assert stream.state is before


def test_nan_in_the_state_is_detected_and_the_last_good_state_kept(tiny_model, tiny_onnx, tmp_path):
    path = edited_copy(tiny_onnx[1], tmp_path / "poisoned.onnx", poison_embedding(65))
    poisoned = InfiniModel(path, threads=1)
    stream = Stream(poisoned)
    stream.feed([1, 2, 3])
    before = stream.state
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        stream.feed([4, 65, 5])
    assert stream.state is before
    with pytest.raises(NonFiniteError):
        stream.feed([*range(40), 65])  # after a whole segment: the feed is all or nothing
    assert stream.state is before
    stream.feed([4, 5])
    clean = Stream(tiny_model)
    clean.feed([1, 2, 3, 4, 5])
    np.testing.assert_allclose(stream.logits, clean.logits, atol=1e-6)


def test_missing_non_onnx_and_truncated_model_files(tiny_onnx, tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        InfiniModel(tmp_path / "missing.onnx")
    text = tmp_path / "text.onnx"
    text.write_text("not a model")
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        InfiniModel(text)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(Path(tiny_onnx[1]).read_bytes()[:-5000])
    with pytest.raises(ModelFileError, match="truncated"):
        InfiniModel(truncated)


def test_metadata_missing_or_of_unknown_version(tiny_onnx, tmp_path):
    bare = edited_copy(
        tiny_onnx[1], tmp_path / "bare.onnx", set_metadata("infini.format_version", None)
    )
    with pytest.raises(ModelFileError, match="not a step graph exported by infini-onnx"):
        InfiniModel(bare)
    future = edited_copy(
        tiny_onnx[1], tmp_path / "v3.onnx", set_metadata("infini.format_version", "3")
    )
    with pytest.raises(ModelFileError, match="format version 3 is not supported"):
        InfiniModel(future)


def without_tokenizer(proto) -> None:
    """Metadata as an export of a model directory without tokenizer.json writes it (signed)."""
    from infini_onnx.stepgraph.metadata import StepGraphInfo

    info = StepGraphInfo.from_props({p.key: p.value for p in proto.metadata_props}, "x")
    del proto.metadata_props[:]
    for k, v in dataclasses.replace(info, tokenizer_json=None).to_props().items():
        proto.metadata_props.add(key=k, value=v)


def test_model_without_tokenizer_works_on_ids(tiny_onnx, tmp_path):
    path = edited_copy(tiny_onnx[1], tmp_path / "ids.onnx", without_tokenizer)
    model = InfiniModel(path, threads=1)
    assert model.tokenizer is None
    stream = Stream(model)
    stream.feed([1, 2, 3])
    with pytest.raises(InputError, match="no tokenizer"):
        stream.feed_text("hello")
    with pytest.raises(InputError, match="no tokenizer"):
        stream.generate("hello")
    assert stream.tokens_seen == 3


def relabelled(variant: str):
    """An edit that signs the metadata with another variant name (as a newer or a careless
    tool would write it)."""

    def edit(proto) -> None:
        from infini_onnx.stepgraph.metadata import StepGraphInfo

        info = StepGraphInfo.from_props({p.key: p.value for p in proto.metadata_props}, "x")
        del proto.metadata_props[:]
        for k, v in dataclasses.replace(info, variant=variant).to_props().items():
            proto.metadata_props.add(key=k, value=v)

    return edit


def test_a_variant_must_be_in_the_table_and_match_its_cache(tiny_onnx, tmp_path):
    """The runtime reads the variant table: an unknown variant, or a graph whose cache dtype is
    not its variant's, is refused with one line before any stream starts."""
    unknown = edited_copy(tiny_onnx[1], tmp_path / "int2.onnx", relabelled("int2"))
    with pytest.raises(ModelFileError, match="unknown variant 'int2'.*upgrade infini-onnx"):
        InfiniModel(unknown)
    half = edited_copy(tiny_onnx[1], tmp_path / "fp16.onnx", relabelled("fp16"))
    with pytest.raises(ModelFileError, match=r"a fp16 graph with a tensor\(float\) cache"):
        InfiniModel(half)
    assert InfiniModel(edited_copy(tiny_onnx[1], tmp_path / "q.onnx", relabelled("int4")))


def test_unavailable_device(tiny_onnx):
    with pytest.raises(DeviceError, match="unknown device"):
        InfiniModel(tiny_onnx[1], device="tpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(DeviceError, match="onnxruntime-gpu"):
            InfiniModel(tiny_onnx[1], device="cuda")


@pytest.mark.parametrize("field", ["new_key", "new_value", "memory_acc_out", "norm_acc_out"])
def test_non_finite_write_to_the_state_is_refused_though_logits_are_finite(tiny_onnx, field):
    """A NaN that reaches only the cache or the accumulators (not the logits) must not be
    committed: the next segment would read it, and the last good state would be gone."""
    model = InfiniModel(tiny_onnx[1], threads=1)
    run = model.layout.device.run

    def poisoned_run(input_ids, num_logits, state):
        out = run(input_ids, num_logits, state)
        value = out.state[field].copy()
        value[0, 0, 0, -1] = np.nan  # the newest new row; an accumulator's last row
        return dataclasses.replace(out, state={**out.state, field: value})

    stream = Stream(model)
    stream.feed([1, 2, 3])
    before = stream.state
    model.layout.device.run = poisoned_run
    with pytest.raises(NonFiniteError, match="keeps its last good state"):
        stream.feed([4, 5])
    assert stream.state is before

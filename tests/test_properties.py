"""Property-based tests (hypothesis, derandomized): whatever a file or a caller hands us, the
answer is a result or the project's own one-line error (an InfiniError), never a traceback; and
the format-2 ring keeps the last tokens whatever the call."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from statefiles import read_header, write_header

from infini_onnx import modeldir
from infini_onnx.config import InfiniConfig, preset_config
from infini_onnx.errors import InfiniError, InputError, ModelFileError, StateFileError
from infini_onnx.runtime import InfiniModel, Stream
from infini_onnx.stepgraph import names
from infini_onnx.stepgraph.metadata import StepGraphInfo, digest
from infini_onnx.stepgraph.state_spec import FORMAT_1, FORMAT_2, LATEST, ring_slots

FAST = settings(
    derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)

# JSON values of every kind, the awkward ones included.
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False)  # training flushes them
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
BASE_CONFIG = preset_config("tiny").to_dict()
READ = {"1": FORMAT_1, "2": FORMAT_2}  # the format versions this infini-onnx reads
SIGN = "<sign>"  # a digest value the metadata test replaces with the true digest


def outcome(call) -> object:
    """call() or the InfiniError it raised; any other exception fails the test."""
    try:
        return call()
    except InfiniError as e:
        assert str(e) and "\n" not in str(e), repr(e)  # one line
        return e


@settings(FAST, max_examples=1000)
@given(
    st.dictionaries(st.sampled_from([*BASE_CONFIG, "extra"]), json_values, max_size=4),
    st.sets(st.sampled_from(list(BASE_CONFIG)), max_size=2),
)
def test_config_json(changes, removed):
    data = {k: v for k, v in {**BASE_CONFIG, **changes}.items() if k not in removed}
    config = outcome(lambda: InfiniConfig.from_dict(data))
    if isinstance(config, InfiniConfig):
        assert all(math.isfinite(x) for x in (config.rms_norm_eps, config.rope_theta))
        assert config.num_attention_heads % config.num_key_value_heads == 0
        assert config.local_window == data.get("local_window")  # absent: None, no window
        assert config.local_window is None or config.local_window >= 1


metadata = st.fixed_dictionaries(
    {},
    optional={
        names.KEY_FORMAT_VERSION: st.sampled_from(["1", "2", "3", ""]) | st.text(max_size=3),
        names.KEY_CONFIG: st.just(json.dumps(BASE_CONFIG)) | json_values.map(json.dumps),
        names.KEY_VARIANT: st.text(max_size=8),
        names.KEY_MODEL_ID: st.text(max_size=8),
        names.KEY_TOKENIZER: st.text(max_size=8),
        names.KEY_DIGEST: st.just(SIGN) | st.text(max_size=8),
    },
)


@settings(FAST, max_examples=1000)
@given(metadata)
def test_step_graph_metadata(props):
    if props.get(names.KEY_DIGEST) == SIGN:  # signed: the other keys are what is checked
        props[names.KEY_DIGEST] = digest(props)
    info = outcome(lambda: StepGraphInfo.from_props(props, "x.onnx"))
    if isinstance(info, StepGraphInfo):
        version = props[names.KEY_FORMAT_VERSION]
        assert version in READ and info.spec is READ[version]


@settings(FAST, max_examples=500)
@given(st.sampled_from(list(READ)), json_values)
def test_step_graph_config_in_metadata(version, config):
    props = {names.KEY_FORMAT_VERSION: version, names.KEY_MODEL_ID: "0" * 64}
    props[names.KEY_CONFIG] = json.dumps({**BASE_CONFIG, "segment_len": config})
    props[names.KEY_DIGEST] = digest(props)  # signed: the config itself is what is checked
    outcome(lambda: StepGraphInfo.from_props(props, "x.onnx"))


@settings(FAST, max_examples=300)
@given(st.integers(-3, 12) | st.integers(-(2**70), 2**70))
def test_signed_format_versions(version):
    """Metadata signed for format version n (as an infini-onnx of format n writes it): 1 and 2
    are read, each with its own state contract; any other is refused as not supported."""
    spec = replace(LATEST, version=version)
    props = StepGraphInfo(preset_config("tiny"), "fp32", "0" * 64, spec=spec).to_props()
    info = outcome(lambda: StepGraphInfo.from_props(props, "x.onnx"))
    if str(version) in READ:
        assert isinstance(info, StepGraphInfo) and info.spec is READ[str(version)]
    else:
        assert isinstance(info, ModelFileError) and "is not supported" in str(info)


@settings(FAST, max_examples=500)
@given(st.sampled_from(["2", "3", "0", "01", "2.0", " 2", "+2", "\u0662"]) | st.text(max_size=4))
def test_format_version_strings(version):
    """Only the exact strings "1" and "2" are versions this infini-onnx reads (in metadata
    signed with the version string)."""
    props = StepGraphInfo(preset_config("tiny"), "fp32", "0" * 64).to_props()
    props[names.KEY_FORMAT_VERSION] = version
    props[names.KEY_DIGEST] = digest(props)
    info = outcome(lambda: StepGraphInfo.from_props(props, "x.onnx"))
    if version in READ:
        assert isinstance(info, StepGraphInfo) and info.spec is READ[version]
    else:
        assert isinstance(info, ModelFileError) and "is not supported" in str(info)


@settings(FAST, max_examples=500)
@given(st.integers(0, 2**62), st.integers(0, 100), st.integers(0, 40))
def test_ring_slots_keep_the_last_tokens(position, tokens, slots):
    """The rows a call writes at ring_slots leave the ring as writing each of its tokens in turn
    at slot (position + i) mod K would: every slot holds the latest token of its residue."""
    want = ["old"] * slots
    for i in range(tokens if slots else 0):
        want[(position + i) % slots] = i
    where, kept = ring_slots(position, tokens, slots)
    assert kept == min(tokens, slots) == len(where)
    got = ["old"] * slots
    for row, slot in zip(range(tokens - kept, tokens), where, strict=True):
        got[slot] = row
    assert got == want


shard_names = st.sampled_from(
    ["model-00001-of-00002.safetensors", "../outside.safetensors", "/etc/passwd", "", ".", "sub"]
)


@pytest.fixture(scope="module")
def sharded_dir(model_dir_factory, tmp_path_factory):
    from infini_onnx.model import InfiniLlamaForCausalLM

    path = tmp_path_factory.mktemp("sharded") / "m"
    model = InfiniLlamaForCausalLM.from_pretrained(model_dir_factory())
    model.save_pretrained(path, max_shard_bytes=100_000)
    (path.parent / "outside.safetensors").write_bytes(b"x")
    (path / "sub").mkdir()
    return path


@settings(FAST, max_examples=300)
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"weight_map": st.dictionaries(st.text(max_size=4), shard_names, max_size=3)}
        ),
    )
)
def test_index_files(sharded_dir, index):
    path = sharded_dir / modeldir.INDEX
    original = path.read_text()
    try:
        path.write_text(json.dumps(index))
        files = outcome(lambda: modeldir.weight_files(sharded_dir))
        if isinstance(files, list):
            root = sharded_dir.resolve()
            assert all(root in f.resolve().parents for f in files)
            outcome(lambda: modeldir.model_id(sharded_dir))
    finally:
        path.write_text(original)


@pytest.fixture(scope="module")
def saved_state(tiny_onnx, tmp_path_factory):
    model = InfiniModel(tiny_onnx[1], threads=1)
    stream = Stream(model)
    stream.feed(np.arange(40) % 250)
    path = tmp_path_factory.mktemp("state") / "s.state"
    stream.save(path)
    return model, path, *read_header(path)


@settings(FAST, max_examples=400)
@given(
    st.sampled_from([*LATEST.names, "tokens_seen", "logits", "__metadata__"]),
    st.sampled_from(["dtype", "shape", "data_offsets", None]),
    json_values,
    st.booleans(),
)
def test_state_file_headers(saved_state, tmp_path_factory, tensor, field, value, resign):
    model, path, header, data = saved_state
    header = json.loads(json.dumps(header))
    if field is None or tensor == "__metadata__":
        header[tensor] = value
    else:
        header[tensor][field] = value
    crafted = path.with_name("crafted.state")
    write_header(crafted, header, data, resign)  # resign: as an attacker would
    result = outcome(lambda: Stream.load(model, crafted))
    assert isinstance(result, (Stream, StateFileError)), result


token_inputs = st.one_of(
    json_values,
    st.lists(st.integers(min_value=-(2**64), max_value=2**64), max_size=5),
    st.lists(st.lists(st.integers(min_value=0, max_value=300), max_size=3), max_size=3),
    st.builds(
        lambda shape, dtype: np.zeros(shape, dtype),
        st.lists(st.integers(0, 3), max_size=3).map(tuple),
        st.sampled_from([np.int64, np.int8, np.uint64, np.float32, np.bool_]),
    ),
)


@settings(FAST, max_examples=300)
@given(token_inputs)
def test_feed_inputs(tiny_model, tokens):
    stream = Stream(tiny_model)
    result = outcome(lambda: stream.feed(tokens))
    if isinstance(result, InfiniError):
        assert isinstance(result, InputError) and stream.tokens_seen == 0


@settings(FAST, max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["temperature", "top_k", "top_p", "seed"]), json_leaves, max_size=3
    ),
    st.one_of(st.integers(-3, 3), json_leaves),
)
def test_generate_options(tiny_model, options, max_new_tokens):
    stream = Stream(tiny_model)
    outcome(lambda: list(stream.generate([1, 2], max_new_tokens=max_new_tokens, **options)))

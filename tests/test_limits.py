"""Sizes and values past the documented bounds (docs/export.md, "Limits"; docs/design.md, "State
files"): refused up front with one line, before any large allocation or any write.

The numbers in the test names are the cases of the issue."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from clirun import infini, one_line_error
from statefiles import read_header, write_header

from infini_onnx.config import MAX_SEGMENT_LEN, PRESETS, InfiniConfig, preset_config
from infini_onnx.errors import InputError, ModelDirError, ModelFileError
from infini_onnx.runtime import InfiniModel, StateFileError, Stream, statefile
from infini_onnx.stepgraph.metadata import StepGraphInfo, digest
from infini_onnx.stepgraph.names import KEY_CONFIG, KEY_DIGEST

ADDRESS_SPACE = 4 << 30  # a capped CLI run: an export takes 1.2 GB, the refusals far less
HUGE = 10**400  # a 401-digit integer
MAX_TOKENS = 2**63 - 1  # what a state file's I64 tokens_seen stores


def capped_one_line_error(words: str, *args: object) -> None:
    """`infini ARGS` in a process whose address space is ADDRESS_SPACE fails with one line: the
    refusal comes before any large allocation (which would die with a MemoryError traceback)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    command = [sys.executable, "-c", "from infini_onnx.cli import main; main()", *map(str, args)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, preexec_fn=cap, check=False
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("error: ") and words in done.stderr, done.stderr


def model_dir_with(source: Path, out: Path, **changes) -> Path:
    """A copy of a model directory with config.json keys changed."""
    shutil.copytree(source, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **changes}))
    return out


def graph_with(source: Path, out: Path, edit: Callable[[dict[str, str]], None]) -> Path:
    """A copy of a step graph after edit(metadata); a digest left in it is recomputed, as an
    attacker would."""
    import onnx

    proto = onnx.load(str(source))
    props = {p.key: p.value for p in proto.metadata_props}
    edit(props)
    if KEY_DIGEST in props:
        props[KEY_DIGEST] = digest(props)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(out))
    return out


def config_edit(**changes) -> Callable[[dict[str, str]], None]:
    """A metadata edit that changes keys of the config."""

    def edit(props: dict[str, str]) -> None:
        props[KEY_CONFIG] = json.dumps({**json.loads(props[KEY_CONFIG]), **changes})

    return edit


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a few words")
    return path


# --- 1. segment_len is bounded: the N x N attention of a segment must fit ----------------------


def test_1_init_refuses_a_segment_past_the_bound(tmp_path):
    capped_one_line_error(
        f"'segment_len' must be <= {MAX_SEGMENT_LEN}",
        "init", tmp_path / "m", "--segment-len", "1000000",
    )  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_1_export_refuses_a_config_segment_past_the_bound(model_dir_factory, tmp_path):
    model_dir = model_dir_with(model_dir_factory(), tmp_path / "m", segment_len=10**8)
    capped_one_line_error("'segment_len' must be <=", "export", model_dir, tmp_path / "o.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_1_the_runtime_refuses_a_metadata_segment_past_the_bound(tiny_onnx, text_file, tmp_path):
    graph = graph_with(tiny_onnx[1], tmp_path / "g.onnx", config_edit(segment_len=10**6))
    state = tmp_path / "s.state"
    capped_one_line_error(
        "metadata: key 'segment_len' must be <=", "stream", graph, text_file, "--save-state", state
    )
    assert not state.exists()


def test_1_the_bound_is_far_above_every_preset_and_reachable():
    assert MAX_SEGMENT_LEN >= 8 * max(p["segment_len"] for p in PRESETS.values())
    assert preset_config("tiny", segment_len=MAX_SEGMENT_LEN).segment_len == MAX_SEGMENT_LEN
    with pytest.raises(ModelDirError, match="segment_len"):
        preset_config("tiny", segment_len=MAX_SEGMENT_LEN + 1)
    shipped = Path(__file__).parents[1] / "examples" / "models"
    for config in shipped.glob("*/config.json"):
        assert InfiniConfig.from_json_file(config).segment_len <= MAX_SEGMENT_LEN


# --- 2. integers past 64 bits --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["vocab_size", "segment_len", "rms_norm_eps", "bos_token_id"])
def test_2_a_401_digit_integer_in_config_json_is_one_line(model_dir_factory, tmp_path, key):
    model_dir = model_dir_with(model_dir_factory(), tmp_path / "m", **{key: HUGE})
    result = infini("export", model_dir, tmp_path / "o.onnx", "--no-validate")
    one_line_error(result, f"key {key!r} must fit in 64 bits, got an integer of 1329 bits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("key", ["hidden_size", "rope_theta", "eos_token_id"])
def test_2_a_401_digit_integer_in_graph_metadata_is_one_line(tiny_onnx, text_file, tmp_path, key):
    graph = graph_with(tiny_onnx[1], tmp_path / "g.onnx", config_edit(**{key: HUGE}))
    result = infini("stream", graph, text_file, "--save-state", tmp_path / "s.state")
    one_line_error(result, f"metadata: key {key!r} must fit in 64 bits")
    assert not (tmp_path / "s.state").exists()


# --- 3. rms_norm_eps and rope_theta in ranges where the math works ------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("rms_norm_eps", 1e300),
        ("rms_norm_eps", 0.11),
        ("rms_norm_eps", 1e-13),
        ("rope_theta", 0.5),
        ("rope_theta", 1e13),
        ("rope_theta", float("nan")),
    ],
)
def test_3_float_keys_out_of_range_are_refused(model_dir_factory, tmp_path, key, value):
    with pytest.raises(ModelDirError, match=f"key '{key}' must be in"):
        preset_config("tiny", **{key: value})
    model_dir = model_dir_with(model_dir_factory(), tmp_path / "m", **{key: value})
    one_line_error(infini("export", model_dir, tmp_path / "o.onnx"), f"key {key!r} must be in")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_3_the_metadata_floats_are_checked_too(tiny_onnx, text_file, tmp_path):
    graph = graph_with(tiny_onnx[1], tmp_path / "g.onnx", config_edit(rms_norm_eps=1e300))
    one_line_error(infini("stream", graph, text_file), "metadata: key 'rms_norm_eps' must be in")


@pytest.mark.parametrize(
    "change",
    [dict(rms_norm_eps=1e-12), dict(rms_norm_eps=0.1), dict(rope_theta=1.0), dict(rope_theta=1e12)],
    ids=["eps-low", "eps-high", "theta-low", "theta-high"],
)
def test_3_at_the_bounds_the_logits_are_finite_and_follow_the_input(change):
    import torch

    from infini_onnx.model import InfiniLlamaForCausalLM

    torch.manual_seed(0)
    model = InfiniLlamaForCausalLM(preset_config("tiny", **change))
    model.init_weights(0)
    with torch.inference_mode():
        a, _ = model(torch.tensor([[1, 2, 3, 4]]))
        b, _ = model(torch.tensor([[9, 8, 7, 6]]))
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a[0, -1] - b[0, -1]).abs().max() > 1e-3


# --- 4. the metadata digest is required ----------------------------------------------------------


def drop_digest(edit: Callable[[dict[str, str]], None] | None = None):
    def edited(props: dict[str, str]) -> None:
        if edit:
            edit(props)
        del props[KEY_DIGEST]

    return edited


@pytest.mark.parametrize(
    "edit",
    [drop_digest(), drop_digest(config_edit(rms_norm_eps=1e-3))],
    ids=["only-deleted", "edited-and-deleted"],
)
def test_4_a_graph_without_digest_is_refused(tiny_onnx, text_file, tmp_path, edit):
    graph = graph_with(tiny_onnx[1], tmp_path / "g.onnx", edit)
    with pytest.raises(ModelFileError, match="the metadata has no digest"):
        InfiniModel(graph)
    result = infini("stream", graph, text_file, "--save-state", tmp_path / "s.state")
    one_line_error(result, f"the metadata has no digest ({KEY_DIGEST})")
    one_line_error(infini("quantize", graph, tmp_path / "q.onnx"), "the metadata has no digest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "t.txt"]


def test_4_every_writer_and_shipped_graph_signs_its_metadata(tiny_onnx, tmp_path):
    import onnx

    from infini_onnx.serve.triton import write_repository

    served = write_repository(tiny_onnx[1], tmp_path / "repo") / "1" / "model.onnx"
    shipped = list((Path(__file__).parents[1] / "infini_onnx" / "data").glob("*.onnx"))
    assert shipped
    for path in (tiny_onnx[1], served, *shipped):
        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        assert KEY_DIGEST in props, path
        StepGraphInfo.from_props(props, str(path))  # the digest checks out


# --- 5. tokens_seen stays within what a state file stores ----------------------------------------


def stream_near_the_end(model: InfiniModel, tmp_path: Path, left: int) -> Stream:
    """A stream `left` tokens short of MAX_TOKENS (loaded from a state file, the only way)."""
    N = model.config.segment_len
    stream = Stream(model)
    stream.feed(np.arange((MAX_TOKENS - left) % N) + 1)
    host = stream.state.to_host()
    host["tokens_seen"] = np.array([MAX_TOKENS - left])
    statefile.save_state(
        tmp_path / "near.state", host, model.model_id, model.variant, model.format_version
    )
    return Stream.load(model, tmp_path / "near.state")


def test_5_a_feed_past_the_stored_count_is_refused_keeping_the_state(tiny_model, tmp_path):
    stream = stream_near_the_end(tiny_model, tmp_path, 3)
    stream.feed([1, 2, 3])  # up to the last count a file stores
    stream.save(tmp_path / "full.state")
    assert Stream.load(tiny_model, tmp_path / "full.state").tokens_seen == MAX_TOKENS
    before = stream.state
    with pytest.raises(InputError, match="the most a state file stores"):
        stream.feed([4])
    with pytest.raises(InputError, match="the most a state file stores"):
        list(stream.generate(max_new_tokens=1))
    assert stream.state is before and stream.tokens_seen == MAX_TOKENS


def test_5_the_cli_refuses_and_saves_nothing(tiny_onnx, tiny_model, text_file, tmp_path):
    stream_near_the_end(tiny_model, tmp_path, 5)
    resume, saved = tmp_path / "near.state", tmp_path / "after.state"
    result = infini("stream", tiny_onnx[1], text_file, "--resume", resume, "--save-state", saved)
    one_line_error(result, "the most a state file stores")
    assert not saved.exists()


# --- 6. tensor shapes a state file cannot hold ---------------------------------------------------


SHAPES = {
    "100-dimensions": ("tokens_seen", [1] * 100, "100 dimensions, at most 8"),
    "empty-but-huge": ("past_key", [0, 2**62, 2**62], "shape larger than the"),
}


@pytest.mark.parametrize("case", SHAPES, ids=list(SHAPES))
def test_6_crafted_shapes_are_refused_before_allocation(tiny_onnx, tiny_model, tmp_path, case):
    name, shape, message = SHAPES[case]
    path = tmp_path / "s.state"
    Stream(tiny_model).save(path)  # an empty cache: past_key holds no bytes
    header, data = read_header(path)
    header[name]["shape"] = shape
    write_header(path, header, data, resign=True)
    with pytest.raises(StateFileError, match=f"tensor '{name}': {message}"):
        Stream.load(tiny_model, path)
    result = infini("stream", tiny_onnx[1], "--resume", path, "--save-state", tmp_path / "o.state")
    one_line_error(result, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.state"]

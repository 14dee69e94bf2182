"""Hostile inputs and outputs (issue 12): nothing lost, nothing leaked, one-line errors.

The numbers in the test names are the cases of the issue."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clirun import infini, one_line_error
from statefiles import read_header, write_header

from infini_onnx.errors import InfiniError, InputError, ModelDirError, ModelFileError
from infini_onnx.runtime import InfiniModel, StateFileError, Stream, StreamBatch
from infini_onnx.stepgraph.metadata import digest
from infini_onnx.stepgraph.names import KEY_DIGEST

TEXT = "Hostile users write strange things. " * 10


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    return path


# --- 1. outputs that are not regular files are never replaced ------------------------------------


def test_1_a_fifo_or_device_is_not_replaced(tiny_onnx, text_file, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = infini("stream", tiny_onnx[1], text_file, "--save-state", fifo)
    one_line_error(result, "not a regular file")
    assert "tokens" not in result.output  # refused before streaming
    one_line_error(infini("export", tiny_onnx[0], fifo, "--no-validate"), "not a regular file")
    one_line_error(infini("quantize", tiny_onnx[1], fifo), "not a regular file")
    assert fifo.is_fifo()
    with pytest.raises(StateFileError, match="not a regular file"):
        Stream(InfiniModel(tiny_onnx[1], threads=1)).save("/dev/null")
    assert Path("/dev/null").is_char_device()


# --- 2, 3. reads confined to the model directory -------------------------------------------------


def test_2_a_symlinked_tokenizer_is_not_read(tiny_onnx, tmp_path):
    from infini_onnx.export.exporter import export_model

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_onnx[0], model_dir)
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    (model_dir / "tokenizer.json").unlink()
    (model_dir / "tokenizer.json").symlink_to(secret)
    with pytest.raises(ModelDirError, match="resolves outside the model directory"):
        export_model(model_dir, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_3_shards_outside_the_directory_are_refused(model_dir_factory, tmp_path, where):
    from infini_onnx import modeldir
    from infini_onnx.model import InfiniLlamaForCausalLM

    model = InfiniLlamaForCausalLM.from_pretrained(model_dir_factory())
    model_dir = tmp_path / "a" / "m"
    model.save_pretrained(model_dir, max_shard_bytes=100_000)
    index = json.loads((model_dir / modeldir.INDEX).read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    outside = tmp_path / "a" / shard
    shutil.move(model_dir / shard, outside)
    name = f"../{shard}" if where == "parent" else str(outside)
    index["weight_map"] = {k: name if v == shard else v for k, v in index["weight_map"].items()}
    (model_dir / modeldir.INDEX).write_text(json.dumps(index))
    for load in (InfiniLlamaForCausalLM.from_pretrained, modeldir.model_id):
        with pytest.raises(ModelDirError, match="outside the model directory"):
            load(model_dir)


def test_3_model_id_covers_the_index_and_only_loaded_shards(model_dir_factory, tmp_path):
    from infini_onnx import modeldir
    from infini_onnx.model import InfiniLlamaForCausalLM

    model = InfiniLlamaForCausalLM.from_pretrained(model_dir_factory())
    model.save_pretrained(tmp_path / "m", max_shard_bytes=100_000)
    before = modeldir.model_id(tmp_path / "m")
    (tmp_path / "m" / "unused.safetensors").write_bytes(b"not loaded")
    assert modeldir.model_id(tmp_path / "m") == before
    index = tmp_path / "m" / modeldir.INDEX
    index.write_text(index.read_text() + " ")
    assert modeldir.model_id(tmp_path / "m") != before


# --- 4. an output is never one of the inputs -----------------------------------------------------


def test_4_outputs_that_are_inputs_are_refused(tiny_onnx, text_file, tmp_path):
    model_dir, onnx_path = tiny_onnx
    saved = {p: p.read_bytes() for p in (onnx_path, model_dir / "model.safetensors")}
    one_line_error(infini("quantize", onnx_path, onnx_path), "is the input")
    result = infini("stream", onnx_path, text_file, "--save-state", onnx_path)
    one_line_error(result, "is the input")
    one_line_error(
        infini("export", model_dir, model_dir / "model.safetensors", "--no-validate"),
        "is the input",
    )
    link = tmp_path / "link.onnx"
    link.symlink_to(onnx_path)
    one_line_error(infini("quantize", onnx_path, link), "is the input")
    assert all(p.read_bytes() == data for p, data in saved.items())


# --- 5. batched rows are independent for every variant -------------------------------------------


@pytest.fixture(scope="module")
def int8_onnx(tiny_onnx, tmp_path_factory):
    from infini_onnx.quantize.quantizer import quantize_model
    from infini_onnx.quantize.targets import resolve

    return quantize_model(tiny_onnx[1], tmp_path_factory.mktemp("q") / "int8.onnx", resolve())


def test_5_int8_batch_rows_equal_streams_run_alone(int8_onnx):
    model = InfiniModel(int8_onnx, threads=1)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 256, (3, 70))
    ids[1] = 255 - ids[1] // 4  # rows with very different activation ranges
    batch = StreamBatch([Stream(model) for _ in range(3)])
    logits = batch.feed(ids)
    tokens = np.stack(list(batch.generate(20, temperature=0)), axis=1)
    for row in range(3):
        alone = Stream(model)
        np.testing.assert_array_equal(logits[row], alone.feed(ids[row]))
        assert list(alone.generate(max_new_tokens=20, temperature=0, stop=())) == list(tokens[row])
        np.testing.assert_array_equal(
            batch.split()[row].state.to_host()["memory"], alone.state.to_host()["memory"]
        )


# --- 6. save errors come before the work, as one line --------------------------------------------


@pytest.mark.parametrize("target", ["file/x.state", "/proc/x.state"])
def test_6_an_unwritable_save_state_is_refused_before_streaming(tiny_onnx, text_file, target):
    target = target.replace("file", str(text_file))  # a parent that is a file
    result = infini("stream", tiny_onnx[1], text_file, "--save-state", target, "--no-progress")
    one_line_error(result, "cannot write")


def test_6_a_read_only_directory_is_refused_before_streaming(tiny_onnx, text_file, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = infini("stream", tiny_onnx[1], text_file, "--save-state", locked / "s.state")
    one_line_error(result, "cannot write")


# --- 7. metadata must describe the graph ---------------------------------------------------------


def edited_metadata(onnx_path: Path, out: Path, **changes) -> Path:
    import onnx

    proto = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in proto.metadata_props}
    config = json.loads(props["infini.config"])
    config.update(changes)
    props["infini.config"] = json.dumps(config)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("change", [dict(segment_len=64), dict(vocab_size=300), dict(head_dim=8)])
def test_7_edited_metadata_is_refused(tiny_onnx, tmp_path, change):
    path = edited_metadata(tiny_onnx[1], tmp_path / "edited.onnx", **change)
    with pytest.raises(ModelFileError, match="edited after export|but the config"):
        InfiniModel(path)


def test_7_shapes_are_checked_against_the_config_of_signed_metadata(tiny_onnx, tmp_path):
    """Metadata edited and signed again (a digest catches edits, not forgeries): the graph's
    shapes still have to agree with its config."""
    import onnx

    path = edited_metadata(tiny_onnx[1], tmp_path / "edited.onnx", vocab_size=300)
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    props[KEY_DIGEST] = digest(props)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))
    with pytest.raises(ModelFileError, match="logits has shape"):
        InfiniModel(path)


# --- 8. crafted state files ----------------------------------------------------------------------


CRAFTED = {
    "huge-shape": lambda h: h["memory"].update(shape=[10**9, 10**9]),
    "far-offsets": lambda h: h["memory"].update(data_offsets=[10**12, 10**12 + 4]),
    "reversed-offsets": lambda h: h["memory"].update(
        data_offsets=h["memory"]["data_offsets"][::-1]
    ),
    "string-shape": lambda h: h["norm"].update(shape="big"),
    "unknown-dtype": lambda h: h["norm"].update(dtype="F64"),
    "list-entry": lambda h: h.update(norm=[1, 2]),
    "list-metadata": lambda h: h.update(__metadata__=["a"]),
    "missing-tensor": lambda h: h.pop("memory"),
}


@pytest.mark.parametrize("edit", CRAFTED, ids=list(CRAFTED))
def test_8_crafted_state_files_are_refused(tiny_model, tmp_path, edit):
    path = tmp_path / "s.state"
    stream = Stream(tiny_model)
    stream.feed([1, 2, 3])
    stream.save(path)
    header, data = read_header(path)
    CRAFTED[edit](header)
    write_header(path, header, data, resign=True)  # the checksum recomputed, as an attacker would
    with pytest.raises(StateFileError):
        Stream.load(tiny_model, path)


@pytest.mark.parametrize("graph", ["format 2", "format 1"])
def test_8_tokens_seen_must_fit_the_cache(tiny_model, tmp_path, graph):
    """A negative count is refused; a format-1 state's cache must also hold tokens_seen mod N
    tokens (format 2's ring has a fixed size at every position)."""
    from infini_onnx.runtime import statefile

    fixture = Path(__file__).parent / "fixtures" / "format1-tiny.onnx"
    model = tiny_model if graph == "format 2" else InfiniModel(fixture, threads=1)
    stream = Stream(model)
    stream.feed([1, 2, 3])
    bad_counts = (-1,) if graph == "format 2" else (-1, 4, 36)  # 35 fits: a segment and 3
    for bad in bad_counts:
        host = stream.state.to_host()
        host["tokens_seen"] = np.array([bad])
        statefile.save_state(
            tmp_path / "s.state", host, model.model_id, "fp32", model.format_version
        )
        with pytest.raises(StateFileError, match="tokens_seen"):
            Stream.load(model, tmp_path / "s.state")


def test_8_an_oversized_state_file_is_refused_before_it_is_read(tiny_model, tmp_path):
    path = tmp_path / "big.state"
    with path.open("wb") as f:
        f.truncate(tiny_model.layout.max_file_bytes() + 1)  # sparse: nothing is written
    with pytest.raises(StateFileError, match="more than a state of this model"):
        Stream.load(tiny_model, path)


# --- 10. raw tracebacks become one-line errors ---------------------------------------------------


def test_10_api_inputs_are_refused_with_the_projects_errors(tiny_model):
    stream = Stream(tiny_model)
    for bad in (None, 3, "abc"):
        with pytest.raises(InputError):
            stream.feed(bad)
    with pytest.raises(InputError):
        stream.feed_text(None)
    for options in (dict(top_k=2.5), dict(seed=-1), dict(temperature=1e-320), dict(top_p=True)):
        with pytest.raises(InputError):
            stream.generate("x", **options)
    with pytest.raises(InputError, match="max_new_tokens"):
        StreamBatch([Stream(tiny_model)]).generate(-1)
    assert stream.tokens_seen == 0


def test_10_cli_inputs_are_refused_as_one_line(tiny_onnx, text_file, tmp_path):
    result = infini("stream", tiny_onnx[1], tmp_path / "missing.txt")
    assert result.exit_code == 2 and "does not exist" in result.output
    one_line_error(infini("generate", tiny_onnx[1], "--seed", "-1"), "seed")
    one_line_error(infini("generate", tiny_onnx[1], "--temperature", "1e-320"), "temperature")
    result = infini("stream", tiny_onnx[1], "--resume", tmp_path)
    assert result.exit_code == 2 and "is a directory" in result.output
    with pytest.raises(StateFileError, match="is a directory"):
        Stream.load(InfiniModel(tiny_onnx[1], threads=1), tmp_path)


@pytest.mark.parametrize(
    "change",
    [
        dict(rms_norm_eps=float("nan")),
        dict(rope_theta=float("inf")),
        dict(segment_len=10**12),
        dict(hidden_size=10**9),
    ],
    ids=["eps-nan", "theta-inf", "segment-1e12", "hidden-1e9"],
)
def test_10_configs_that_cannot_work_are_refused_before_allocation(change):
    from infini_onnx.config import preset_config

    with pytest.raises(ModelDirError):
        preset_config("tiny", **change)


def test_10_bad_model_directory_files_are_one_line(model_dir_factory, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(model_dir_factory(), model_dir)
    (model_dir / "tokenizer.json").write_bytes(b"\xff\xfe\x00binary")
    one_line_error(infini("export", model_dir, tmp_path / "o.onnx"), "not a tokenizer.json")
    (model_dir / "tokenizer.json").unlink()
    from infini_onnx.model import InfiniLlamaForCausalLM

    InfiniLlamaForCausalLM.from_pretrained(model_dir).save_pretrained(
        tmp_path / "sharded", max_shard_bytes=100_000
    )
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": ["a", "b"]}))
    one_line_error(infini("export", tmp_path / "sharded", tmp_path / "o.onnx"), "invalid index")


# --- 12. leftovers and misleading messages -------------------------------------------------------


def test_12_temporary_directories_of_killed_writers_are_removed(tiny_model, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"s.state.{dead.pid}.abcd1234.tmp"
    live = tmp_path / f"s.state.{os.getppid()}.wxyz5678.tmp"
    users = tmp_path / "s.state.2024.backup00.tmp"  # a name like ours, holding other files
    for d in (stale, live, users):
        d.mkdir()
        (d / "s.state").write_bytes(b"half")
    (users / "notes.txt").write_text("keep me")
    Stream(tiny_model).save(tmp_path / "s.state")
    assert not stale.exists() and live.exists()  # another writer may still own it
    assert (users / "notes.txt").read_text() == "keep me"


def test_errors_are_infini_errors():
    assert issubclass(StateFileError, InfiniError) and issubclass(ModelFileError, InfiniError)


# --- 9. quantize never leaves an unusable output -------------------------------------------------


def test_9_a_tampered_input_is_refused_before_anything_is_written(tiny_onnx, tmp_path):
    import onnx

    proto = onnx.load(str(tiny_onnx[1]))
    node = next(n for n in proto.graph.node if n.op_type == "Exp")
    node.op_type = "Relu"  # still valid ONNX, no longer the model
    node.ClearField("attribute")
    weights = next(t for t in proto.graph.initializer if len(t.dims) == 2)
    weights.dims[0] += 1  # the graph no longer fits its own weights
    onnx.save(proto, str(tmp_path / "tampered.onnx"))
    result = infini("quantize", tmp_path / "tampered.onnx", tmp_path / "q.onnx")
    one_line_error(result, "does not run in the runtime")
    assert not (tmp_path / "q.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tampered.onnx"]


def test_9_the_variant_runs_before_it_is_put_in_place(tiny_onnx, tmp_path, monkeypatch):
    from infini_onnx.quantize import modes

    def broken(model, plan, settings):
        model.graph.node[-1].op_type = "NoSuchOp"
        return model

    monkeypatch.setitem(modes.PRODUCERS, "int8", broken)
    result = infini("quantize", tiny_onnx[1], tmp_path / "q.onnx", "--eval-segments", "0")
    one_line_error(result, "int8 variant (not written) does not run")
    assert not list(tmp_path.iterdir())


# --- 11. byte-level models read the input's bytes as they are ------------------------------------


def test_11_invalid_utf8_reaches_a_byte_level_model_unchanged(tiny_onnx, tmp_path):
    data = "caf\u00e9 ".encode() + b"\xff\xfe broken \xc3" + b" end"
    (tmp_path / "in.bin").write_bytes(data)
    result = infini(
        "stream", tiny_onnx[1], tmp_path / "in.bin", "--save-state", tmp_path / "s.state"
    )
    assert result.exit_code == 0, result.output
    model = InfiniModel(tiny_onnx[1], threads=1)
    expected = Stream(model)
    expected.feed(list(data))
    resumed = Stream.load(model, tmp_path / "s.state")
    assert resumed.tokens_seen == len(data)
    np.testing.assert_array_equal(resumed.logits, expected.logits)


def test_11_other_tokenizers_refuse_invalid_utf8_unless_told_to_replace():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from infini_onnx.runtime.textio import encode_bytes, is_byte_level
    from infini_onnx.tokenizer import byte_level_tokenizer

    words = Tokenizer(models.WordLevel({"a": 0, "\ufffd": 1, "[UNK]": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    assert is_byte_level(byte_level_tokenizer()) and not is_byte_level(words)
    blocks = [b"a a \xc3", b"\xa9 a \xff a"]  # a character cut between blocks, then a bad byte
    with pytest.raises(InputError, match="not valid UTF-8 at byte 9"):
        list(encode_bytes(words, iter(blocks)))
    ids = np.concatenate(list(encode_bytes(words, iter(blocks), errors="replace")))
    assert ids.tolist() == [0, 0, 2, 0, 1, 0]


# --- a kill at any moment: the previous state always loads ---------------------------------------


def test_kill_9_during_stream_and_save_never_breaks_the_state_file(tiny_onnx, tmp_path):
    import time

    model = InfiniModel(tiny_onnx[1], threads=1)
    (tmp_path / "in.txt").write_bytes(bytes(range(32, 127)) * 2000)  # 190K tokens
    state = tmp_path / "s.state"
    infini_cli = [sys.executable, "-c", "from infini_onnx.cli import main; main()"]
    command = [*infini_cli, "stream", str(tiny_onnx[1]), str(tmp_path / "in.txt"),
               "--save-state", str(state), "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    whole = time.perf_counter() - start
    first = Stream.load(model, state).tokens_seen
    for fraction in (0.3, 0.8, 0.95, 0.99, 1.0):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(whole * fraction)
        process.kill()
        process.wait()
        assert Stream.load(model, state).tokens_seen == first  # the old or an identical new one
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "s.state"]


# --- drift: fp32 against a true float64 reference ------------------------------------------------


def test_fp32_memory_stays_within_1e5_of_a_float64_reference_over_200k_tokens(tiny_onnx):
    import torch

    from infini_onnx.model import InfiniLlamaForCausalLM

    ids = np.random.default_rng(12).integers(0, 256, 200_000)
    stream = Stream(InfiniModel(tiny_onnx[1], threads=1))
    stream.feed(ids)
    got = stream.state.to_host()["memory"]
    reference = InfiniLlamaForCausalLM.from_pretrained(tiny_onnx[0], dtype=torch.float64)
    state = None
    with torch.inference_mode():
        for chunk in np.array_split(ids, 50):
            _, state = reference(torch.from_numpy(chunk)[None], state, last_logits_only=True)
    expected = state.memory.numpy()
    assert expected.dtype == np.float64
    relative = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert relative <= 1e-5, relative


# --- found by a hostile review of the first round ---------------------------------------------


def test_every_input_is_protected_not_only_the_model(tiny_onnx, text_file, tmp_path):
    from infini_onnx.export.exporter import export_model

    ext = export_model(tiny_onnx[0], tmp_path / "ext.onnx", external_data=True)
    data = tmp_path / "ext.onnx.data"
    saved = {p: p.read_bytes() for p in (text_file, data)}
    one_line_error(infini("stream", ext, text_file, "--save-state", text_file), "is the input")
    one_line_error(infini("stream", ext, text_file, "--save-state", data), "is the input")
    one_line_error(
        infini("quantize", ext, tmp_path / "q.onnx", "--eval-segments", "1", "--report", data),
        "is the input",
    )
    one_line_error(
        infini("quantize", ext, tmp_path / "q.onnx", "--report", tmp_path / "q.onnx"), "is OUT"
    )
    assert all(p.read_bytes() == b for p, b in saved.items())
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    one_line_error(infini("init", tmp_path / "m"), "not an empty directory")


def test_prompts_empty_or_not_unicode(tiny_model, tiny_onnx):
    stream = Stream(tiny_model)
    stream.feed([1, 2, 3])
    expected = Stream(tiny_model)
    expected.feed([1, 2, 3])
    options = dict(max_new_tokens=5, temperature=0, stop=())
    assert list(stream.generate("", **options)) == list(expected.generate(**options))
    with pytest.raises(InputError, match="not valid Unicode"):
        stream.generate("\udcff")
    one_line_error(infini("generate", tiny_onnx[1], "--prompt", "\udcff"), "not valid UTF-8")

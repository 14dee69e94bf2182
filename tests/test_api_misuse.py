"""Misuse of the API and the CLI (hostile test, issue 13): one-line errors, nothing written.

Threads bounded by the machine, bounded reads of calibration text, the demo's cache key, type
checks at the public API boundary, and a closed stdin or stdout on the command line."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clirun import infini

from infini_onnx.errors import InputError
from infini_onnx.runtime import InfiniModel, Stream, StreamBatch, session_options
from infini_onnx.runtime import session as session_module
from infini_onnx.runtime.device import default_threads

CORES = default_threads()
TEXT = "A stream of misused arguments. " * 20
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE


def infini_process(*args: object) -> list[str]:
    """The argv of `infini ARGS` in a process of its own."""
    return [sys.executable, "-m", "infini_onnx", *(str(a) for a in args)]


def one_line_error(result, words: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.output
    assert words in result.stderr, result.stderr


def with_tokenizer(onnx_path: Path, out: Path, tokenizer_json: str | None) -> Path:
    """A copy of a step graph with another tokenizer in its metadata (None: no tokenizer)."""
    import onnx

    from infini_onnx.stepgraph.metadata import StepGraphInfo

    proto = onnx.load(str(onnx_path))
    info = StepGraphInfo.from_props({p.key: p.value for p in proto.metadata_props}, "graph")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(
        proto, dataclasses.replace(info, tokenizer_json=tokenizer_json).to_props()
    )
    onnx.save(proto, str(out))
    return out


@pytest.fixture(scope="module")
def model(tiny_onnx):
    return InfiniModel(tiny_onnx[1], threads=1)


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    return path


# --- 1. threads are bounded by the machine -------------------------------------------------------


@pytest.mark.parametrize("threads", [10**6, CORES + 1, 0, -1, 1.5, "2", True])
def test_1_threads_outside_the_cores_are_refused_before_a_session(tiny_onnx, monkeypatch, threads):
    def no_session(*args):
        raise AssertionError("a session was made")

    monkeypatch.setattr(session_module, "_open_session", no_session)
    with pytest.raises(InputError, match=rf"threads must be an integer in \[1, {CORES}\]"):
        InfiniModel(tiny_onnx[1], threads=threads)
    with pytest.raises(InputError, match="threads must be"):
        InfiniModel(tiny_onnx[1], threads=threads, session_options=session_options(1))
    with pytest.raises(InputError, match="threads must be"):
        session_options(threads)


def test_1_every_core_is_accepted(tiny_onnx):
    assert InfiniModel(tiny_onnx[1], threads=CORES).tokenizer is not None
    assert session_options().intra_op_num_threads == CORES


@pytest.mark.skipif(CORES >= 1024, reason="--threads accepts at most 1024")
def test_1_every_threads_option_of_the_cli_is_bounded(tiny_onnx, text_file, tmp_path):
    onnx_path, state = tiny_onnx[1], tmp_path / "s.state"
    too_many = CORES + 1
    for args in [
        ("stream", onnx_path, text_file, "--save-state", state, "--threads", too_many),
        ("generate", onnx_path, "--prompt", "hi", "--save-state", state, "--threads", too_many),
        ("demo", "passkey", onnx_path, "--length", 500, "--threads", too_many),
        ("demo", "passkey", onnx_path, "--threads", 10**6),
    ]:
        one_line_error(infini(*args), f"threads must be an integer in [1, {CORES}]")
    result = infini("demo", "passkey", onnx_path, "--sweep", "--lengths", 500, "--jobs", too_many)
    one_line_error(result, f"jobs must be in [1, {CORES}]")
    assert not state.exists()


# --- 2. calibration and evaluation text are read only as far as needed ---------------------------


@pytest.fixture(scope="module")
def word_graph(tiny_onnx, tmp_path_factory):
    """The tiny graph with a word-level tokenizer: no token for whitespace, one for NULs."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = tmp_path_factory.mktemp("word") / "word.onnx"
    return with_tokenizer(tiny_onnx[1], out, tokenizer.to_str())


@pytest.fixture()
def blank_then_text(tmp_path):
    """1 MiB of spaces, then words: its tokens come only past the bytes the reader may read."""
    path = tmp_path / "blank.txt"
    path.write_text(" " * (1 << 20) + "a " * 1000)
    return path


def test_2_text_with_too_few_tokens_in_its_first_bytes_is_refused(word_graph, blank_then_text):
    out = blank_then_text.parent / "q.onnx"
    args = ["quantize", word_graph, out, "--mode", "int8-static", "--calib-segments", 2]
    result = infini(*args, "--calib", blank_then_text)
    one_line_error(result, "0 tokens in its first 65,536 bytes, 64 needed")
    assert "MatMuls" not in result.output  # refused before the quantisation began
    result = infini(
        "quantize", word_graph, out, "--eval-segments", 2, "--eval-text", blank_then_text
    )
    one_line_error(result, "0 tokens in its first 65,536 bytes")
    assert not out.exists() and sorted(p.name for p in blank_then_text.parent.iterdir()) == [
        "blank.txt"
    ]


def test_2_dev_zero_is_read_only_as_far_as_needed(tiny_onnx, word_graph, tmp_path):
    """/dev/zero under a 3 GB address-space limit: a whole-file read ends in MemoryError."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))"
    run = f"{limit}; from infini_onnx.cli import main; main(prog_name='infini')"

    def quantize(graph: Path, out: Path) -> subprocess.CompletedProcess:
        args = ["quantize", graph, out, "--mode", "int8-static", "--calib", "/dev/zero"]
        args += ["--calib-segments", "2", "--eval-segments", "2", "--eval-text", "/dev/zero"]
        cmd = [sys.executable, "-c", run, *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    done = quantize(tiny_onnx[1], tmp_path / "q.onnx")  # a NUL byte is a token: calibrates
    assert done.returncode == 0 and "wrote" in done.stdout, done.stderr
    refused = quantize(word_graph, tmp_path / "w.onnx")  # one token per block: not text
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "/dev/zero: 1 tokens in its first 65,536 bytes" in refused.stderr
    assert not (tmp_path / "w.onnx").exists()


def test_2_a_big_file_gives_its_first_tokens(tiny_onnx, tmp_path):
    from infini_onnx.quantize import corpus

    model = InfiniModel(tiny_onnx[1], threads=1)
    path = tmp_path / "big.txt"
    path.write_text("x" * (3 * corpus.BLOCK_BYTES) + "\u00e9" * 10)
    ids = corpus.token_stream(model, 2, seed=0, path=path)
    np.testing.assert_array_equal(ids, np.full(64, ord("x")))
    path.write_text("caf\u00e9")  # shorter than needed: repeated
    ids = corpus.token_stream(model, 1, seed=0, path=path)
    assert list(ids[:10]) == list("café".encode() * 2)[:10]


# --- 3. the demo's cache covers everything the cached graph embeds -------------------------------


def test_3_the_demo_cache_follows_the_tokenizer(tiny_onnx, tmp_path, monkeypatch):
    from infini_onnx import demo, modeldir
    from infini_onnx.export import exporter

    def export(model_dir, out, **options):  # the tiny graph with the directory's tokenizer
        exports.append(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        return with_tokenizer(tiny_onnx[1], out, modeldir.tokenizer_text(model_dir))

    exports: list[Path] = []
    monkeypatch.setattr(exporter, "export_model", export)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_onnx[0], model_dir)
    first = demo.resolve_model(model_dir, log=lambda _: None)
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer["normalizer"] = {"type": "Lowercase"}
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    second = demo.resolve_model(model_dir, log=lambda _: None)
    assert second != first and len(exports) == 2
    encoded = InfiniModel(second, threads=1).tokenizer.encode("ABC", add_special_tokens=False)
    assert encoded.ids == list(b"abc")  # the cached graph has the new tokenizer
    assert demo.resolve_model(model_dir, log=lambda _: None) == second and len(exports) == 2


def test_3_a_directory_without_tokenizer_is_refused_before_export(
    model_dir_factory, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model_dir = tmp_path / "m"
    shutil.copytree(model_dir_factory(), model_dir)
    (model_dir / "tokenizer.json").unlink()
    one_line_error(infini("demo", "passkey", model_dir), "no tokenizer.json")
    assert not (tmp_path / "cache").exists()


# --- 4. one line instead of a traceback ----------------------------------------------------------


def test_4_stream_from_a_closed_stdin(tiny_onnx, tmp_path):
    state = tmp_path / "s.state"
    cmd = infini_process("stream", tiny_onnx[1], "-", "--save-state", state)
    result = subprocess.run(
        ["sh", "-c", '"$@" <&-', "sh", *cmd], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == "error: -: standard input is closed\n"
    assert not state.exists()


def test_4_demo_on_a_graph_without_tokenizer(tiny_onnx, tmp_path):
    graph = with_tokenizer(tiny_onnx[1], tmp_path / "bare.onnx", None)
    one_line_error(infini("demo", "passkey", graph, "--length", 500), "has no tokenizer")
    args = ("demo", "passkey", graph, "--sweep", "--lengths", 500, "--trials", 1)
    one_line_error(infini(*args, "--json", tmp_path / "out.json"), "has no tokenizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.onnx"]


@pytest.mark.parametrize("stop", [5, "ab", [1, "x"], [1.0], [None], [True]])
def test_4_generate_stop_must_be_token_ids(model, stop):
    stream = Stream(model)
    stream.feed([1, 2, 3])
    with pytest.raises(InputError, match="stop must be a list of token ids"):
        stream.generate(max_new_tokens=3, stop=stop)
    assert stream.tokens_seen == 3
    assert len(list(stream.generate(max_new_tokens=3, stop=np.array([7]), temperature=0))) <= 3


def test_4_paths_models_and_batches_are_type_checked(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stream = Stream(model)
    stream.feed([1, 2, 3])
    for call, words in [
        (lambda: Stream.load(model, None), "path must be a str or os.PathLike, got NoneType"),
        (lambda: stream.save(None), "path must be a str or os.PathLike, got NoneType"),
        (lambda: stream.save(3), "path must be a str or os.PathLike, got int"),
        (lambda: StreamBatch([1, 2]), "streams must be a list of Streams, got int"),
        (lambda: StreamBatch([stream, "s"]), "streams must be a list of Streams, got str"),
        (lambda: StreamBatch(stream), "streams must be a list of Streams, got Stream"),
        (lambda: Stream("model.onnx"), "model must be an InfiniModel, got str"),
        (lambda: Stream.load(None, "s.state"), "model must be an InfiniModel, got NoneType"),
    ]:
        with pytest.raises(InputError) as error:
            call()
        assert str(error.value) == words
    assert list(tmp_path.iterdir()) == []
    stream.save(Path("s.state"))
    assert Stream.load(model, "s.state").tokens_seen == 3
    assert StreamBatch(iter([stream, stream.fork()])).tokens_seen == [3, 3]


# --- 5. a closed stdout still saves the state ----------------------------------------------------


def read_one_byte_then_close(cmd: list[str]) -> tuple[int, str]:
    """Run cmd, read one byte of its stdout and close it, like `cmd | head -c1`."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(process.stdout.read(1)) == 1
    process.stdout.close()
    returncode = process.wait(timeout=300)
    return returncode, process.stderr.read().decode()


@pytest.mark.parametrize("command", ["stream", "generate"])
def test_5_a_broken_pipe_saves_the_state(tiny_onnx, text_file, tmp_path, command):
    state = tmp_path / "s.state"
    common = ["--save-state", state, "--temperature", "0", "--threads", 1]
    if command == "stream":
        args = ["stream", tiny_onnx[1], text_file, "--generate", 3000, "--no-progress", *common]
    else:
        args = ["generate", tiny_onnx[1], "--prompt", "hi", "-n", 3000, *common]
    returncode, stderr = read_one_byte_then_close(infini_process(*args))
    assert returncode == BROKEN_PIPE_EXIT, stderr
    assert stderr == f"error: output closed (broken pipe); state saved to {state}\n"
    model = InfiniModel(tiny_onnx[1], threads=1)
    fed = len(TEXT) if command == "stream" else 2
    assert fed < Stream.load(model, state).tokens_seen < fed + 3000  # stopped early, and saved


def test_5_a_broken_pipe_without_save_state(tiny_onnx):
    args = ["generate", tiny_onnx[1], "--prompt", "hi", "-n", 3000, "--threads", 1]
    returncode, stderr = read_one_byte_then_close(infini_process(*args))
    assert (returncode, stderr) == (BROKEN_PIPE_EXIT, "error: output closed (broken pipe)\n")

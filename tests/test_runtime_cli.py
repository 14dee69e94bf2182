"""The runtime's commands, and the runtime in a process where torch and onnx cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
from click.testing import CliRunner

from infini_onnx.cli import main
from infini_onnx.cli.stream_cmd import generate_command, stream_command
from infini_onnx.runtime import InfiniModel, Stream

TEXT = "Infini-attention keeps a compressive memory of everything it has read. " * 20


def test_stream_a_file_generate_save_and_resume(tiny_onnx, tmp_path):
    onnx_path = str(tiny_onnx[1])
    (tmp_path / "book.txt").write_text(TEXT)
    state = str(tmp_path / "s.state")
    runner = CliRunner()
    result = runner.invoke(
        stream_command,
        [
            onnx_path,
            str(tmp_path / "book.txt"),
            "--generate",
            "12",
            "--prompt",
            "Q:",
            "--temperature",
            "0",
            "--save-state",
            state,
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"tokens {len(TEXT):,}" in result.stderr and "tok/s" in result.stderr
    assert "RSS" in result.stderr and "saved state" in result.stderr

    model = InfiniModel(onnx_path, threads=1)
    expected = Stream(model)
    expected.feed_text(TEXT)
    tokens = list(expected.generate("Q:", max_new_tokens=12, temperature=0))
    assert result.stdout == model.tokenizer.decode(tokens, skip_special_tokens=True) + "\n"
    resumed = Stream.load(model, state)
    assert resumed.tokens_seen == len(TEXT) + 2 + len(tokens)
    np.testing.assert_allclose(resumed.logits, expected.logits, atol=1e-6)

    result = runner.invoke(
        main, ["generate", onnx_path, "--resume", state, "-n", "5", "--temperature", "0"]
    )
    assert result.exit_code == 0, result.output
    text = "".join(expected.generate_text(max_new_tokens=5, temperature=0))
    assert result.stdout == text + "\n"


def test_stream_stdin_and_generate_command(tiny_onnx, tmp_path):
    onnx_path = str(tiny_onnx[1])
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["stream", onnx_path, "-", "--no-progress", "--save-state", str(tmp_path / "s.state")],
        input=TEXT,
    )
    assert result.exit_code == 0, result.output
    assert Stream.load(InfiniModel(onnx_path), tmp_path / "s.state").tokens_seen == len(TEXT)
    args = [onnx_path, "--prompt", "Hello", "-n", "8", "--seed", "1", "--top-k", "20"]
    result = runner.invoke(generate_command, args)
    assert result.exit_code == 0, result.output
    model = InfiniModel(onnx_path, threads=1)
    options = dict(max_new_tokens=8, temperature=0.8, top_k=20, seed=1)  # 0.8: the default
    text = "".join(Stream(model).generate_text("Hello", **options))
    assert result.stdout == text + "\n"
    assert runner.invoke(generate_command, args).stdout == result.stdout  # seeded


def test_commands_report_bad_input_as_one_line(tiny_onnx, tmp_path):
    runner = CliRunner()
    onnx_path = str(tiny_onnx[1])
    (tmp_path / "empty.txt").write_text("")
    for args, message in [
        ([str(tmp_path / "missing.onnx"), "-"], "no such model file"),
        ([onnx_path, str(tmp_path / "empty.txt")], "empty input"),
        ([onnx_path, "--generate", "3", "--resume", str(tmp_path / "nope")], "no such state file"),
        ([onnx_path], "nothing to do"),
        ([onnx_path, "-", "--prompt", "hi"], "--prompt needs --generate"),
    ]:
        result = runner.invoke(stream_command, args)
        assert (
            result.exit_code == 1
            and result.stderr.startswith("error: ")
            and result.stderr.count("\n") == 1
            and message in result.stderr
        ), (args, result.output)


BLOCKED_IMPORTS = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"torch", "onnx", "onnxscript", "onnx_ir", "safetensors"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, Blocker())

    import numpy as np
    from infini_onnx.runtime import InfiniModel, Stream
    import infini_onnx.cli.stream_cmd

    model = InfiniModel(sys.argv[1], threads=1)
    stream = Stream(model)
    stream.feed_text(["Streams of any length, ", "in chunks. "] * 50)
    tokens = list(stream.generate(" Next:", max_new_tokens=8, temperature=0, stop=()))
    stream.save(sys.argv[2])
    assert Stream.load(model, sys.argv[2]).tokens_seen == stream.tokens_seen
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok", tokens)
    """
)


def test_runtime_runs_without_torch_or_onnx(tiny_onnx, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS, str(tiny_onnx[1]), str(tmp_path / "s.state")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    model = InfiniModel(tiny_onnx[1], threads=1)
    stream = Stream(model)
    stream.feed_text(["Streams of any length, ", "in chunks. "] * 50)
    tokens = list(stream.generate(" Next:", max_new_tokens=8, temperature=0, stop=()))
    assert result.stdout.strip() == f"ok {tokens}"

"""The `infini` group: every command listed, and each loads only what it runs."""

from __future__ import annotations

import subprocess
import sys

from infini_onnx.cli import COMMANDS

HEAVY = {"torch", "onnx", "onnx_ir", "onnxscript", "onnxruntime", "numpy", "tokenizers",
         "safetensors", "matplotlib"}  # fmt: skip


def run_infini(*args: str) -> tuple[str, set[str]]:
    """`infini ARGS` in a fresh interpreter: its output and the heavy packages it loaded."""
    code = (
        "import sys\n"
        "from infini_onnx.cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('LOADED', *sorted({m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text, _, loaded = out.stdout.rpartition("LOADED")
    return text, set(loaded.split()) & HEAVY


def test_help_lists_every_command_and_loads_nothing_heavy():
    text, loaded = run_infini("--help")
    assert loaded == set()
    listed = [line.split()[0] for line in text.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == list(COMMANDS)
    stages = text.split("Stages:")[1].split("Options:")[0]
    described = [line.split()[0] for line in stages.splitlines() if line.strip()]
    assert described == list(COMMANDS)  # the overview names every command, in order


def test_init_loads_neither_onnx_nor_onnxruntime(tmp_path):
    text, loaded = run_infini("init", str(tmp_path / "m"))
    assert "wrote" in text and (tmp_path / "m" / "config.json").is_file()
    assert "torch" in loaded and not loaded & {"onnx", "onnxruntime", "onnx_ir", "matplotlib"}


def test_stream_help_loads_no_runtime():
    text, loaded = run_infini("stream", "--help")
    assert "--device [cpu|cuda|tensorrt]" in text
    assert loaded == set()


def test_python_dash_m_is_the_infini_command():
    """`python -m infini_onnx` (for `pip install --target` installs, which have no scripts)."""
    out = subprocess.run([sys.executable, "-m", "infini_onnx", "demo", "--help"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: infini demo [OPTIONS] COMMAND") and "passkey" in out.stdout


def test_serve_refuses_nan_options_before_anything_starts(tmp_path):
    """click's FloatRange lets nan through every comparison; `infini serve` refused it only
    after Ray had started, with a traceback."""
    for option in ("--max-body-mb", "--idle-timeout", "--replica-cpus"):
        out = subprocess.run(
            [sys.executable, "-m", "infini_onnx", "serve", str(tmp_path / "none.onnx"), option,
             "nan"], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 2 and f"'{option}': 'nan' is not a finite number" in out.stderr
        assert "Traceback" not in out.stderr


def test_serve_and_bench_refuse_more_threads_than_cores_before_starting(tiny_onnx, tmp_path):
    from infini_onnx.runtime.device import default_threads

    too_many = str(default_threads() + 1)
    for args in (["serve", str(tiny_onnx[1]), "--state-dir", str(tmp_path / "s")], ["bench"]):
        out = subprocess.run([sys.executable, "-m", "infini_onnx", *args, "--threads", too_many],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 1 and "threads must be an integer in [1," in out.stderr, out
        assert "Traceback" not in out.stderr

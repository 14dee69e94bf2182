"""The pass-key task: haystack streams, the training loop, and `infini demo passkey`."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from infini_onnx import demo, passkey
from infini_onnx.cli import main
from infini_onnx.errors import InfiniError


def test_haystack_is_exact_with_the_needle_at_its_depth_and_the_question_last():
    key = "12345"
    for length in (20_000, 20_001, 20_063):
        for depth, expected in ((0.0, 0), (0.5, 0.5), (1.0, 1)):
            chunks = list(passkey.haystack(length, depth, key, chunk_repeats=8))
            text = "".join(chunks)
            assert len(text.encode()) == length  # every length: every question offset
            assert all(chunks) and max(map(len, chunks)) <= 8 * len(passkey.FILLER)
            assert text.endswith(passkey.QUESTION)
            where = text.index(passkey.needle(key)) / (len(text) - len(passkey.QUESTION))
            assert abs(where - expected) < 0.01, (depth, where)
            assert text.count(key) == 2
    with pytest.raises(ValueError, match="needs at least 96 tokens"):
        list(passkey.haystack(95, 0.5, key))


def test_training_is_deterministic_and_writes_a_loadable_model(tmp_path):
    from infini_onnx.model import from_pretrained
    from infini_onnx.train import TrainConfig, train_passkey

    cfg = TrainConfig(
        steps=3,
        batch_size=2,
        short_steps=1,
        curriculum_steps=2,
        max_len=400,
        virtual_max=100.0,
        cross_answer=0.5,
        eval_every=3,
        eval_lengths=[300],
        eval_trials=1,
        threads=1,
        local_window=40,
    )
    logs: list[str] = []
    train_passkey(tmp_path / "a", cfg, log=logs.append)
    train_passkey(tmp_path / "b", cfg, log=lambda _: None)
    a, b = from_pretrained(tmp_path / "a"), from_pretrained(tmp_path / "b")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    fresh = from_pretrained(tmp_path / "a")
    fresh.init_weights(cfg.seed)
    assert not torch.equal(
        fresh.model.layers[0].self_attn.q_proj.weight, a.model.layers[0].self_attn.q_proj.weight
    )
    assert any(line.startswith("eval at step 3: accuracy {'300'") for line in logs)
    assert a.config.local_window == 40  # trained with the window it is saved with
    assert (tmp_path / "a" / "training.json").is_file()
    assert (tmp_path / "a" / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def shipped_int8(tmp_path_factory):
    """The shipped pass-key model, exported and int8-quantised as the demo does (in a cache of
    its own)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        return demo.resolve_model(None, log=lambda _: None)


def test_demo_trial_reads_the_key_back(shipped_int8, tiny_onnx):
    """The shipped model answers right 16K tokens back; a random model's answer is judged wrong."""
    from infini_onnx.runtime import InfiniModel

    trial = demo.run_trial(InfiniModel(shipped_int8, threads=2), 16_377, 0.5, "54321")
    assert trial.answer == passkey.answer("54321") and trial.correct
    assert trial.tokens == 16_377  # the haystack: the answer fed back is not counted
    guess = demo.run_trial(InfiniModel(tiny_onnx[1], threads=1), 500, 0.5, "54321")
    assert guess.answer != passkey.answer("54321") and not guess.correct


def test_demo_cli_single_run_and_sweep(tiny_onnx, monkeypatch):
    _, onnx_path = tiny_onnx
    result = CliRunner().invoke(main, ["demo", "passkey", str(onnx_path), "--length", "2000"])
    assert result.exit_code == 0, result.output
    assert "pass key" in result.output and "answer" in result.output
    assert "resident memory" in result.output and "MB after all\n" in result.output
    assert "tokens, " not in result.output  # no reading after a warm-up the stream never had
    monkeypatch.setattr(demo, "WARM_TOKENS", 1000)
    result = CliRunner().invoke(main, ["demo", "passkey", str(onnx_path), "--length", "2000"])
    assert re.search(r"MB after 1,\d{3} tokens, [\d.]+ MB after all \([+-]\d", result.output)

    args = ["demo", "passkey", str(onnx_path), "--sweep", "--lengths", "500,1000", "--trials", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "| depth | 500 | 1,000 |" in result.output
    assert "| middle |" in result.output and "2 trials per cell" in result.output


def test_demo_refuses_a_missing_model(tmp_path):
    result = CliRunner().invoke(main, ["demo", "passkey", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "no such model file or directory" in result.output


def test_demo_caches_the_exported_int8_model(model_dir_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model_dir = model_dir_factory()
    first = demo.resolve_model(model_dir, log=lambda _: None)
    assert first.is_file() and first.is_relative_to(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert demo.resolve_model(model_dir, log=lambda _: None) == first
    assert first.stat().st_mtime_ns == mtime  # taken from the cache, not made again


def test_sweep_lengths_grid_and_depths_are_parsed_or_refused():
    assert demo.parse_lengths("4096,16384", None) == [4096, 16384]
    assert demo.parse_lengths("4096", "1000:1300:97") == [1000, 1097, 1194, 1291]
    assert demo.parse_depths("start,0.25,end") == {"start": 0.0, "0.25": 0.25, "end": 1.0}
    for lengths, grid, words in (
        ("4k", None, "comma-separated"),
        ("0", None, "positive"),
        (None, "1000:2000", "START:STOP:STEP"),
        (None, "2000:1000:5", "START <= STOP"),
    ):
        with pytest.raises(InfiniError, match=words):
            demo.parse_lengths(lengths, grid)
    with pytest.raises(InfiniError, match="'deep'"):
        demo.parse_depths("start,deep")


def test_sweep_in_worker_processes_matches_one_process(tiny_onnx):
    _, onnx_path = tiny_onnx
    args = (onnx_path, [300, 401], {"start": 0.0, "end": 1.0}, 2, 3)
    assert demo.sweep(*args, jobs=2, log=lambda _: None) == demo.sweep(*args, log=lambda _: None)


def test_a_cell_answers_as_its_trials_one_by_one(shipped_int8, tiny_onnx):
    """run_cell feeds the text before the needle once for all keys: every key's answer is
    the one its own trial gives (int8 runs a batch row by row, so exactly), at a depth where
    the shared text is empty and at others, on the shipped model and on a random one."""
    from infini_onnx.runtime import InfiniModel

    keys = ["54321", "10987", "77777"]
    for path, length in ((shipped_int8, 1_337), (tiny_onnx[1], 421)):
        model = InfiniModel(path, threads=1)
        for depth in (0.0, 0.4, 1.0):
            alone = [demo.run_trial(model, length, depth, key).answer for key in keys]
            assert demo.run_cell(model, length, depth, keys) == alone, (path, depth)
    model = InfiniModel(shipped_int8, threads=1)
    assert demo.run_cell(model, 1_337, 0.4, keys) == [passkey.answer(key) for key in keys]


def test_demo_cli_grid_sweep_writes_rows_summary_and_json(tiny_onnx, tmp_path):
    _, onnx_path = tiny_onnx
    out = tmp_path / "sweep.json"
    args = ["demo", "passkey", str(onnx_path), "--sweep", "--grid", "200:1100:100"]
    result = CliRunner().invoke(main, [*args, "--trials", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "| length | start | middle | end | all |" in result.output
    assert "| 1,000 |" in result.output and "of 10 lengths at 100%" in result.output
    record = json.loads(out.read_text())
    assert list(record["accuracy"]) == [str(n) for n in range(200, 1101, 100)]
    assert set(record["accuracy"]["200"]) == {"start", "middle", "end"}

    result = CliRunner().invoke(main, [*args[:3], "--length", "50"])
    assert result.exit_code == 1 and "needs at least 96 tokens, got 50" in result.output


def test_shipped_model_retrieves_at_16k_through_onnx_runtime_int8(shipped_int8):
    """Regression: the shipped model, exported and int8-quantised as the demo does, finds the key
    16K tokens back at every depth (a length whose question sits inside one segment)."""
    table = demo.sweep(shipped_int8, [16_377], demo.DEPTHS, 1, seed=0, log=lambda _: None)
    assert table == {16_377: {"start": 1.0, "middle": 1.0, "end": 1.0}}


def test_packaged_demo_model_is_the_shipped_model(shipped_int8, monkeypatch):
    """The int8 graph inside the package is the shipped model directory's (same model_id) and
    answers as a fresh export does; it is the default where the directory is absent."""
    import numpy as np

    from infini_onnx import modeldir
    from infini_onnx.runtime import InfiniModel, Stream

    packaged = InfiniModel(demo.PACKAGED_MODEL, threads=1)
    assert packaged.variant == "int8"
    assert packaged.model_id == modeldir.model_id(demo.SHIPPED_MODEL)
    ids = np.random.default_rng(0).integers(0, packaged.config.vocab_size, 300)
    fresh = Stream(InfiniModel(shipped_int8, threads=1)).feed(ids, all_logits=True)
    np.testing.assert_allclose(Stream(packaged).feed(ids, all_logits=True), fresh, atol=1e-4)

    monkeypatch.setattr(demo, "SHIPPED_MODEL", demo.SHIPPED_MODEL.with_name("not-here"))
    assert demo.resolve_model(None, log=lambda _: None) == demo.PACKAGED_MODEL


@pytest.mark.slow
def test_runtime_only_wheel_runs_the_demo(tmp_path):
    """The wheel, installed alone in a fresh venv (no torch, no onnx), runs `infini demo passkey`
    on the model it carries. Built from a copy of the repository's files, not in place."""
    import subprocess
    import sys
    import zipfile

    from edge.runtime_wheel import build_wheel

    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:  # the benchmark harness stays in the repository
        assert not [n for n in archive.namelist() if n.startswith("infini_onnx/bench/")]
        assert "infini_onnx/data/passkey-tiny-int8.onnx" in archive.namelist()
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # noqa: E731
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", str(venv)).returncode == 0
    python = venv / "bin" / "python"
    installed = run(str(python), "-m", "pip", "install", "-q", str(wheel))
    assert installed.returncode == 0, installed.stderr
    absent = run(str(python), "-c", "import importlib.util as u; print(u.find_spec('torch'), "
                 "u.find_spec('onnx'))")  # fmt: skip
    assert absent.stdout.split() == ["None", "None"]
    demo_run = run(str(venv / "bin" / "infini"), "demo", "passkey", "--length", "20000")
    assert demo_run.returncode == 0, demo_run.stderr
    assert "answer" in demo_run.stdout and "first use" not in demo_run.stdout
    bench = run(str(venv / "bin" / "infini"), "bench", "--quick")
    assert bench.returncode == 1 and "infini bench runs from a source checkout" in bench.stderr

"""The pass-key task: haystack streams, the training loop, and `infini demo passkey`."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from infini_onnx import demo, passkey
from infini_onnx.cli import main


def test_haystack_places_the_needle_at_its_depth_and_ends_with_the_question():
    key = "12345"
    for depth, expected in ((0.0, 0), (0.5, 0.5), (1.0, 1)):
        chunks = list(passkey.haystack(20_000, depth, key, chunk_repeats=8))
        text = "".join(chunks)
        assert len(text.encode()) == passkey.haystack_length(20_000, key) <= 20_000
        assert max(len(c) for c in chunks) <= 8 * len(passkey.FILLER)  # streamed in pieces
        assert text.endswith(passkey.QUESTION)
        where = text.index(passkey.needle(key)) / (len(text) - len(passkey.QUESTION))
        assert abs(where - expected) < 0.01, (depth, where)
        assert text.count(key) == 2


def test_training_is_deterministic_and_writes_a_loadable_model(tmp_path):
    from infini_onnx.model import from_pretrained
    from infini_onnx.train import TrainConfig, train_passkey

    cfg = TrainConfig(
        steps=3,
        batch_size=2,
        short_steps=1,
        curriculum_steps=2,
        max_len=400,
        eval_every=3,
        eval_lengths=[300],
        eval_trials=1,
        threads=1,
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
    assert any(line.startswith("eval 300:") for line in logs)
    assert (tmp_path / "a" / "training.json").is_file()
    assert (tmp_path / "a" / "tokenizer.json").is_file()


def test_demo_trial_streams_the_whole_haystack(tiny_onnx):
    from infini_onnx.runtime import InfiniModel

    _, onnx_path = tiny_onnx
    model = InfiniModel(onnx_path, threads=1)
    trial = demo.run_trial(model, 3000, 0.5, "54321")
    answer_tokens = len(passkey.answer("54321"))
    assert trial.tokens == passkey.haystack_length(3000, "54321") + answer_tokens
    assert trial.correct == (trial.answer.strip().rstrip(".") == "54321")


def test_demo_cli_single_run_and_sweep(tiny_onnx):
    _, onnx_path = tiny_onnx
    result = CliRunner().invoke(main, ["demo", "passkey", str(onnx_path), "--length", "2000"])
    assert result.exit_code == 0, result.output
    assert "pass key" in result.output and "answer" in result.output
    assert "resident memory" in result.output and "MB after all" in result.output

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

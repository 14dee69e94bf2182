"""`infini train`: continual pre-training on text (infini_onnx/trainer.py, pretrain.py): rows
split over processes, torchrun against one process, resume after a kill, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clirun import infini, one_line_error

from infini_onnx.errors import InfiniError
from infini_onnx.model import from_pretrained
from infini_onnx.pretrain import TextRecipe
from infini_onnx.trainer import LoopConfig, train

TEXT = "".join(f"Line {i}: the memory keeps what the window has let go of. " for i in range(200))


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "train.txt"
    path.write_text(TEXT)
    return path


def losses(out: Path) -> list[float]:
    history = json.loads((out / "training.json").read_text())["history"]
    return [row["loss"] for row in history if "loss" in row]


def test_processes_split_the_rows_of_one_batch(model_dir_factory):
    """Process r of n with batch B reads rows r*B .. (r+1)*B - 1 of one process with batch nB,
    at every step (circular over the text)."""
    config = from_pretrained(model_dir_factory("delta", True)).config
    ids = torch.arange(1000)
    whole = TextRecipe(config, ids, batch_size=4, segments=2)
    parts = [TextRecipe(config, ids, 2, 2, rank=r, world=2) for r in range(2)]
    for step in (1, 2, 17):
        joined = torch.cat([p.rows(step)[0] for p in parts])
        assert torch.equal(joined, whole.rows(step)[0])
    inputs, targets = whole.rows(17)
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    assert inputs.shape == (4, 64) and int(inputs.max()) < 1000


def test_torchrun_two_processes_equal_one_with_the_doubled_batch(model_dir_factory, text, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) with batch 1 logs the losses of one process
    with batch 2, step for step."""
    model_dir = model_dir_factory("delta", True)
    common = ["train", model_dir, "--text", text, "--steps", 4, "--log-every", 1, "--lr", 1e-2,
              "--warmup", 1, "--checkpoint-every", 0, "--threads", 1]  # fmt: skip
    one = infini(*common, "--batch-size", 2, "--out", tmp_path / "one")
    assert one.exit_code == 0, one.output
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    infini_exe = shutil.which("infini", path=os.path.dirname(sys.executable))
    run = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "--no-python", infini_exe,
         *map(str, common), "--batch-size", "1", "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("step 4/4") == 1  # process 0 logs, once
    want, got = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(want) == 4 and want[0] != want[-1]
    assert got == pytest.approx(want, abs=1e-5)


class Killed(Exception):
    pass


def test_a_killed_run_resumes_on_the_same_loss_curve(model_dir_factory, text, tmp_path):
    """Killed during step 5 (checkpoint at step 3): --resume continues with the losses of the
    run that was never stopped, from step 4."""
    from infini_onnx.pretrain import tokenize
    from infini_onnx.tokenizer import byte_level_tokenizer

    model_dir = model_dir_factory("delta", True)
    tokenizer = byte_level_tokenizer().to_str()
    ids = tokenize(tokenizer, [text], 257)
    cfg = LoopConfig(steps=6, lr=1e-2, warmup=1, log_every=1, checkpoint_every=3, threads=1)

    def run(out: Path, resume: bool = False, log=lambda msg: None, segments: int = 2) -> list:
        model = from_pretrained(model_dir)
        recipe = TextRecipe(model.config, ids, 2, segments)
        return train(model, recipe, cfg, out, tokenizer_json=tokenizer, resume=resume, log=log,
                     recipe_config=dict(segments=segments))  # fmt: skip

    def kill_in_step_5(msg: str) -> None:
        if msg.startswith("step 5/"):
            raise Killed

    whole = [r["loss"] for r in run(tmp_path / "whole") if "loss" in r]
    with pytest.raises(Killed):
        run(tmp_path / "killed", log=kill_in_step_5)
    assert not (tmp_path / "killed" / "training.json").exists()
    with pytest.raises(InfiniError, match="resumed with other segments"):
        run(tmp_path / "killed", resume=True, segments=3)
    resumed = [r["loss"] for r in run(tmp_path / "killed", resume=True) if "loss" in r]
    assert resumed == pytest.approx(whole, rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "training.json"
    ]  # fmt: skip


def test_bad_input_is_one_line(model_dir_factory, text, tmp_path):
    model_dir, out = model_dir_factory("delta", True), tmp_path / "o"
    (tmp_path / "short.txt").write_text("short")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    cases = [
        (["--text", tmp_path / "no.txt", "--out", out], "cannot read"),
        (["--text", tmp_path / "short.txt", "--out", out], "a step reads 65 per row"),
        (["--text", text, "--out", out, "--resume"], "no checkpoint to resume from"),
        (["--text", text, "--out", tmp_path / "full"], "exists and is not empty"),
        (["--text", text, "--out", out, "--eval-text", tmp_path / "empty.txt"], "is empty"),
    ]
    for args, words in cases:
        one_line_error(infini("train", model_dir, *args), words)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"


def test_rows_empty_their_memory_in_turn(model_dir_factory):
    """--reset-memory-every K: each row's memory is emptied once every K steps, the rows
    staggered; the window and the position go on."""
    model = from_pretrained(model_dir_factory("delta", True))
    ids = torch.tensor(list(TEXT.encode()))
    recipe = TextRecipe(model.config, ids, 4, 2, reset_memory_every=4)
    emptied = []
    for step in range(1, 10):
        if recipe.state is not None:
            before = recipe.state
            after = recipe.reset_memory(before, step)
            rows = [r for r in range(4) if not after.memory[r].any()]
            emptied.append((step, rows))
            for r in range(4):
                assert torch.equal(after.past_key[r], before.past_key[r])
                assert after.memory_acc[r].any() == (r not in rows)
                assert after.norm[r].any() == (r not in rows)
            assert torch.equal(after.position, before.position)
        with torch.no_grad():
            recipe.step(model, step)
    # row g empties before the steps s with (s - 1 + g) % 4 == 0
    assert emptied == [(2, [3]), (3, [2]), (4, [1]), (5, [0]), (6, [3]), (7, [2]), (8, [1]),
                       (9, [0])]  # fmt: skip

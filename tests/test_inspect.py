"""`infini inspect`: the gates of a model directory and of its exported graph, and the memory's
growth over a text against the PyTorch reference (infini_onnx/health.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from clirun import infini, one_line_error

from infini_onnx.export.exporter import export_model
from infini_onnx.health import Growth
from infini_onnx.model import from_pretrained
from infini_onnx.runtime import InfiniModel

TEXT = "Streams of text go into the memory, segment by segment, and never come out. " * 30


@pytest.fixture(scope="module")
def gated(tmp_path_factory, model_dir_factory):
    """A tiny model directory whose gates differ by head (head 1 of layer 0 stuck at -100),
    and its exported graph."""
    model = from_pretrained(model_dir_factory("delta", True))
    gates = torch.tensor([[-100.0, 2.0, -3.0, 0.5], [1.0, 12.0, -0.25, 0.0]])
    for layer, row in zip(model.model.layers, gates):
        layer.self_attn.gate.data = row.clone()
    model_dir = tmp_path_factory.mktemp("gated")
    from infini_onnx.tokenizer import byte_level_tokenizer

    model.save_pretrained(model_dir, tokenizer_json=byte_level_tokenizer().to_str())
    return model_dir, export_model(model_dir, model_dir / "model.onnx"), gates


@pytest.mark.parametrize("which", ["directory", "onnx"])
def test_gates_are_reported_with_the_saturated_ones(gated, tmp_path, which):
    model_dir, onnx_path, gates = gated
    out = tmp_path / "report.json"
    result = infini("inspect", model_dir if which == "directory" else onnx_path, "--json", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["gates"] == gates.tolist()
    assert "| 0 | 0.0000 | " in result.output  # layer 0's closed head: sigmoid(-100)
    assert "0 (-100)" in result.output and "1 (+12)" in result.output
    assert "2 of 8 gates saturated" in result.output


def test_exported_graph_records_the_gates(gated):
    _, onnx_path, gates = gated
    assert InfiniModel(onnx_path, threads=1).gates == gates.tolist()


def test_memory_growth_matches_the_reference(gated, tmp_path):
    """The norm of M and the mean of z after each segment of a text equal the PyTorch
    reference's state after the same tokens."""
    model_dir, onnx_path, _ = gated
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "report.json"
    result = infini("inspect", onnx_path, "--text", text, "--json", out)
    assert result.exit_code == 0, result.output
    assert "float32 z rounds away a token's write" in result.output
    report = json.loads(out.read_text())
    model = from_pretrained(model_dir)
    ids = torch.tensor([list(TEXT.encode())])
    N, state = model.config.segment_len, None
    for i, tokens in enumerate(report["tokens"]):
        with torch.no_grad():
            _, state = model(ids[:, tokens - N : tokens], state)
        memory_norm = state.memory[0].pow(2).sum(dim=(1, 2, 3)).sqrt().numpy()
        assert np.allclose(report["memory_norm"][i], memory_norm, rtol=1e-4)
        assert np.allclose(report["z_mean"][i], state.norm[0].mean(dim=(1, 2)).numpy(), rtol=1e-5)
    assert report["tokens"][-1] == (len(TEXT) - 1) // N * N


def test_the_float32_limit_of_z():
    """z grown linearly at rate r per token, a write w: lost once z = r t reaches 2^24 w."""
    growth = Growth(tokens=[1000], z=np.full((2, 1, 4), 500.0), write=np.full((2, 1, 4), 2.0))
    assert growth.tokens_until_lost(1).tolist() == [2**24 * 4.0] * 2  # w / r = 2 / 0.5
    assert growth.tokens_until_lost(32).tolist() == [2**24 * 4.0 * 32] * 2


def test_errors_are_one_line(gated, tmp_path):
    model_dir, onnx_path, _ = gated
    text = tmp_path / "short.txt"
    text.write_text("too short")
    one_line_error(infini("inspect", onnx_path, "--text", text), "at least one segment")
    one_line_error(infini("inspect", onnx_path, "--text", tmp_path / "none.txt"), "cannot read")
    one_line_error(infini("inspect", tmp_path / "missing.onnx"), "no such model file")


def test_a_graph_without_recorded_gates_points_to_its_directory():
    """Graphs exported before the gates were recorded (the packaged demo model)."""
    from pathlib import Path

    packaged = Path(__file__).parents[1] / "infini_onnx" / "data" / "passkey-tiny-int8.onnx"
    one_line_error(infini("inspect", packaged), "no gates in its metadata")

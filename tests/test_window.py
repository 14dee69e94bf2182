"""Format 2: the local window across segment boundaries, in the step graph and the runtime
(docs/design.md, "The local window"), and format 1 files still running."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from infini_onnx.errors import StateFileError
from infini_onnx.model import from_pretrained
from infini_onnx.runtime import InfiniModel, Stream
from infini_onnx.stepgraph.state_spec import window_slots

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(
    scope="module", params=[None, 1, 7, 32, 45], ids=["segment", "W=1", "W<N", "W=N", "W>N"]
)
def windowed(request, onnx_factory):
    """(reference model, runtime model) of a tiny model (N = 32) with local_window W."""
    model_dir, onnx_path = onnx_factory("delta", True, local_window=request.param)
    return from_pretrained(model_dir), InfiniModel(onnx_path, threads=1)


def random_chunks(total: int, most: int, seed: int) -> list[int]:
    rng, sizes = np.random.default_rng(seed), []
    while sum(sizes) < total:
        sizes.append(int(min(rng.integers(1, most + 1), total - sum(sizes))))
    return sizes


def test_step_graph_matches_the_reference_fed_in_random_chunks(windowed):
    """Chunks of 1 to 2N tokens (the runtime splits them at segment boundaries) over 6 segments:
    every token's logits within 1e-4 of the PyTorch reference run in one piece."""
    reference, model = windowed
    N = model.config.segment_len
    ids = np.random.default_rng(0).integers(0, 256, 6 * N + 5)
    with torch.no_grad():
        want = reference(torch.from_numpy(ids)[None])[0][0].numpy()
    stream, got, start = Stream(model), [], 0
    for size in random_chunks(len(ids), 2 * N, seed=1):
        got.append(stream.feed(ids[start : start + size], all_logits=True))
        start += size
    assert np.abs(np.concatenate(got) - want).max() <= 1e-4


def test_a_segment_boundary_inside_the_prompt_changes_nothing(onnx_factory):
    """W = N: after a prefix of every length 0..N-1 (every alignment of the prompt to the
    segment), the prompt fed in one call, token by token, or in random chunks gives the same
    greedy continuation."""
    model = InfiniModel(onnx_factory("delta", True)[1], threads=1)
    N = model.config.segment_len
    assert model.config.local_window == N
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, 256, 2 * N + 3)
    for offset in range(N):
        base = Stream(model)
        if offset:
            base.feed(rng.integers(0, 256, offset))
        outputs = []
        for way in ("whole", "tokens", "chunks"):
            stream = base.fork()
            if way == "whole":
                stream.feed(prompt)
            elif way == "tokens":
                for token in prompt:
                    stream.feed([token])
            else:
                start = 0
                for size in random_chunks(len(prompt), N, seed=offset):
                    stream.feed(prompt[start : start + size])
                    start += size
            outputs.append(list(stream.generate([], 8, stop=[], temperature=0)))
        assert outputs[0] == outputs[1] == outputs[2], (offset, outputs)


@pytest.mark.parametrize("far", [2**31, 2**40])
def test_logits_at_far_positions_equal_those_near_the_start(onnx_factory, tmp_path, far):
    """A state moved to stream position ~2^31 or ~2^40 through its tokens_seen (same memory,
    same ring slots: a multiple of N and K) gives the logits it gives near the start: the
    scores depend only on distances, never on the stream's length."""
    model = InfiniModel(onnx_factory("delta", True)[1], threads=1)
    c = model.config
    period = math.lcm(c.segment_len, window_slots(c))
    rng = np.random.default_rng(3)
    near = Stream(model)
    near.feed(rng.integers(0, 256, 3 * c.segment_len + 11))
    host = near.state.to_host()
    host["tokens_seen"] = host["tokens_seen"] + (far // period) * period
    moved = Stream(model, type(near.state).from_host(model.layout, host))
    assert moved.tokens_seen > far - period
    probe = rng.integers(0, 256, 2 * c.segment_len)
    np.testing.assert_allclose(
        moved.feed(probe, all_logits=True), near.feed(probe, all_logits=True), atol=1e-5, rtol=0
    )


def test_format_1_graph_and_state_still_run():
    """A graph and a state file exported by format-1 infini-onnx: the state resumes and gives
    the logits format-1 infini-onnx gave (tests/fixtures, made before format 2)."""
    model = InfiniModel(FIXTURES / "format1-tiny.onnx", threads=1)
    assert model.format_version == 1
    stream = Stream.load(model, FIXTURES / "format1-tiny.state")
    expected = np.load(FIXTURES / "format1-expected.npz")
    got = stream.feed(expected["probe"], all_logits=True)
    np.testing.assert_allclose(got, expected["logits"], atol=1e-5, rtol=0)
    assert stream.tokens_seen == 75 + 30


def test_a_state_of_the_other_format_is_refused(onnx_factory, tmp_path):
    old = InfiniModel(FIXTURES / "format1-tiny.onnx", threads=1)
    new = InfiniModel(onnx_factory("delta", True)[1], threads=1)
    Stream(new).save(tmp_path / "new.state")
    for model, path, saved, graph in (
        (new, FIXTURES / "format1-tiny.state", 1, 2),
        (old, tmp_path / "new.state", 2, 1),
    ):
        with pytest.raises(StateFileError) as refused:
            Stream.load(model, path)
        message = str(refused.value)
        assert f"a state of a format-{saved} step graph; this graph is format {graph}" in message
        assert "\n" not in message

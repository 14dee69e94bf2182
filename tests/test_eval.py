"""`infini eval`: bits per byte through the runtime against the PyTorch reference, for the
model and both ablations; byte positions; the margins; the command's output and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from clirun import infini, one_line_error

from infini_onnx.evaluation import margins
from infini_onnx.model import InfiniLlamaForCausalLM
from infini_onnx.runtime import InfiniModel, InputError
from infini_onnx.runtime.evaluate import Scored, score, tokenize_with_offsets

# 1,400 bytes: crosses the 1K bucket, 44 segments of the tiny model, multi-byte characters.
TEXT = ("Thé quick brown fox — jumps over the lazy dog; " * 40)[:1300] + "ünïcödé ends"


def reference_bits(model: InfiniLlamaForCausalLM, ids: np.ndarray, reset: bool) -> np.ndarray:
    """Each token's bits straight from the PyTorch model, one segment at a time, the memory
    emptied after each segment when `reset`."""
    c = model.config
    inputs = torch.tensor(np.concatenate([[c.eos_token_id], ids[:-1]]))[None]
    state, bits = None, []
    with torch.no_grad():
        for start in range(0, len(ids), c.segment_len):
            logits, state = model(inputs[:, start : start + c.segment_len], state)
            logp = torch.log_softmax(logits[0].double(), -1)
            target = torch.tensor(ids[start : start + c.segment_len])
            bits.append(-logp[torch.arange(len(target)), target].numpy() / math.log(2))
            if reset:
                zero = torch.zeros_like
                state.memory, state.norm = zero(state.memory), zero(state.norm)
                state.memory_acc, state.norm_acc = zero(state.memory_acc), zero(state.norm_acc)
    return np.concatenate(bits)


@pytest.fixture(scope="module")
def window_only_onnx(tiny_onnx, tmp_path_factory):
    """The tiny model with its gates closed, exported: (model_dir, onnx)."""
    from infini_onnx.evaluation import export_graph

    out = tmp_path_factory.mktemp("window") / "model.onnx"
    export_graph(tiny_onnx[0], out, log=lambda msg: None, window_only=True)
    return out.parent / "closed", out


@pytest.mark.parametrize("run", ["model", "memory reset", "window only"])
def test_bits_per_byte_match_the_pytorch_reference(run, tiny_onnx, window_only_onnx):
    model_dir, graph = window_only_onnx if run == "window only" else tiny_onnx
    reference = InfiniLlamaForCausalLM.from_pretrained(model_dir)
    scored = score(InfiniModel(graph, threads=1), TEXT, reset_memory=run == "memory reset")
    ids, _ = tokenize_with_offsets(InfiniModel(graph, threads=1).tokenizer, TEXT)
    expected = reference_bits(reference, ids, reset=run == "memory reset")
    size = len(TEXT.encode())
    assert abs(scored.bits_per_byte() - expected.sum() / size) < 1e-4
    np.testing.assert_allclose(scored.bits, expected, atol=2e-3)


def test_the_ablations_change_what_the_model_reads(tiny_onnx, window_only_onnx):
    """Each ablation is a different computation (else the comparisons would be empty)."""
    model = InfiniModel(tiny_onnx[1], threads=1)
    full = score(model, TEXT).bits_per_byte()
    reset = score(model, TEXT, reset_memory=True).bits_per_byte()
    window = score(InfiniModel(window_only_onnx[1], threads=1), TEXT).bits_per_byte()
    assert min(abs(full - reset), abs(full - window), abs(reset - window)) > 1e-3


def test_closed_gates_read_nothing_from_the_memory(window_only_onnx):
    """Window only: emptying the memory changes no bit."""
    model = InfiniModel(window_only_onnx[1], threads=1)
    np.testing.assert_array_equal(
        score(model, TEXT).bits, score(model, TEXT, reset_memory=True).bits
    )


def test_tokens_count_at_their_first_byte(tiny_model):
    ids, starts = tokenize_with_offsets(tiny_model.tokenizer, "aé—b")
    assert ids.tolist() == list("aé—b".encode())
    assert starts.tolist() == [0, 1, 1, 3, 3, 3, 6]


def test_position_ranges_split_the_bits():
    bits = np.arange(1, 13, dtype=np.float64)  # 12 tokens of 2,500 bytes each
    scored = Scored(bits, np.arange(12) * 2_500, 30_000)
    b = scored.buckets()
    assert b["0-1K"] == 1 / 1_000  # one token starts at 0
    assert b["1K-10K"] == (2 + 3 + 4) / 9_000
    assert b["10K-100K"] == bits[4:].sum() / 20_000
    assert math.isnan(b["100K+"]) and b["10K+"] == b["10K-100K"]
    assert b["all"] == bits.sum() / 30_000
    curve = scored.curve()
    assert curve[-1][0] == 30_000
    assert math.isclose(
        sum(bpb * (end - start) for start, (end, bpb) in zip([0] + [e for e, _ in curve], curve)),
        bits.sum(),
    )


def test_without_memory_spends_the_state(tiny_model):
    from infini_onnx.runtime import State

    N = tiny_model.config.segment_len
    state = State.zeros(tiny_model.layout)
    _, state = tiny_model.step(state, np.arange(N)[None] % 200, 1)  # a segment: memory commits
    before = state.to_host()
    assert before["memory"].any() and before["memory_acc"].any()
    empty = state.without_memory()
    after = empty.to_host()
    for name in ("memory", "norm", "memory_acc", "norm_acc"):
        assert not after[name].any()
    np.testing.assert_array_equal(after["past_key"], before["past_key"])
    with pytest.raises(InputError, match="advanced"):
        state.to_host()
    tiny_model.step(empty, np.array([[1, 2]]), 1)  # the emptied state goes on


def test_offsets_of_a_tokenizer_that_trims_whitespace():
    """A whitespace token with an empty span after the text still counts inside it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel({"hello": 0, "Ġ": 1, "ĠĠ": 2}, unk_token="Ġ"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    ids, starts = tokenize_with_offsets(tokenizer, "hello  ")
    assert len(ids) == len(starts) >= 2
    assert starts.tolist() == sorted(starts.tolist()) and starts.max() < 7
    bits = Scored(np.ones(len(ids)), starts, 7)
    assert bits.bits_per_byte() == len(ids) / 7


def test_margins_are_mean_differences_in_standard_errors():
    def text(ours, other):
        return dict(
            runs={
                "model": dict(buckets={"10K+": ours}),
                "other": dict(buckets={"10K+": other}),
            }
        )

    m = margins([text(2.0, 2.3), text(1.0, 1.1), text(3.0, 3.2), text(math.nan, 9.0)])["other"]
    diff = np.array([0.3, 0.1, 0.2])
    assert m["texts"] == 3
    assert math.isclose(m["mean"], 0.2)
    assert math.isclose(m["standard_error"], diff.std(ddof=1) / math.sqrt(3))
    assert math.isclose(m["standard_errors"], 0.2 / m["standard_error"])
    assert math.isclose(m["percent"], 100 * 0.2 / np.mean([2.3, 1.1, 3.2]))


def test_the_command_reports_runs_and_writes_json(tiny_onnx, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text(TEXT)
    out = tmp_path / "eval.json"
    result = infini("eval", tiny_onnx[1], text, "--compare", f"again={tiny_onnx[1]}",
                    "--threads", 1, "--json", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "needs the model directory" in result.output  # no window ablation from an .onnx
    figures = json.loads(out.read_text())
    (entry,) = figures["texts"]
    assert list(entry["runs"]) == ["model", "memory reset", "again"]
    assert entry["bytes"] == len(TEXT.encode()) and entry["tokens"] == len(TEXT.encode())
    model = entry["runs"]["model"]["buckets"]["all"]
    assert entry["runs"]["again"]["buckets"]["all"] == model  # the same graph, the same bits
    assert f"{model:.4f}" in result.output
    assert entry["runs"]["model"]["buckets"]["100K+"] is None  # strict JSON: no NaN
    assert "NaN" not in out.read_text()
    assert "no margins: no text is longer than 10K bytes" in result.output


def test_one_text_gives_a_margin_without_standard_error():
    from infini_onnx.evaluation import table

    runs = {"model": dict(buckets={"10K+": 2.0}), "other": dict(buckets={"10K+": 2.5})}
    result = dict(texts=[dict(path="t", bytes=1, tokens=1, runs=runs)])
    result["margins"] = margins(result["texts"])
    for run in runs.values():
        run["buckets"] = {**dict.fromkeys(["0-1K", "1K-10K", "10K-100K", "100K+", "all"], 2.0),
                          **run["buckets"]}  # fmt: skip
    lines = "\n".join(table(result))
    assert "vs other: +0.5000 bits/byte (+20.0%), no standard error from 1 text(s)" in lines


@pytest.mark.parametrize(
    "args, words",
    [
        (["--compare", "nolabel"], "expected LABEL=MODEL"),
        (["--compare", "model=x.onnx"], "is taken"),
    ],
)
def test_bad_compare_options_are_refused(args, words, tiny_onnx, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("hello")
    result = infini("eval", tiny_onnx[1], text, *args)
    assert result.exit_code == 2 and words in result.output


def test_a_missing_model_or_empty_text_is_one_line(tiny_onnx, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("hello")
    one_line_error(infini("eval", tmp_path / "nothing.onnx", text), "no such model")
    missing = f"b={tmp_path / 'nothing'}"
    one_line_error(infini("eval", tiny_onnx[0], text, "--compare", missing), "no such model")
    one_line_error(infini("eval", tiny_onnx[1], text, "--plot", tmp_path / "p.txt"), "type")
    one_line_error(infini("eval", tiny_onnx[1], text, "--json", text), "input")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(infini("eval", tiny_onnx[1], empty, "--no-ablations"), "empty")


def test_window_only_models_never_read_or_learn_the_memory(tmp_path):
    """infini init --window-only: the gates are closed for good (zero gradient), and the logits
    do not depend on the memory."""
    result = infini("init", tmp_path / "w", "--window-only")
    assert result.exit_code == 0 and "window only" in result.output, result.output
    model = InfiniLlamaForCausalLM.from_pretrained(tmp_path / "w")
    ids = torch.randint(0, 256, (1, 80))
    logits, state = model(ids)
    logits.square().mean().backward()
    for layer in model.model.layers:
        assert torch.all(layer.self_attn.gate.grad == 0)
    state.memory, state.norm = torch.rand_like(state.memory), torch.rand_like(state.norm) + 1
    with torch.no_grad():
        empty = state.map(lambda t: t)
        empty.memory, empty.norm = torch.zeros_like(state.memory), torch.zeros_like(state.norm)
        assert torch.equal(model(ids[:, :8], state)[0], model(ids[:, :8], empty)[0])
    one_line_error(
        infini("init", tmp_path / "x", "--window-only", "--gate-init", "-3"), "--gate-init"
    )


def test_the_shipped_text_model_reads_english():
    """examples/models/text-3m (docs/real-text.md) loads and predicts English prose far better
    than chance (8 bits per byte): its weights are the trained ones."""
    from pathlib import Path

    model = InfiniLlamaForCausalLM.from_pretrained(
        Path(__file__).parent.parent / "examples/models/text-3m"
    )
    text = (
        "And the word of the LORD came unto me, saying, Go and cry in the ears of Jerusalem, "
        "saying, Thus saith the LORD; I remember thee, the kindness of thy youth. "
    ) * 4
    ids = np.frombuffer(text.encode(), np.uint8).astype(np.int64)
    bits = reference_bits(model, ids, reset=False)
    assert bits.sum() / len(ids) < 2.5

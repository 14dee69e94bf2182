"""Virtual-length training: weighted memory writes, the training samples, the rho metric."""

from __future__ import annotations

import random

import pytest
import torch

from infini_onnx import passkey
from infini_onnx.model import from_pretrained
from infini_onnx.model.modeling import sigma
from infini_onnx.train import (
    TrainConfig,
    answer_weighted_loss,
    make_batch,
    make_sample,
    retrieval_margin,
)


@pytest.mark.parametrize("memory_update", ["linear", "delta"])
def test_write_weights_of_one_are_the_plain_write(model_dir_factory, memory_update):
    model = from_pretrained(model_dir_factory(memory_update))
    ids = torch.randint(0, 256, (2, 3 * model.config.segment_len + 5))
    logits, state = model(ids)
    weighted, weighted_state = model(ids, write_weights=torch.ones(ids.shape))
    assert torch.equal(logits, weighted)
    assert torch.equal(state.memory, weighted_state.memory)
    assert torch.equal(state.norm_acc, weighted_state.norm_acc)


def test_weight_c_is_c_repeated_writes_in_layer0_linear(model_dir_factory):
    """Layer 0's keys and values depend on each token alone, so writing a segment once with
    weight c must leave the same layer-0 memory as writing it in c consecutive segments."""
    model = from_pretrained(model_dir_factory("linear"))
    N, c = model.config.segment_len, 3
    segment = torch.randint(0, 256, (1, N))
    _, once = model(segment, write_weights=torch.full((1, N), float(c)))
    _, repeated = model(segment.repeat(1, c))
    torch.testing.assert_close(once.memory[:, 0], repeated.memory[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(once.norm[:, 0], repeated.norm[:, 0], rtol=1e-5, atol=1e-5)
    _, plain = model(segment)
    torch.testing.assert_close(once.norm[:, 0], c * plain.norm[:, 0])


def test_samples_are_exact_with_the_needle_a_segment_before_the_question():
    rng = random.Random(0)
    for length in (256, 301, 777, 1500):
        ids, weights = make_sample(rng, length, 64, 50.0)
        text = bytes(ids).decode()
        assert len(ids) == len(weights) == length
        key = text[-6:-1]
        needle_at = text.index(passkey.needle(key))
        question_at = len(text) - len(passkey.QUESTION) - len(passkey.answer(key))
        assert text[question_at:] == passkey.QUESTION + passkey.answer(key)
        assert question_at - (needle_at + len(passkey.needle(key))) >= 64
        heavy = "".join(ch for ch, w in zip(text, weights) if w == 50.0)
        light = "".join(ch for ch, w in zip(text, weights) if w == 1.0)
        assert light == passkey.needle(key) + passkey.QUESTION + passkey.answer(key)
        assert len(heavy) + len(light) == length and passkey.QUESTION not in heavy
    with pytest.raises(ValueError, match="no room"):
        make_sample(rng, 150, 64, 1.0)


def test_cross_answer_batches_put_a_segment_boundary_in_the_answer():
    rng = random.Random(1)
    cfg = TrainConfig(virtual_max=100.0, cross_answer=1.0)
    n_answer = len(passkey.answer("00000"))
    for _ in range(20):
        ids, targets, weights = make_batch(rng, cfg, 2, 500, 64)
        length = ids.shape[1] + 1
        cuts = range(-12, n_answer - 1)  # the boundary opens at this answer (< 0: question) byte
        assert any((length - n_answer + cut) % 64 == 0 for cut in cuts), length
        assert weights is not None and 1.0 <= float(weights.max()) <= 100.0
        assert torch.equal(ids[:, 1:], targets[:, :-1])
    plain = TrainConfig()
    assert make_batch(rng, plain, 2, 500, 64)[2] is None  # no weights: the plain write


def test_real_stream_batches_write_once_with_the_needle_anywhere():
    """real_share batches: real_batch_size rows of one length in [real_min, real_max], no write
    weights, and needles at every depth, also right before the question (inside its window)."""
    rng = random.Random(2)
    cfg = TrainConfig(
        virtual_max=1000.0, real_share=1.0, real_min=500, real_max=700, real_batch_size=3
    )
    gaps, lengths = [], set()
    for _ in range(15):
        ids, targets, weights = make_batch(rng, cfg, 8, 300, 64)
        assert ids.shape[0] == 3 and weights is None
        length = ids.shape[1] + 1
        assert 500 <= length <= 700
        lengths.add(length)
        for row in torch.cat([ids, targets[:, -1:]], dim=1).tolist():
            text = bytes(row).decode()
            key = text[-6:-1]
            needle_end = text.index(passkey.needle(key)) + len(passkey.needle(key))
            gaps.append(length - len(passkey.answer(key)) - len(passkey.QUESTION) - needle_end)
    assert min(gaps) == 0 and max(gaps) > 400 and len(lengths) > 5


def test_near_batches_end_the_needle_at_most_a_sentence_before_the_question():
    rng = random.Random(3)
    cfg = TrainConfig(virtual_max=1000.0, near_share=1.0)
    gaps = set()
    for length in (300, 555, 1500, 4000):
        ids, targets, weights = make_batch(rng, cfg, 6, length, 64)
        assert weights is not None and float(weights.max()) > 1.0  # still virtual length
        for row in torch.cat([ids, targets[:, -1:]], dim=1).tolist():
            text = bytes(row).decode()
            key = text[-6:-1]
            needle_end = text.index(passkey.needle(key)) + len(passkey.needle(key))
            gaps.add(length - len(passkey.answer(key)) - len(passkey.QUESTION) - needle_end)
    assert gaps == {0, len(passkey.FILLER)}


def test_a_window_is_added_to_a_model_directory_as_it_loads(model_dir_factory):
    """from_pretrained(..., local_window=W) (train.py --init-from with --local-window): the
    same weights under a config with the window, validated like the file's."""
    from infini_onnx.errors import ModelDirError
    from infini_onnx.model import InfiniLlamaForCausalLM

    model_dir = model_dir_factory()
    plain = InfiniLlamaForCausalLM.from_pretrained(model_dir)
    windowed = InfiniLlamaForCausalLM.from_pretrained(model_dir, local_window=24)
    assert plain.config.local_window != 24 and windowed.config.local_window == 24
    assert windowed.model.layers[0].self_attn.config.local_window == 24
    for (name, a), b in zip(plain.state_dict().items(), windowed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ModelDirError, match="local_window"):
        InfiniLlamaForCausalLM.from_pretrained(model_dir, local_window=0)


def test_rho_matches_a_direct_computation_in_layer0(model_dir_factory):
    """Layer 0's queries and keys come from the embeddings alone: recompute rho from them."""
    model = from_pretrained(model_dir_factory("linear", gqa=False))
    rho = retrieval_margin(model, length=400, samples=1, seed=5)
    assert rho.shape == (model.config.num_hidden_layers, model.config.num_attention_heads)

    key = passkey.random_key(random.Random(5))
    prompt = "".join(passkey.haystack(400, 0.5, key))
    text = prompt + passkey.answer(key)[:5]
    attn = model.model.layers[0].self_attn
    x = model.model.layers[0].input_layernorm(
        model.model.embed_tokens(torch.tensor(list(text.encode())))
    )
    H, d = model.config.num_attention_heads, model.config.head_dim
    sq, sk = sigma(attn.q_proj(x).view(-1, H, d)), sigma(attn.k_proj(x).view(-1, H, d))
    start = prompt.index(passkey.needle(key))
    stop = start + len(passkey.needle(key))
    question = len(prompt) - len(passkey.QUESTION)
    filler = torch.cat([sk[:start], sk[stop:question]]).mean(0)  # [H, d]
    needle = sk[start:stop].sum(0)
    expected = ((sq[-5:] * needle).sum(-1) / (sq[-5:] * filler).sum(-1)).log10().mean(0)
    torch.testing.assert_close(rho[0], expected.detach(), rtol=1e-4, atol=1e-4)


def test_the_answer_weighs_answer_weight_times_a_filler_byte():
    logits = torch.randn(3, 10, 7, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 7, (3, 10), generator=torch.Generator().manual_seed(1))
    nll = -logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]  # [3, 10]
    filler, answer = nll[:, :-4].sum(1), nll[:, -4:].sum(1)  # per sample
    expected = ((filler + 20 * answer) / (6 + 20 * 4)).mean()
    got = answer_weighted_loss(logits, targets, n_answer=4, answer_weight=20.0)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(answer_weighted_loss(logits, targets, 4, 1.0), nll.mean())

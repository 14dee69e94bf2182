"""Sampling against its definitions, measured statistically; incremental text decoding."""

from __future__ import annotations

import numpy as np
import pytest

from infini_onnx.errors import InputError
from infini_onnx.runtime.sampling import Sampler, SamplingOptions
from infini_onnx.runtime.textio import TextDecoder
from infini_onnx.tokenizer import byte_level_tokenizer

PROBS = np.array([0.05, 0.4, 0.1, 0.3, 0.15])  # a shuffled order: the sampler must sort
DRAWS = 40_000


def frequencies(
    sampler: Sampler, probs: np.ndarray, draws: int = DRAWS, shift: float = 0.0
) -> np.ndarray:
    """How often each token is drawn from logits log(probs) + shift, `draws` rows at once."""
    logits = np.tile((np.log(probs) + shift).astype(np.float32), (draws, 1))
    return np.bincount(sampler(logits), minlength=len(probs)) / draws


def assert_distribution(observed: np.ndarray, expected: np.ndarray) -> None:
    """Within 5 standard errors of a multinomial frequency (a false alarm ~1e-6 per token)."""
    se = np.sqrt(np.maximum(expected * (1 - expected), 1e-12) / DRAWS)
    assert np.all(np.abs(observed - expected) <= 5 * se + 1e-12), (observed, expected)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_samples_softmax_of_scaled_logits(temperature):
    expected = PROBS ** (1 / temperature)
    expected /= expected.sum()
    assert_distribution(frequencies(Sampler(SamplingOptions(temperature, seed=0)), PROBS), expected)


def test_default_temperature_is_one_and_large_logits_do_not_overflow():
    assert_distribution(frequencies(Sampler(SamplingOptions(seed=4)), PROBS, shift=1000.0), PROBS)


@pytest.mark.parametrize(
    "options", [dict(temperature=-0.1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.01)]
)
def test_options_outside_their_range_are_refused(options):
    with pytest.raises(InputError):
        Sampler(SamplingOptions(**options))


def test_ties_are_broken_towards_the_lower_id():
    """Among equal logits top-k keeps the lowest ids (a stable sort, whatever the vocabulary
    size; numpy's default sort is not stable past 16 elements)."""
    row = np.random.default_rng(0).integers(0, 3, 300).astype(np.float32)  # ~100 ties at 2
    tokens = Sampler(SamplingOptions(1.0, top_k=4, seed=5))(np.tile(row, (2000, 1)))
    assert set(tokens.tolist()) == set(np.flatnonzero(row == 2)[:4].tolist())


def test_top_k_keeps_the_k_most_likely_renormalised():
    expected = np.where(PROBS >= 0.3, PROBS, 0) / 0.7
    assert_distribution(
        frequencies(Sampler(SamplingOptions(1.0, top_k=2, seed=1)), PROBS), expected
    )


@pytest.mark.parametrize(
    "top_p,kept",
    [
        (0.75, [0.4, 0.3, 0.15]),  # 0.4 + 0.3 = 0.7 < 0.75: the third is needed
        (0.69, [0.4, 0.3]),
        (0.3, [0.4]),
        (1.0, PROBS.tolist()),
    ],
)
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p, kept):
    expected = np.where(np.isin(PROBS, kept), PROBS, 0)
    expected /= expected.sum()
    assert_distribution(
        frequencies(Sampler(SamplingOptions(1.0, top_p=top_p, seed=2)), PROBS), expected
    )


def test_options_combine_temperature_then_top_k_then_top_p():
    scaled = PROBS**2 / (PROBS**2).sum()  # temperature 0.5
    top3 = np.where(PROBS >= 0.15, scaled, 0)
    top3 /= top3.sum()  # [.., 0.5926, .., 0.3333, 0.0741] in order 0.4, 0.3, 0.15
    expected = np.where(PROBS >= 0.3, top3, 0)  # 0.5926 < 0.9 <= 0.5926 + 0.3333
    expected /= expected.sum()
    sampler = Sampler(SamplingOptions(0.5, top_k=3, top_p=0.9, seed=3))
    assert_distribution(frequencies(sampler, PROBS), expected)


def test_greedy_and_seeds():
    logits = np.log(np.tile(PROBS, (4, 1))).astype(np.float32)
    assert Sampler(SamplingOptions(0.0))(logits).tolist() == [1, 1, 1, 1]
    assert Sampler(SamplingOptions(5.0, top_k=1))(logits).tolist() == [1, 1, 1, 1]
    a, b, c = (frequencies(Sampler(SamplingOptions(1.0, seed=s)), PROBS, 50) for s in (7, 7, 8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def decode_one_by_one(text: str) -> list[str]:
    tokenizer = byte_level_tokenizer()
    decoder = TextDecoder(tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    pieces = [decoder.push(token) for token in ids]
    return pieces + [decoder.flush()]


@pytest.mark.parametrize("text", ["héllo €", "日本語のテキスト", "emoji 🙂 ok", "plain ascii"])
def test_text_decoder_holds_back_unfinished_characters(text):
    pieces = decode_one_by_one(text)
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_text_decoder_flushes_a_character_cut_at_the_end():
    tokenizer = byte_level_tokenizer()
    decoder = TextDecoder(tokenizer)
    euro = tokenizer.encode("a€", add_special_tokens=False).ids  # 'a' and three bytes
    assert [decoder.push(t) for t in euro[:3]] == ["a", "", ""]
    assert decoder.flush() == "\ufffd"  # the unfinished character, shown as such at the end

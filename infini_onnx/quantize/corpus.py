"""Token streams for calibration and evaluation: a text file or generated English-like text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from infini_onnx.errors import QuantizeError
from infini_onnx.runtime import InfiniModel

_SUBJECTS = (
    "The old lighthouse keeper",
    "A young engineer",
    "The river",
    "Our neighbour's cat",
    "The committee",
    "Every morning the baker",
    "The small robot",
    "A travelling musician",
    "The library on the hill",
    "My grandmother",
)
_VERBS = (
    "remembered",
    "carried",
    "painted",
    "counted",
    "wrote about",
    "listened to",
    "repaired",
    "forgot",
    "followed",
    "described",
)
_OBJECTS = (
    "the long winter nights.",
    "a letter from the capital.",
    "seven silver keys.",
    "the sound of distant trains.",
    "every book on the shelf.",
    "the price of bread in 1907.",
    "a map of the northern islands.",
    "the names of all the ships.",
    "a song about the sea.",
    "the number 4172, twice.",
)


def generated_text(n_chars: int, seed: int) -> str:
    """Random sentences from a small English grammar: structured, repetitive, reproducible."""
    rng = np.random.default_rng(seed)
    parts, size = [], 0
    while size < n_chars:
        sentence = " ".join(rng.choice(words) for words in (_SUBJECTS, _VERBS, _OBJECTS))
        parts.append(sentence)
        size += len(sentence) + 1
    return " ".join(parts)[:n_chars]


def encode(text: str, tokenizer: Tokenizer | None, vocab_size: int) -> np.ndarray:
    """Token ids of `text` with the model's tokenizer (UTF-8 bytes if it has none)."""
    if tokenizer is not None:
        ids = np.array(tokenizer.encode(text, add_special_tokens=False).ids, np.int64)
    else:
        ids = np.frombuffer(text.encode(), np.uint8).astype(np.int64)
    return ids % vocab_size


def token_stream(
    model: InfiniModel, n_segments: int, seed: int, path: str | Path | None = None
) -> np.ndarray:
    """n_segments whole segments of tokens for `model` from `path`, or generated text when path
    is None. A file shorter than that is repeated; one with no tokens is refused."""
    n_tokens = n_segments * model.config.segment_len
    tokenizer, vocab = model.tokenizer, model.config.vocab_size
    if path is None:
        ids = encode(generated_text(n_tokens * 2, seed), tokenizer, vocab)
    else:
        try:
            ids = encode(Path(path).read_text(errors="replace"), tokenizer, vocab)
        except OSError as e:
            raise QuantizeError(f"{path}: cannot read ({e.strerror or e})") from None
        if ids.size == 0:
            raise QuantizeError(f"{path}: no text to calibrate with")
    return np.resize(ids, n_tokens)

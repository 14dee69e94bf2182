"""Token streams for calibration and evaluation: a text file or generated English-like text."""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from infini_onnx.errors import QuantizeError
from infini_onnx.runtime import InfiniModel

BLOCK_BYTES = 1 << 16  # a text file is read and encoded this many bytes at a time
# A text file yields a token every few bytes (UTF-8 English: about 4 per BPE token, 1 per byte
# token); a file whose first n_tokens * MAX_BYTES_PER_TOKEN bytes yield fewer than n_tokens is
# refused without reading further.
MAX_BYTES_PER_TOKEN = 64

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
    """n_segments whole segments of tokens for `model` from the text file `path` (file_tokens;
    repeated if shorter), or from generated text when path is None."""
    n_tokens = n_segments * model.config.segment_len
    tokenizer, vocab = model.tokenizer, model.config.vocab_size
    if path is None:
        ids = encode(generated_text(n_tokens * 2, seed), tokenizer, vocab)
    else:
        ids = file_tokens(path, n_tokens, tokenizer, vocab)
    return np.resize(ids, n_tokens)


def file_tokens(
    path: str | Path, n_tokens: int, tokenizer: Tokenizer | None, vocab_size: int
) -> np.ndarray:
    """The first n_tokens token ids of a text file (all of a shorter one), read and encoded one
    block at a time (a word cut between blocks may encode differently). Stops once it has
    enough; refuses a file with no tokens, or too few in its first
    max(n_tokens * MAX_BYTES_PER_TOKEN, BLOCK_BYTES) bytes (e.g. /dev/zero with a tokenizer
    that merges NULs), without reading further."""
    limit = max(n_tokens * MAX_BYTES_PER_TOKEN, BLOCK_BYTES)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces, count, read = [], 0, 0
    try:
        with open(path, "rb") as f:
            while count < n_tokens and read < limit:
                block = f.read(min(BLOCK_BYTES, limit - read))
                read += len(block)
                ids = encode(decoder.decode(block, final=not block), tokenizer, vocab_size)
                pieces.append(ids[: n_tokens - count])
                count += pieces[-1].size
                if not block:
                    break
    except OSError as e:
        raise QuantizeError(f"{path}: cannot read ({e.strerror or e})") from None
    if count < n_tokens and read == limit:
        raise QuantizeError(
            f"{path}: {count:,} tokens in its first {limit:,} bytes, {n_tokens:,} needed "
            f"(at most {MAX_BYTES_PER_TOKEN} bytes are read per token): not text"
        )
    if count == 0:
        raise QuantizeError(f"{path}: no text (not a single token)")
    return np.concatenate(pieces)

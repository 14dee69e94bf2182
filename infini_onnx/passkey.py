"""The pass-key retrieval task of the Infini-attention paper (section 4.2), as a text stream.

A haystack of repeated filler with one needle ("The pass key is NNNNN ...") at a chosen depth,
then the question. Torch-free: the training script and the runtime demo share it. Lengths are
counted in bytes, which are the tokens of the byte-level tokenizer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
QUESTION = "What is the pass key? The pass key is"


def random_key(rng: random.Random) -> str:
    """A 5-digit pass key."""
    return f"{rng.randrange(10000, 100000)}"


def needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key. "


def answer(key: str) -> str:
    """What a model should generate after QUESTION."""
    return f" {key}."


def haystack(length: int, depth: float, key: str, chunk_repeats: int = 64) -> Iterator[str]:
    """Yield a prompt of exactly `length` bytes in chunks (never whole in memory).

    Filler, the needle after `depth` (0 = start, 1 = end) of the filler's whole repeats, more
    filler, then QUESTION. The stream opens with the tail of a filler sentence so that the length
    is exact: every length puts the question at its own offset within a segment.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    repeats, partial = divmod(haystack_room(length), len(FILLER))
    before = round(depth * repeats)
    if partial:
        yield FILLER[len(FILLER) - partial :]
    yield from _filler(before, chunk_repeats)
    yield needle(key)
    yield from _filler(repeats - before, chunk_repeats)
    yield QUESTION


def haystack_room(length: int) -> int:
    """Bytes of filler in a haystack of `length` bytes; ValueError if there is no room at all."""
    room = length - len(needle("00000")) - len(QUESTION)
    if room < 0:
        raise ValueError(f"a pass-key haystack needs at least {length - room} tokens, got {length}")
    return room


def _filler(repeats: int, chunk_repeats: int) -> Iterator[str]:
    while repeats > 0:
        n = min(repeats, chunk_repeats)
        yield FILLER * n
        repeats -= n

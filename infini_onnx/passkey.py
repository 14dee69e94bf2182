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
DEMO_LENGTH, DEMO_DEPTH = 1_000_000, 0.5  # `infini demo passkey` with no arguments
SWEEP_DEPTHS = "start,0.25,middle,0.75,end"  # a sweep's depths by default (the table)
GRID_DEPTHS = "start,middle,end"  # a fine grid's (many lengths, so fewer depths)


def random_key(rng: random.Random) -> str:
    """A 5-digit pass key."""
    return f"{rng.randrange(10000, 100000)}"


def demo_key(seed: int) -> str:
    """The pass key of `infini demo passkey --seed SEED`."""
    return random_key(random.Random(seed))


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
    before, after = around_needle(length, depth, chunk_repeats)
    yield from before
    yield needle(key)
    yield from after


def around_needle(
    length: int, depth: float, chunk_repeats: int = 64
) -> tuple[Iterator[str], Iterator[str]]:
    """The chunks of `haystack(length, depth, key)` before and after the needle: the same for
    every key, so that trials of one length and depth can share the text before it."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    repeats, partial = divmod(haystack_room(length), len(FILLER))
    before = round(depth * repeats)

    def head() -> Iterator[str]:
        if partial:
            yield FILLER[len(FILLER) - partial :]
        yield from _filler(before, chunk_repeats)

    def tail() -> Iterator[str]:
        yield from _filler(repeats - before, chunk_repeats)
        yield QUESTION

    return head(), tail()


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

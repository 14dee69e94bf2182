"""Text in and out: the tokenizer stored in the model's metadata and incremental decoding."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer

from infini_onnx.errors import InputError

INCOMPLETE = "\ufffd"  # what decoding yields for the first bytes of an unfinished character
MAX_HELD = 8  # tokens held back at most while a character is incomplete


def encode(tokenizer: Tokenizer | None, text: str) -> np.ndarray:
    """Token ids of `text` (no special tokens added)."""
    if tokenizer is None:
        raise InputError("this model has no tokenizer in its metadata: feed token ids instead")
    if not isinstance(text, str):
        raise InputError(f"expected text, got {type(text).__name__}")
    return np.array(tokenizer.encode(text, add_special_tokens=False).ids, np.int64)


def encode_chunks(tokenizer: Tokenizer | None, text: str | Iterable[str]) -> Iterator[np.ndarray]:
    """Token ids of a text or of an iterable of text chunks, one array per chunk."""
    for chunk in [text] if isinstance(text, str) else text:
        yield encode(tokenizer, chunk)


class TextDecoder:
    """Turns generated token ids into text pieces as they come.

    Decodes a short window of recent tokens and emits what the newest token added, holding back
    while the text ends in an unfinished UTF-8 character (byte-level tokens). Constant memory.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[:prefix] are context only; ids[prefix:] are not emitted yet

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[: self.prefix])
        text = self._decode(self.ids)
        if text.endswith(INCOMPLETE) and len(self.ids) - self.prefix < MAX_HELD:
            return ""
        self.ids = self.ids[-4:]  # context for the next piece (decoders that join tokens)
        self.prefix = len(self.ids)
        return text[len(before) :]

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character at the end)."""
        rest = self._decode(self.ids)[len(self._decode(self.ids[: self.prefix])) :]
        self.ids, self.prefix = [], 0
        return rest

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

"""Text in and out: the tokenizer stored in the model's metadata and incremental decoding."""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from infini_onnx.errors import InputError

INCOMPLETE = "\ufffd"  # what decoding yields for the first bytes of an unfinished character
MAX_HELD = 8  # tokens held back at most while a character is incomplete


def encode(tokenizer: Tokenizer | None, text: str) -> np.ndarray:
    """Token ids of `text` (no special tokens added); a byte-level model's are its UTF-8 bytes
    (the same ids, without the tokenizer's pass over them: 1 MB in milliseconds, not a
    second)."""
    if tokenizer is None:
        raise InputError("this model has no tokenizer in its metadata: feed token ids instead")
    if not isinstance(text, str):
        raise InputError(f"expected text, got {type(text).__name__}")
    check_unicode(text)
    if is_byte_level(tokenizer):
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64)
    return np.array(tokenizer.encode(text, add_special_tokens=False).ids, np.int64)


def read_text_file(path: str | Path) -> str:
    """A text file as UTF-8, undecodable bytes as U+FFFD; InputError if it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None


def encode_files(
    tokenizer: Tokenizer | None, paths: Iterable[str | Path], separator: int | None = None
) -> np.ndarray:
    """Token ids of text files (read_text_file), one after the other (`separator` after
    each, e.g. eos)."""
    pieces = []
    for path in paths:
        pieces.append(encode(tokenizer, read_text_file(path)))
        if separator is not None:
            pieces.append(np.array([separator], np.int64))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def check_unicode(text: str, what: str = "the text") -> None:
    """Refuse text with lone surrogates (what undecodable bytes become in a str)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{what} is not valid Unicode: lone surrogates, from bytes that are not valid UTF-8"
        ) from None


def encode_chunks(tokenizer: Tokenizer | None, text: str | Iterable[str]) -> Iterator[np.ndarray]:
    """Token ids of a text or of an iterable of text chunks, one array per chunk."""
    if not isinstance(text, (str, Iterable)):
        raise InputError(f"expected text or an iterable of text chunks, got {type(text).__name__}")
    for chunk in [text] if isinstance(text, str) else text:
        yield encode(tokenizer, chunk)


def is_byte_level(tokenizer: Tokenizer) -> bool:
    """Whether token id = byte value for all 256 bytes (the tokenizer `infini init` writes)."""
    if sorted(tokenizer.get_vocab(with_added_tokens=False).values()) != list(range(256)):
        return False
    ascii_ids = tokenizer.encode(bytes(range(32, 127)).decode(), add_special_tokens=False).ids
    return ascii_ids == list(range(32, 127))


def encode_bytes(
    tokenizer: Tokenizer | None, blocks: Iterable[bytes], errors: str = "strict"
) -> Iterator[np.ndarray]:
    """Token ids of raw input bytes, one array per block. A byte-level model gets the bytes as
    they are (invalid UTF-8 included); otherwise the bytes are decoded as UTF-8 across block
    boundaries, `errors="strict"` refusing invalid UTF-8 and "replace" substituting U+FFFD."""
    if tokenizer is None:
        raise InputError("this model has no tokenizer in its metadata: feed token ids instead")
    if is_byte_level(tokenizer):
        for block in blocks:
            yield np.frombuffer(block, np.uint8).astype(np.int64)
        return
    decoder, offset = codecs.getincrementaldecoder("utf-8")(errors), 0
    for block in itertools.chain(blocks, [b""]):  # b"": the end, where a cut character fails
        held = len(decoder.getstate()[0])  # bytes of a character cut at the last block's end
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as e:
            raise InputError(
                f"the input is not valid UTF-8 at byte {offset - held + e.start:,} "
                "(--errors replace substitutes U+FFFD)"
            ) from None
        offset += len(block)
        yield encode(tokenizer, text)


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

"""Streams: feed tokens or text of any length, generate, save; and batches of streams."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from infini_onnx.errors import InputError, StateFileError
from infini_onnx.runtime import statefile, textio
from infini_onnx.runtime.sampling import Sampler, SamplingOptions
from infini_onnx.runtime.session import InfiniModel
from infini_onnx.runtime.state import State
from infini_onnx.stepgraph.files import graph_files

Tokens = np.ndarray | Iterable[int] | Iterable[Iterable[int]]
"""Token ids: an array or sequence of ids, or an iterable of such chunks (read lazily)."""


class _Streams:
    """What a stream and a batch of streams share: feeding and decoding over model.step."""

    def __init__(self, model: InfiniModel, state: State):
        self._model = model
        self._state = state

    @property
    def model(self) -> InfiniModel:
        return self._model

    @property
    def state(self) -> State:
        """The current state (immutable: keep a reference to go back to it)."""
        return self._state

    def _ingest(self, chunks: Iterable[np.ndarray], all_logits: bool) -> np.ndarray:
        """Feed [B, t] chunks; all or nothing: on an error the stream keeps its state (the
        calls write a copy of its window ring)."""
        start = state = self._state.copy()
        collected, N = [], self._model.config.segment_len
        for piece in _segment_pieces(chunks, N - state.cached, N):
            logits, state = self._model.step(state, piece, piece.shape[1] if all_logits else 1)
            if all_logits:
                collected.append(logits)
        if state is start:
            raise InputError("empty input: no tokens to feed")
        self._state = state
        return np.concatenate(collected, axis=1) if all_logits else state.logits

    def _validated(self, chunk: object, batch: int) -> np.ndarray:
        """A chunk of token ids as a [batch, t] int64 array, refused if outside the vocabulary."""
        a = np.asarray(chunk)
        if a.size == 0:
            return np.zeros((batch, 0), np.int64)
        if a.dtype.kind not in "iu":
            raise InputError(f"token ids must be integers, got {a.dtype} values")
        vocab = self._model.config.vocab_size
        if a.min() < 0 or a.max() >= vocab:
            bad = a[(a < 0) | (a >= vocab)].flat[0]
            raise InputError(f"token id {bad} outside the vocabulary [0, {vocab})")
        if a.ndim == 1 and batch == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[0] != batch:
            raise InputError(f"token chunks must have shape [{batch}, tokens], got {list(a.shape)}")
        return a.astype(np.int64, copy=False)

    def _sampler(self, sampling: SamplingOptions | None, options: dict, max_new_tokens: int):
        """The Sampler of one generate call; refuses bad options before any token."""
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        return Sampler((sampling or SamplingOptions()).with_fields(**options))

    def _decode(self, sampler: Sampler, max_new_tokens: int) -> Iterator[np.ndarray]:
        """Sample, feed back (one call per token) and yield tokens [B]; the state always
        includes every token yielded."""
        if self._state.logits is None:
            raise InputError("nothing fed yet: give a prompt or feed tokens first")
        for _ in range(max_new_tokens):
            tokens = sampler(self._state.logits)
            _, self._state = self._model.step(self._state, tokens[:, None], 1)
            yield tokens


class Stream(_Streams):
    """One token stream over an InfiniModel: constant memory and per-token cost at any length.

    Stream(model) starts an empty stream; Stream.load(model, path) resumes a saved one.
    """

    def __init__(self, model: InfiniModel, state: State | None = None):
        _check_model(model)
        super().__init__(model, State.zeros(model.layout) if state is None else state)

    @classmethod
    def load(cls, model: InfiniModel, path: str | Path) -> Stream:
        """A stream from a state file written by `Stream.save` for this model."""
        _check_model(model)
        host = statefile.load_state(
            _path(path), model.model_id, model.format_version, model.layout.max_file_bytes()
        )
        if not all(np.isfinite(a).all() for a in host.values()):
            raise StateFileError(f"{path}: NaN or inf in the saved state")
        try:
            state = State.from_host(model.layout, host)
        except (KeyError, ValueError, IndexError) as e:
            raise StateFileError(f"{path}: not a state of this model ({e!r})") from None
        if state.batch != 1:
            raise StateFileError(f"{path}: a batch of {state.batch} streams")
        return cls(model, state)

    @property
    def tokens_seen(self) -> int:
        return int(self._state.tokens_seen[0])

    @property
    def logits(self) -> np.ndarray | None:
        """Next-token logits [V] after the last token, None before any token."""
        return None if self._state.logits is None else self._state.logits[0]

    def feed(self, tokens: Tokens, *, all_logits: bool = False) -> np.ndarray:
        """Feed token ids: whole segments take one call each, the partial tail waits in the cache.

        Returns the next-token logits [V], or with all_logits those of every fed token [S, V].
        """
        logits = self._ingest((self._validated(c, 1) for c in _chunks(tokens)), all_logits)
        return logits[0]

    def feed_text(self, text_or_chunks: str | Iterable[str], *, all_logits: bool = False):
        """Tokenize and feed a text, or an iterable of text chunks (e.g. a file read in blocks)."""
        return self.feed(
            textio.encode_chunks(self._model.tokenizer, text_or_chunks), all_logits=all_logits
        )

    def generate(
        self,
        prompt: str | Tokens | None = None,
        max_new_tokens: int = 64,
        *,
        stop: Iterable[int] | None = None,
        sampling: SamplingOptions | None = None,
        **options,
    ) -> Iterator[int]:
        """Yield new tokens as they come. The prompt (text or ids) is fed first, folded into
        memory whatever its length; without one, generation continues the stream (a new stream
        starts from bos). Stops after max_new_tokens or a token of `stop` (default: eos),
        which is yielded. `sampling` (default SamplingOptions()), or its fields as keywords
        (temperature=0 is greedy, top_k, top_p, seed)."""
        sampler = self._sampler(sampling, options, max_new_tokens)
        if isinstance(prompt, str):
            prompt = textio.encode(self._model.tokenizer, prompt) if prompt else None
        if isinstance(prompt, (list, tuple, np.ndarray)) and np.size(prompt) == 0:
            prompt = None  # an empty prompt continues the stream
        elif prompt is None and self._state.logits is None:
            prompt = [self._model.config.bos_token_id]
        stops = {self._model.config.eos_token_id} if stop is None else _stop_tokens(stop)
        return self._generate(prompt, sampler, max_new_tokens, stops)

    def _generate(self, prompt, sampler, max_new_tokens, stops) -> Iterator[int]:
        if prompt is not None:
            self.feed(prompt)
        for tokens in self._decode(sampler, max_new_tokens):
            yield int(tokens[0])
            if tokens[0] in stops:
                return

    def generate_text(self, prompt: str | Tokens | None = None, **options) -> Iterator[str]:
        """generate() decoded to text pieces as they come (needs the model's tokenizer)."""
        if self._model.tokenizer is None:
            raise InputError("this model has no tokenizer in its metadata: use generate()")
        decoder = textio.TextDecoder(self._model.tokenizer)
        tokens = self.generate(prompt, **options)

        def pieces() -> Iterator[str]:
            for token in tokens:
                if piece := decoder.push(token):
                    yield piece
            if rest := decoder.flush():
                yield rest

        return pieces()

    def reset(self) -> None:
        """Back to an empty stream."""
        self._state = State.zeros(self._model.layout)

    def fork(self) -> Stream:
        """An independent copy at the same point (its own copy of the window ring, the only
        tensors a call writes in place: State)."""
        return Stream(self._model, self._state.copy())

    def save(self, path: str | Path) -> None:
        """Write the state atomically (see docs/runtime.md for the format)."""
        m = self._model
        statefile.save_state(
            _path(path),
            self._state.to_host(),
            m.model_id,
            m.variant,
            m.format_version,
            graph_files(m.path),
        )


class StreamBatch(_Streams):
    """B streams at the same position in their segment, advanced by one call per step.

    StreamBatch(streams) joins them (they must be at the same position in their segment);
    `split()` gives them back. Results equal running the streams one by one (to float rounding
    of batched kernels).
    """

    def __init__(self, streams: Iterable[Stream]):
        if not isinstance(streams, Iterable):
            raise InputError(f"streams must be a list of Streams, got {type(streams).__name__}")
        streams = list(streams)
        if not streams:
            raise InputError("batch of no streams")
        for s in streams:
            if not isinstance(s, Stream):
                raise InputError(f"streams must be a list of Streams, got {type(s).__name__}")
        model = streams[0].model
        if any(s.model is not model for s in streams):
            raise InputError("streams of another model cannot join this model's batch")
        positions = {s.state.cached for s in streams}
        if len(positions) > 1:
            raise InputError(
                f"streams of a batch must be at the same position in their segment, got "
                f"{sorted(positions)} (tokens_seen mod segment_len {model.config.segment_len})"
            )
        super().__init__(model, State.join([s.state for s in streams]))

    @property
    def tokens_seen(self) -> list[int]:
        return [int(n) for n in self._state.tokens_seen]

    def feed(self, tokens: np.ndarray | Iterable[np.ndarray], *, all_logits: bool = False):
        """Feed a [B, T] array of ids (or an iterable of [B, t] chunks), T equal for all rows.

        Returns the next-token logits [B, V], or with all_logits [B, S, V]."""
        B = self._state.batch
        chunks = [tokens] if isinstance(tokens, np.ndarray) else tokens
        if not isinstance(chunks, Iterable):
            raise InputError(f"expected a [B, T] array of token ids, got {type(tokens).__name__}")
        return self._ingest((self._validated(c, B) for c in chunks), all_logits)

    def generate(
        self, max_new_tokens: int = 64, *, sampling: SamplingOptions | None = None, **options
    ) -> Iterator[np.ndarray]:
        """Yield the next token of every stream [B] per step (no stop tokens: all rows go on).
        Sampling as for Stream.generate."""
        return self._decode(self._sampler(sampling, options, max_new_tokens), max_new_tokens)

    def split(self) -> list[Stream]:
        """The streams of the batch, each on its own again."""
        return [Stream(self._model, state) for state in self._state.split()]


def _check_model(model: object) -> None:
    if not isinstance(model, InfiniModel):
        raise InputError(f"model must be an InfiniModel, got {type(model).__name__}")


def _path(path: object) -> str | os.PathLike:
    """A state file's path; InputError unless a str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return path


def _stop_tokens(stop: object) -> set[int]:
    """generate's `stop` as a set of ids; InputError unless an iterable of integers."""
    if not isinstance(stop, Iterable) or isinstance(stop, (str, bytes)):
        raise InputError(f"stop must be a list of token ids, got {type(stop).__name__}")
    stops = list(stop)
    for token in stops:
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise InputError(f"stop must be a list of token ids, got an item {token!r}")
    return {int(token) for token in stops}


def _chunks(tokens: Tokens) -> Iterator[object]:
    """An array or a flat sequence of ids is one chunk; otherwise each item is a chunk."""
    if isinstance(tokens, np.ndarray):
        yield tokens
    elif isinstance(tokens, (list, tuple, range)) and all(
        isinstance(t, (int, np.integer)) for t in tokens
    ):
        yield tokens
    elif not isinstance(tokens, Iterable) or isinstance(tokens, (str, bytes)):
        raise InputError(f"expected a sequence of token ids, got {type(tokens).__name__}")
    else:
        for chunk in tokens:
            yield [chunk] if isinstance(chunk, (int, np.integer)) else chunk


def _segment_pieces(chunks: Iterable[np.ndarray], room: int, segment_len: int):
    """Regroup [B, t] chunks into the pieces of one call each: the rest of the current segment
    (`room` tokens), then whole segments, then the partial tail. Holds < one segment."""
    pending: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        while chunk.shape[1]:
            take = chunk[:, : room - held]
            chunk = chunk[:, take.shape[1] :]
            pending.append(take)
            held += take.shape[1]
            if held == room:
                yield np.ascontiguousarray(np.concatenate(pending, axis=1))
                pending, held, room = [], 0, segment_len
    if held:
        yield np.ascontiguousarray(np.concatenate(pending, axis=1))

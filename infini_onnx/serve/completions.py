"""OpenAI-compatible completions over the state store, apart from any server engine
(docs/serving.md, "OpenAI-compatible completions").

A request is stateless: its prompt is fed to a new stream through the replica's StateStore,
which resumes from the longest prefix stored (a client that resends a long document with each
question pays for the new tokens only), then tokens are generated with the request's sampling.
`stop` strings end the text where they first appear (they are not part of it); a streamed
answer holds back the last characters that could still begin one.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from infini_onnx.errors import InputError, StreamNotFoundError
from infini_onnx.runtime import textio
from infini_onnx.runtime.sampling import SamplingOptions
from infini_onnx.runtime.session import InfiniModel
from infini_onnx.runtime.store import StateStore
from infini_onnx.runtime.stream import Stream

DEFAULT_MAX_TOKENS = 16  # OpenAI's default
MAX_STOPS = 4  # OpenAI's limit
# OpenAI fields this server accepts only at their defaults (anything else is refused, not
# ignored): the value that is allowed.
ONLY_DEFAULT = {
    "n": 1,
    "best_of": 1,
    "echo": False,
    "logprobs": None,
    "suffix": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
}
FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream", "seed",
          "user", "stream_options", *ONLY_DEFAULT}  # fmt: skip


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str | list[int]
    max_tokens: int
    sampling: SamplingOptions
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


def completion_request(body: dict, model_name: str, max_tokens_limit: int) -> CompletionRequest:
    """The request checked against OpenAI's fields (docs/serving.md); InputError otherwise,
    StreamNotFoundError (404) for another model's name."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r}")
    if body.get("model", model_name) != model_name:
        raise StreamNotFoundError(f"no such model {body['model']!r} (this server: {model_name!r})")
    for name, allowed in ONLY_DEFAULT.items():
        value = body.get(name)
        if value is not None and value != allowed:
            raise InputError(f'"{name}" is not supported (only {allowed!r})')
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if not isinstance(prompt, str) and not (
        isinstance(prompt, list) and all(_is_int(t) for t in prompt)
    ):
        raise InputError('"prompt" must be a string or a list of token ids (one prompt)')
    n = body.get("max_tokens")
    n = DEFAULT_MAX_TOKENS if n is None else n
    if not _is_int(n) or not 0 <= n <= max_tokens_limit:
        raise InputError(f'"max_tokens" must be an integer in [0, {max_tokens_limit}], got {n!r}')
    stops = body.get("stop")
    stops = [] if stops is None else [stops] if isinstance(stops, str) else stops
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise InputError('"stop" must be a non-empty string or a list of them')
    if len(stops) > MAX_STOPS:
        raise InputError(f'"stop" takes at most {MAX_STOPS} strings')
    fields = {}
    for name in ("temperature", "top_p", "seed"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f'"{name}" must be finite')
            fields[name] = value
    if fields.get("top_p") == 1:
        del fields["top_p"]  # OpenAI's default: no nucleus cut
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InputError('"stream_options" takes only "include_usage"')
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise InputError('"stream" must be true or false')
    return CompletionRequest(
        prompt, n, SamplingOptions(**fields), tuple(stops), stream,
        bool(options.get("include_usage")),
    )  # fmt: skip


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (eos or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens read from the store, not fed

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def complete(
    model: InfiniModel,
    store: StateStore,
    request: CompletionRequest,
    on_text: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> Completion:
    """Feed the prompt through the store and generate; `on_text` gets the text as it becomes
    final; generation ends early (finish "length") when `stop` is set."""
    if model.tokenizer is None and (isinstance(request.prompt, str) or request.stops):
        raise InputError("this model has no tokenizer: give the prompt as token ids, no stop")
    if isinstance(request.prompt, str):
        ids = textio.encode(model.tokenizer, request.prompt)
    else:
        vocab = model.config.vocab_size
        if not all(0 <= t < vocab for t in request.prompt):
            raise InputError(f'"prompt" holds a token id outside the vocabulary [0, {vocab})')
        ids = np.array(request.prompt, np.int64)
    stream = Stream(model, store=store)
    stream.feed(ids if ids.size else [model.config.bos_token_id])
    decoder = textio.TextDecoder(model.tokenizer) if model.tokenizer is not None else None
    text, sent, generated, reason = "", 0, 0, "length"
    held = max((len(s) for s in request.stops), default=1) - 1  # chars that may begin a stop
    for token in stream.generate([], request.max_tokens, sampling=request.sampling):
        generated += 1
        if token == model.config.eos_token_id:
            reason = "stop"
            break
        text += decoder.push(token) if decoder is not None else ""
        if _cut_at_stop(text, request.stops) is not None:
            break
        if on_text is not None and len(text) - held > sent:
            on_text(text[sent : len(text) - held])
            sent = len(text) - held
        if stop is not None and stop.is_set():
            break
    if decoder is not None:
        text += decoder.flush()
    if (cut := _cut_at_stop(text, request.stops)) is not None:
        text, reason = text[:cut], "stop"
    if on_text is not None and len(text) > sent:
        on_text(text[sent:])
    prompt_tokens = max(int(ids.size), 1)
    return Completion(text, reason, prompt_tokens, generated, stream.cached_tokens)


def completion_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


def completion_object(cid: str, model_name: str, text: str, finish: str | None, usage=None):
    """The body of an answer, or of one streamed chunk (finish None until the last)."""
    body = {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def models_object(model_name: str) -> dict:
    return {
        "object": "list",
        "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "infini-onnx"}],
    }


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string begins in text, or None."""
    return min((i for s in stops if (i := text.find(s)) >= 0), default=None)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

"""The HTTP API's requests and errors, apart from any server engine (docs/serving.md).

Bodies are JSON objects; every field is checked here, and an unknown field is an error, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from infini_onnx.errors import InfiniError, InputError, NonFiniteError, StreamNotFoundError
from infini_onnx.runtime.sampling import SamplingOptions

DEFAULT_MAX_NEW_TOKENS = 64  # a generate request without "max_new_tokens"


class BodyTooLarge(InputError):
    """A request body over the server's limit."""


@dataclass(frozen=True)
class FeedRequest:
    text: str | None
    ids: list[int] | None
    logits: bool  # answer with the next-token logits too


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str | list[int] | None
    max_new_tokens: int
    stop: list[int] | None  # None: the model's eos
    sampling: SamplingOptions
    stream: bool  # answer as server-sent events, a token at a time


def parse_json(raw: bytes) -> dict:
    """A request body as a JSON object (an empty body is {})."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise InputError(f"the body is not JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(body, dict):
        raise InputError(f"the body must be a JSON object, got {type(body).__name__}")
    return body


def create_request(body: dict) -> str | None:
    """The id of the stream to fork ({"fork": ID}), or None for a new empty stream."""
    _only(body, ("fork",))
    fork = body.get("fork")
    if "fork" in body and not isinstance(fork, str):
        raise InputError('"fork" must be a stream id')
    return fork


def feed_request(body: dict) -> FeedRequest:
    _only(body, ("text", "ids", "logits"))
    if ("text" in body) == ("ids" in body):
        raise InputError('give exactly one of "text" and "ids"')
    text = body.get("text")
    if "text" in body and not isinstance(text, str):
        raise InputError('"text" must be a string')
    ids = _ids(body, "ids") if "ids" in body else None
    return FeedRequest(text, ids, _bool(body, "logits"))


def generate_request(body: dict, max_new_tokens: int) -> GenerateRequest:
    """The request, with "max_new_tokens" at most `max_new_tokens` (the server's limit)."""
    _only(body, ("prompt", "max_new_tokens", "stop", "temperature", "top_k", "top_p", "seed",
                 "stream"))  # fmt: skip
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        prompt = _ids(body, "prompt")
    n = body.get("max_new_tokens", min(DEFAULT_MAX_NEW_TOKENS, max_new_tokens))
    if not _is_int(n) or not 0 <= n <= max_new_tokens:
        raise InputError(
            f'"max_new_tokens" must be an integer in [0, {max_new_tokens}] (this server\'s '
            f"limit), got {n!r}"
        )
    stop = _ids(body, "stop") if body.get("stop") is not None else None
    fields = {k: body[k] for k in ("temperature", "top_k", "top_p", "seed") if k in body}
    for name, value in fields.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f'"{name}" must be finite')
    return GenerateRequest(prompt, n, stop, SamplingOptions(**fields), _bool(body, "stream"))


def status_of(error: InfiniError) -> int:
    """The HTTP status of an error: the caller's fault is 4xx, the server's 500."""
    if isinstance(getattr(error, "status", None), int):
        return error.status
    if isinstance(error, BodyTooLarge):
        return 413
    if isinstance(error, StreamNotFoundError):
        return 404
    if isinstance(error, NonFiniteError):
        return 422
    if isinstance(error, InputError):
        return 400
    return 500


def _only(body: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) or "no fields"
        raise InputError(f"unknown field {unknown[0]!r} (expected {expected})")


def _ids(body: dict, name: str) -> list[int]:
    value = body[name]
    if not isinstance(value, list) or not all(_is_int(t) for t in value):
        raise InputError(f'"{name}" must be a list of integer token ids')
    return value


def _bool(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InputError(f'"{name}" must be true or false')
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

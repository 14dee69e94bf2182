"""`infini serve`: the HTTP API on Ray Serve (docs/serving.md).

Two deployments:

- `Ingress` (one replica) answers HTTP: it checks bodies, picks stream ids, counts metrics and
  calls the worker that holds the stream;
- `StreamWorker` (N replicas) holds streams in a StreamTable. Ray's ConsistentHashRouter sends
  every call for a stream to one replica: the ingress keys it on the stream id (the call's
  session id), with no fallback to another replica. When the replicas change, a stream that
  lands elsewhere is restored from the shared state directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from infini_onnx.errors import InfiniError, StreamNotFoundError
from infini_onnx.serve import api, completions
from infini_onnx.serve.metrics import Metrics
from infini_onnx.serve.streams import StreamTable, check_stream_id, new_stream_id

STORE_DIR = "prefix-store"  # the state store's directory, inside the state directory
ROUTE_PREFIX_CHARS = 4096  # completions whose prompts begin alike go to one replica (its memory)
ROUTER = RequestRouterConfig(
    request_router_class="ray.serve.experimental.consistent_hash_router.ConsistentHashRouter",
    request_router_kwargs={"num_fallback_replicas": 0},
)
WORKER_MAX_ONGOING = 32  # concurrent calls a worker replica accepts (each on a thread)


@serve.deployment(request_router_config=ROUTER, max_ongoing_requests=WORKER_MAX_ONGOING)
class StreamWorker:
    """One replica's streams. Every method answers {"ok": ...} or {"error", "status"}, with
    the replica's figures under "stats".

    Calls for one stream run one at a time: the work of a call holds the stream's lock until it
    has ended. A call cancelled because its client went away stops its work (a generation stops
    after the token in hand, and the tokens generated stay in the stream) and still holds the
    lock until the work has stopped, so the next call finds the stream and its files current.
    Each call's work runs on a thread of its own (WORKER_MAX_ONGOING of them), so a long
    generation never queues another stream's call."""

    def __init__(self, model_path: str, state_dir: str, threads: int, budget_bytes: int,
                 idle_seconds: float, cache: dict):  # fmt: skip
        from infini_onnx.runtime import InfiniModel, StateStore

        self.table = StreamTable(
            InfiniModel(model_path, threads=threads), state_dir, budget_bytes, idle_seconds
        )
        self.store = StateStore(Path(state_dir) / STORE_DIR, **cache)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._locks = StreamLocks()
        self._threads = ThreadPoolExecutor(WORKER_MAX_ONGOING, thread_name_prefix="infini-stream")
        self._evictor: asyncio.Task | None = None  # started by the first call (needs the loop)

    async def create(self, stream_id: str) -> dict:
        return await self._run(stream_id, lambda stop: {"id": self.table.create(stream_id)})

    async def fork(self, source_id: str, stream_id: str) -> dict:
        """Called with the source's id (its replica, its lock) to make stream_id."""
        return await self._run(
            source_id, lambda stop: {"id": self.table.fork(source_id, stream_id)}
        )

    async def complete(self, request: completions.CompletionRequest) -> dict:
        """A whole completion: {"text", "finish_reason", "usage"}."""

        def work(stop: threading.Event) -> dict:
            done = completions.complete(self.table.model, self.store, request, stop=stop)
            return {"text": done.text, "finish_reason": done.finish_reason, "usage": done.usage()}

        return {**await self._in_thread(work), "stats": self._stats()}

    async def complete_events(self, request: completions.CompletionRequest):
        """Yield {"text"} per piece, then {"ok": {"finish_reason", "usage"}}; or one {"error"}
        (async generator). The client going away stops the generation."""

        def work(stop: threading.Event, emit: Callable[[str], None]) -> dict:
            done = completions.complete(self.table.model, self.store, request, emit, stop)
            return {"finish_reason": done.finish_reason, "usage": done.usage()}

        async with aclosing(self._relay(work, "text")) as events:
            async for event in events:
                if "answer" in event:
                    answer = event["answer"]
                else:
                    yield event
        yield {**answer, "stats": self._stats()}

    async def feed(self, stream_id: str, request: api.FeedRequest) -> dict:
        def feed(stop: threading.Event) -> dict:
            stream = self.table.feed(stream_id, request.text, request.ids)
            answer = {"tokens_seen": stream.tokens_seen}
            if request.logits:
                answer["logits"] = stream.logits.tolist()
            return answer

        return await self._run(stream_id, feed)

    async def info(self, stream_id: str) -> dict:
        return await self._run(stream_id, lambda stop: self.table.info(stream_id))

    async def delete(self, stream_id: str) -> dict:
        def delete(stop: threading.Event) -> dict:
            self.table.delete(stream_id)
            return {}

        return await self._run(stream_id, delete)

    async def generate(self, stream_id: str, request: api.GenerateRequest) -> dict:
        """The whole generation in one answer: {"ids", "tokens_seen"}."""
        return await self._run(stream_id, lambda stop: self._generate(stream_id, request, stop))

    async def generate_events(self, stream_id: str, request: api.GenerateRequest):
        """Yield {"token"} per token, then {"ok": {...}}; or one {"error"} (async generator)."""

        def generate(stop: threading.Event, emit: Callable[[int], None]) -> dict:
            return self._generate(stream_id, request, stop, on_token=emit)

        async with self._locks.hold(stream_id), aclosing(self._relay(generate, "token")) as events:
            async for event in events:
                if "answer" in event:
                    answer = event["answer"]
                else:
                    yield event
        yield {**answer, "stats": self._stats()}

    async def _relay(self, work: Callable[[threading.Event, Callable], dict], name: str):
        """Run work(stop, emit) on a worker thread (_in_thread); yield {name: item} for each
        item it emits, as it comes, then {"answer": its answer}. Closed early (the client went
        away), it stops the work and waits for it to end."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        done = object()  # the end of the items

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        def run(stop: threading.Event) -> dict:
            try:
                return work(stop, emit)
            finally:
                emit(done)

        task = asyncio.ensure_future(self._in_thread(run))
        try:
            while (item := await items.get()) is not done:
                yield {name: item}
            yield {"answer": await task}
        finally:
            if not task.done():  # the client went away: stop the work, wait for it
                task.cancel()
                await _outlast(task)

    def _generate(
        self,
        stream_id: str,
        request: api.GenerateRequest,
        stop: threading.Event,
        on_token: Callable[[int], None] | None = None,
    ) -> dict:
        """Generate until done or `stop` is set (on a worker thread), passing each token to
        `on_token`. The table records every token generated."""
        ids: list[int] = []
        tokens = self.table.generate(
            stream_id, request.prompt, request.max_new_tokens, request.stop, request.sampling
        )
        try:
            for token in tokens:
                ids.append(token)
                if on_token is not None:
                    on_token(token)
                if stop.is_set():
                    break
        finally:
            tokens.close()  # records the tokens generated, also when stopped
        return {"ids": ids, "tokens_seen": self.table.info(stream_id)["tokens_seen"]}

    async def _run(self, stream_id: str, work: Callable[[threading.Event], dict]) -> dict:
        async with self._locks.hold(stream_id):
            answer = await self._in_thread(work)
        return {**answer, "stats": self._stats()}

    async def _in_thread(self, work: Callable[[threading.Event], dict]) -> dict:
        """{"ok": work(stop)} or {"error", "status"}, run on a worker thread. Cancelled (the
        client went away), it sets `stop` and waits for the work to end before it re-raises."""
        if self._evictor is None:
            self._evictor = asyncio.get_running_loop().create_task(self._evict_idle())
        stop = threading.Event()
        done = asyncio.get_running_loop().run_in_executor(self._threads, self._answer, work, stop)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            stop.set()
            await _outlast(done)
            raise

    def _answer(self, work: Callable[[threading.Event], dict], stop: threading.Event) -> dict:
        try:
            return {"ok": work(stop)}
        except InfiniError as e:  # the state directory is the server's business, not the client's
            message = str(e).replace(str(self.table.state_dir), "<state-dir>")
            return {"error": message, "status": api.status_of(e)}

    def _stats(self) -> dict:
        cache = self.store.stats()
        return {
            "replica": self.replica,
            **asdict(self.table.stats()),
            "cache_hits": cache.hits,
            "cache_tokens_saved": cache.tokens_saved,
            "cache_bytes": cache.disk_bytes,
        }

    async def _evict_idle(self) -> None:
        period = min(30.0, max(0.5, self.table.idle_seconds / 4))
        while True:
            await asyncio.sleep(period)
            self.table.evict_idle()


class StreamLocks:
    """One asyncio lock per stream id, kept only while calls hold or await it (a deleted or
    idle stream leaves no lock behind, and a waiter never holds a lock that was dropped)."""

    def __init__(self):
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # id -> (lock, holders + waiters)

    @asynccontextmanager
    async def hold(self, stream_id: str):
        lock, users = self._locks.get(stream_id, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[stream_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            users = self._locks[stream_id][1] - 1
            if users:
                self._locks[stream_id] = (lock, users)
            else:
                del self._locks[stream_id]

    def __len__(self) -> int:
        return len(self._locks)


async def _outlast(future: asyncio.Future) -> None:
    """Wait until `future` is done, whatever cancellations arrive meanwhile."""
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            continue


@serve.deployment(max_ongoing_requests=1024)
class Ingress:
    """The HTTP API: routes, body checks and limits, metrics."""

    def __init__(self, worker: DeploymentHandle, max_body_bytes: int, max_new_tokens: int,
                 tokenizer_json: str | None, model_name: str):  # fmt: skip
        from tokenizers import Tokenizer

        self.worker = worker
        self.model_name = model_name
        self.max_body_bytes = max_body_bytes
        self.max_new_tokens = max_new_tokens
        self.tokenizer = Tokenizer.from_str(tokenizer_json) if tokenizer_json else None
        self.metrics = Metrics()

    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        route, response = "other", None
        try:
            route, handler, stream_id = self._route(request)
            response = await handler(request, stream_id)
        except InfiniError as e:
            response = _error(str(e), api.status_of(e))
        except RayTaskError as e:  # a bug: the replica's log has the traceback
            response = _error(f"internal error in a replica ({type(e.cause).__name__})", 500)
        except RayError as e:  # a replica died: the stream's files are current, retry
            response = _error(f"replica unavailable ({type(e).__name__}): retry", 503)
        if isinstance(response, StreamingResponse):  # counted when its last event is sent
            return response
        self.metrics.observe(route, response.status_code, time.perf_counter() - started)
        return response

    def _route(self, request: Request):
        parts = request.url.path.strip("/").split("/")
        method = request.method
        table = {
            ("GET", ("healthz",)): ("healthz", self._healthz),
            ("GET", ("metrics",)): ("metrics", self._metrics),
            ("POST", ("v1", "streams")): ("create", self._create),
            ("POST", ("v1", "completions")): ("completions", self._completions),
            ("GET", ("v1", "models")): ("models", self._models),
        }
        if (method, tuple(parts)) in table:
            return (*table[method, tuple(parts)], None)
        if len(parts) in (3, 4) and parts[:2] == ["v1", "streams"]:
            action = parts[3] if len(parts) == 4 else ""
            handlers = {
                ("GET", ""): ("info", self._info),
                ("DELETE", ""): ("delete", self._delete),
                ("POST", "feed"): ("feed", self._feed),
                ("POST", "generate"): ("generate", self._generate),
            }
            if (method, action) in handlers:
                return (*handlers[method, action], check_stream_id(parts[2]))
            if any(a == action for _, a in handlers):
                raise _MethodNotAllowed(f"{method} is not allowed here")
        raise StreamNotFoundError(f"no such endpoint: {method} {request.url.path}")

    async def _body(self, request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise api.BodyTooLarge(f"request body over {self.max_body_bytes:,} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise api.BodyTooLarge(f"request body over {self.max_body_bytes:,} bytes")
            chunks.append(chunk)
        return api.parse_json(b"".join(chunks))

    async def _call(self, method: str, stream_id: str, *args) -> dict:
        handle = getattr(self.worker.options(session_id=stream_id), method)
        answer = await handle.remote(stream_id, *args)
        self.metrics.replica_report(answer["stats"])
        if "error" in answer:
            raise _Answered(answer["error"], answer["status"])
        return answer["ok"]

    async def _healthz(self, request: Request, _) -> Response:
        return JSONResponse({"status": "ok"})

    async def _metrics(self, request: Request, _) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def _create(self, request: Request, _) -> Response:
        source = api.create_request(await self._body(request))
        stream_id = new_stream_id()
        if source is None:
            return JSONResponse(await self._call("create", stream_id), status_code=201)
        answer = await self._call("fork", check_stream_id(source), stream_id)
        return JSONResponse(answer, status_code=201)

    async def _models(self, request: Request, _) -> Response:
        return JSONResponse(completions.models_object(self.model_name))

    async def _completions(self, request: Request, _) -> Response:
        body = await self._body(request)
        req = completions.completion_request(body, self.model_name, self.max_new_tokens)
        prompt = req.prompt[:ROUTE_PREFIX_CHARS]
        key = hashlib.sha256(json.dumps(prompt).encode()).hexdigest()
        cid = completions.completion_id()
        if not req.stream:
            handle = self.worker.options(session_id=key).complete
            answer = await handle.remote(req)
            self.metrics.replica_report(answer["stats"])
            if "error" in answer:
                raise _Answered(answer["error"], answer["status"])
            done = answer["ok"]
            return JSONResponse(completions.completion_object(
                cid, self.model_name, done["text"], done["finish_reason"], done["usage"]
            ))  # fmt: skip
        started = time.perf_counter()
        handle = self.worker.options(session_id=key, stream=True).complete_events
        events = handle.remote(req).__aiter__()
        first = await events.__anext__()
        if "error" in first:
            self.metrics.replica_report(first["stats"])
            raise _Answered(first["error"], first["status"])
        return StreamingResponse(
            self._completion_events(first, events, req, cid, started),
            media_type="text/event-stream",
        )

    async def _completion_events(self, item: dict, events, req, cid: str, started: float):
        """OpenAI's server-sent events: `data: {chunk}` per piece of text, the last with its
        finish_reason (and a usage chunk if asked), then `data: [DONE]`; an error is one
        `data: {"error": {"message", "code"}}`."""
        status, finished, name = 200, False, self.model_name
        try:
            while "text" in item:
                chunk = completions.completion_object(cid, name, item["text"], None)
                yield f"data: {json.dumps(chunk)}\n\n"
                item = await events.__anext__()
            self.metrics.replica_report(item["stats"])
            if "error" in item:
                status = item["status"]
                error = {"error": {"message": item["error"], "code": status}}
                yield f"data: {json.dumps(error)}\n\n"
            else:
                done = item["ok"]
                last = completions.completion_object(cid, name, "", done["finish_reason"])
                yield f"data: {json.dumps(last)}\n\n"
                if req.include_usage:
                    usage = {**completions.completion_object(cid, name, "", None),
                             "choices": [], "usage": done["usage"]}  # fmt: skip
                    yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:  # the client went away: stop the generation now
                events.cancel()
            self.metrics.observe("completions", status, time.perf_counter() - started)

    async def _info(self, request: Request, stream_id: str) -> Response:
        return JSONResponse(await self._call("info", stream_id))

    async def _delete(self, request: Request, stream_id: str) -> Response:
        return JSONResponse(await self._call("delete", stream_id))

    async def _feed(self, request: Request, stream_id: str) -> Response:
        feed = api.feed_request(await self._body(request))
        return JSONResponse(await self._call("feed", stream_id, feed))

    async def _generate(self, request: Request, stream_id: str) -> Response:
        gen = api.generate_request(await self._body(request), self.max_new_tokens)
        text = _Text(self.tokenizer)
        if not gen.stream:
            answer = await self._call("generate", stream_id, gen)
            for token in answer["ids"]:
                text.push(token)
            return JSONResponse(_finished(answer["ids"], text, answer["tokens_seen"]))
        started = time.perf_counter()
        handle = self.worker.options(session_id=stream_id, stream=True).generate_events
        events = handle.remote(stream_id, gen).__aiter__()
        first = await events.__anext__()
        if "error" in first:
            self.metrics.replica_report(first["stats"])
            raise _Answered(first["error"], first["status"])
        return StreamingResponse(
            self._events(first, events, text, started), media_type="text/event-stream"
        )

    async def _events(self, item: dict, events, text: _Text, started: float):
        """Server-sent events: `token` {"id", "text"} per token, then `done` {"text", "ids",
        "tokens_seen"}, or `error` {"error", "status"}."""
        ids, status, finished = [], 200, False
        try:
            while "token" in item:
                ids.append(item["token"])
                yield _event("token", {"id": item["token"], "text": text.push(item["token"])})
                item = await events.__anext__()
            self.metrics.replica_report(item["stats"])
            if "error" in item:
                status = item["status"]
                yield _event("error", {"error": item["error"], "status": status})
            else:
                yield _event("done", _finished(ids, text, item["ok"]["tokens_seen"]))
            finished = True
        finally:
            if not finished:  # the client went away: stop the generation now
                events.cancel()
            self.metrics.observe("generate", status, time.perf_counter() - started)


class _Text:
    """Generated tokens decoded incrementally (None throughout for a model without tokenizer)."""

    def __init__(self, tokenizer):
        from infini_onnx.runtime.textio import TextDecoder

        self.decoder = TextDecoder(tokenizer) if tokenizer is not None else None
        self.pieces: list[str] = []

    def push(self, token: int) -> str | None:
        if self.decoder is None:
            return None
        self.pieces.append(self.decoder.push(token))
        return self.pieces[-1]

    def whole(self) -> str | None:
        return None if self.decoder is None else "".join(self.pieces) + self.decoder.flush()


def _finished(ids: list[int], text: _Text, tokens_seen: int) -> dict:
    return {"text": text.whole(), "ids": ids, "tokens_seen": tokens_seen}


class _Answered(InfiniError):
    """An error a worker answered with, and its status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _MethodNotAllowed(InfiniError):
    status = 405


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def build_app(
    model_path: str | Path,
    state_dir: str | Path,
    replicas: int,
    *,
    max_new_tokens: int,
    threads: int = 1,
    replica_cpus: float = 1.0,
    budget_bytes: int = 2 << 30,
    idle_seconds: float = 600.0,
    max_body_bytes: int = 8 << 20,
    tokenizer_json: str | None = None,
    model_name: str = "infini",
    cache: dict | None = None,
):
    """The Ray Serve application: Ingress over `replicas` StreamWorkers. `cache`: the
    StateStore's keywords (ram_bytes, disk_bytes, every)."""
    worker = StreamWorker.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus}
    ).bind(str(Path(model_path).resolve()), str(Path(state_dir).resolve()), threads,
           budget_bytes, idle_seconds, cache or {})  # fmt: skip
    return Ingress.options(ray_actor_options={"num_cpus": 0}).bind(
        worker, max_body_bytes, max_new_tokens, tokenizer_json, model_name
    )

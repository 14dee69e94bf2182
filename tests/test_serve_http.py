"""`infini serve` for real: a local Ray with 2 replicas, 24 interleaved streams over HTTP, every
result equal to the runtime's for the same stream alone; then 3 replicas, mid-stream. Clients
that abandon their generations lose nobody any data.

Loopback only; the server is stopped at the end whatever happens."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="needs the [serve] extra")

from infini_onnx.runtime import InfiniModel, SamplingOptions, Stream  # noqa: E402
from infini_onnx.serve.streams import StreamTable  # noqa: E402

pytestmark = pytest.mark.slow
INFINI = [sys.executable, "-c", "from infini_onnx.cli import main; main()"]
# Stream ids are random and the router hashes them: with 24 streams the chance that none moves
# to the replica added mid-test is (2/3)^24 < 1e-4 (with 8 it was 4%, and a CI run met it).
STREAMS = 24
LONG = 10_000  # max_new_tokens of the generations that clients abandon (the server's limit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, body: dict | bytes | None = None):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        if data is not None and len(data) > 1 << 20:
            return self.large_request(method, path, data)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def large_request(self, method: str, path: str, data: bytes):
        """Send a large body as far as the server reads it (it may answer and close early)."""
        conn = http.client.HTTPConnection(self.base.removeprefix("http://"), timeout=60)
        conn.putrequest(method, path)
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()
        try:
            conn.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = conn.getresponse()
        return response.status, response.read().decode()

    def json(self, method: str, path: str, body=None, status: int = 200) -> dict:
        code, text = self.request(method, path, body)
        assert code == status, text
        return json.loads(text)


@pytest.fixture(scope="module")
def server(tiny_onnx, tmp_path_factory):
    """A running `infini serve` (2 replicas): (client, model path, port, state dir)."""
    model_path = tiny_onnx[1]
    state_dir = tmp_path_factory.mktemp("serve-state")
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve-log") / "serve.log", "w+")  # noqa: SIM115
    cmd = [*INFINI, "serve", str(model_path), "--replicas", "2", "--port", str(port),
           "--replica-cpus", "0.5", "--state-dir", str(state_dir),
           "--max-new-tokens-limit", str(LONG)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = Client(port)
    try:
        deadline = time.monotonic() + 240
        while client.request("GET", "/healthz")[0] != 200 if _up(port) else True:
            assert proc.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(1)
        while "Ray at" not in Path(log.name).read_text():  # follows readiness by a moment
            time.sleep(0.5)
        yield client, model_path, port, state_dir
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _up(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def metric_sum(client: Client, name: str) -> float:
    text = client.request("GET", "/metrics")[1]
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def run_rounds(client, streams, alone, rounds: range) -> None:
    """Each round: every stream feeds, then generates (greedy, then sampled); every logits
    vector and token equals the lone Stream's."""
    for r in rounds:
        for i, sid in enumerate(streams):
            chunk = np.random.default_rng(100 * r + i).integers(0, 256, 5 + 11 * i % 37).tolist()
            got = client.json("POST", f"/v1/streams/{sid}/feed", {"ids": chunk, "logits": True})
            want = alone[i].feed(chunk)
            np.testing.assert_array_equal(np.array(got["logits"], np.float32), want)
            assert got["tokens_seen"] == alone[i].tokens_seen
        for i, sid in enumerate(streams):
            body = {"max_new_tokens": 6, "temperature": 0.9, "seed": r * 10 + i, "stop": []}
            got = client.json("POST", f"/v1/streams/{sid}/generate", body)
            sampling = SamplingOptions(temperature=0.9, seed=r * 10 + i)
            assert got["ids"] == list(alone[i].generate([], 6, stop=[], sampling=sampling))
            assert got["tokens_seen"] == alone[i].tokens_seen


def test_streams_through_http_equal_the_runtime_and_survive_a_replica_change(server):
    client, model_path, port, state_dir = server
    model = InfiniModel(model_path, threads=1)
    streams = [client.json("POST", "/v1/streams", {}, status=201)["id"] for _ in range(STREAMS)]
    assert len(set(streams)) == STREAMS and all(re.fullmatch("[0-9a-f]{32}", s) for s in streams)
    alone = [Stream(model) for _ in streams]
    run_rounds(client, streams, alone, range(3))
    # the consistent-hash router kept every stream on one replica: nothing was restored
    assert metric_sum(client, "infini_streams_restores_total") == 0

    cmd = [*INFINI, "serve", str(model_path), "--replicas", "3", "--address", "auto",
           "--port", str(port), "--replica-cpus", "0.5", "--state-dir", str(state_dir),
           "--max-new-tokens-limit", str(LONG)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_rounds(client, streams, alone, range(3, 6))
    replicas = {m[1] for m in re.finditer(r'replica="(\w+)"', client.request("GET", "/metrics")[1])}
    assert len(replicas) == 3  # the new replica took streams
    restored = metric_sum(client, "infini_streams_restores_total")
    assert 1 <= restored <= STREAMS, restored

    # streaming generation: server-sent events, one per token, then done
    code, text = client.request(
        "POST", f"/v1/streams/{streams[0]}/generate",
        {"max_new_tokens": 4, "temperature": 0, "stop": [], "stream": True},
    )  # fmt: skip
    events = [e for e in text.split("\n\n") if e]
    assert code == 200 and [e.split("\n")[0] for e in events] == ["event: token"] * 4 + [
        "event: done"
    ]
    done_event = json.loads(events[-1].split("data: ", 1)[1])
    assert done_event["ids"] == list(alone[0].generate([], 4, stop=[], temperature=0))

    info = client.json("GET", f"/v1/streams/{streams[1]}")
    assert info["tokens_seen"] == alone[1].tokens_seen
    assert client.json("DELETE", f"/v1/streams/{streams[1]}") == {}
    assert client.request("GET", f"/v1/streams/{streams[1]}")[0] == 404


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [
        ("POST", "/v1/streams/{id}/feed", b"{not json", 400, "not JSON"),
        ("POST", "/v1/streams/{id}/feed", {"ids": [1, 999]}, 400, "outside the vocabulary"),
        ("POST", "/v1/streams/{id}/feed", {"text": "a", "ids": [1]}, 400, "exactly one"),
        ("POST", "/v1/streams/{id}/feed", {"txt": "a"}, 400, "unknown field 'txt'"),
        ("POST", "/v1/streams/{id}/generate", {"max_new_tokens": -1}, 400, "max_new_tokens"),
        ("POST", "/v1/streams/{id}/generate", {"temperature": "hot"}, 400, "temperature"),
        ("POST", "/v1/streams/{id}/generate", {"top_p": 2}, 400, "top_p"),
        ("POST", "/v1/streams/" + "0" * 32 + "/feed", {"ids": [1]}, 404, "no such stream"),
        ("GET", "/v1/streams/../../etc/passwd", None, 404, "no such"),
        ("GET", "/v1/streams", None, 404, "no such endpoint"),
        ("PUT", "/v1/streams/{id}/feed", {}, 405, "not allowed"),
        ("POST", "/v1/streams/{id}/feed", {"text": "x" * (9 << 20)}, 413, "over"),
    ],
)
def test_bad_requests_get_a_4xx_and_change_nothing(server, method, path, body, status, message):
    client = server[0]
    sid = client.json("POST", "/v1/streams", {}, status=201)["id"]
    client.json("POST", f"/v1/streams/{sid}/feed", {"ids": [1, 2, 3]})
    code, text = client.request(method, path.format(id=sid), body)
    assert code == status and message in json.loads(text)["error"], text
    assert client.json("GET", f"/v1/streams/{sid}")["tokens_seen"] == 3


def test_serve_refuses_a_bad_model_or_port_before_starting_ray(tiny_onnx, tmp_path):
    missing = subprocess.run([*INFINI, "serve", str(tmp_path / "none.onnx")], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 1 and "no such model file" in missing.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run(
            [*INFINI, "serve", str(tiny_onnx[1]), "--port", str(port), "--state-dir",
             str(tmp_path / "s")], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert taken.returncode == 1 and f"cannot serve on 127.0.0.1:{port}" in taken.stderr
    assert "Traceback" not in missing.stderr + taken.stderr


def abandon_generate(port: int, sid: str, seconds: float, stream: bool = False) -> None:
    """Start a long greedy generation, then close the socket `seconds` later, unanswered."""
    body = json.dumps({"max_new_tokens": LONG, "temperature": 0, "stop": [], "stream": stream})
    head = (f"POST /v1/streams/{sid}/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head.encode() + body.encode())
        time.sleep(seconds)


def check_answers(answers: list[tuple[int, str]], state_dir: Path) -> None:
    """No answer is a 500 or names a server path."""
    for code, text in answers:
        assert code != 500 and str(state_dir) not in text and ".state" not in text, text


def test_abandoned_generations_lose_no_confirmed_feed(server):
    """50 trials: a generation abandoned by its client, then 12 concurrent 40-token feeds. The
    feeds ran one at a time after the generation stopped (their answers are 40 apart, ending at
    the stream's count), and a replay from the state directory gives the served stream."""
    client, model_path, port, state_dir = server
    model = InfiniModel(model_path, threads=1)
    rng = np.random.default_rng(0)
    for trial in range(50):
        sid = client.json("POST", "/v1/streams", {}, status=201)["id"]
        abandon_generate(port, sid, 0.05 + 0.01 * (trial % 20), stream=trial % 2 == 1)
        chunks = [rng.integers(0, 256, 40).tolist() for _ in range(12)]
        with ThreadPoolExecutor(4) as pool:
            path = f"/v1/streams/{sid}/feed"
            answers = list(pool.map(
                lambda c, p=path: client.request("POST", p, {"ids": c}), chunks
            ))  # fmt: skip
        check_answers(answers, state_dir)
        assert all(code == 200 for code, _ in answers), answers
        last = client.json("POST", f"/v1/streams/{sid}/feed", {"ids": [7], "logits": True})
        seen = sorted(json.loads(text)["tokens_seen"] for _, text in answers)
        total = last["tokens_seen"] - 1
        assert seen == list(range(total - 40 * 11, total + 1, 40)), (trial, seen, total)
        assert total - 40 * 12 < LONG  # the generation stopped when its client went away
        replayed, _ = StreamTable(model, state_dir)._get(sid)
        assert replayed.stream.tokens_seen == total + 1
        np.testing.assert_array_equal(replayed.stream.logits, np.float32(last["logits"]))


def test_a_delete_after_an_abandoned_generation_stays_deleted(server):
    client, _, port, state_dir = server
    for trial in range(6):
        sid = client.json("POST", "/v1/streams", {}, status=201)["id"]
        abandon_generate(port, sid, 0.1, stream=trial % 2 == 1)
        answers = [client.request("DELETE", f"/v1/streams/{sid}")]
        answers.append(client.request("GET", f"/v1/streams/{sid}"))
        time.sleep(0.5)
        answers.append(client.request("GET", f"/v1/streams/{sid}"))
        check_answers(answers, state_dir)
        assert [code for code, _ in answers] == [200, 404, 404], answers
        assert not list(state_dir.glob(f"{sid}*"))


def test_abandoned_long_generations_stop_and_leave_others_served(server):
    """14 generations of 10,000 tokens abandoned after 2 s: each stops (its count stays put,
    far short of 10,000) and another stream is served (the latency is measured by
    benchmarks/serve_load.py --abandon 14)."""
    client, _, port, state_dir = server
    other = client.json("POST", "/v1/streams", {}, status=201)["id"]
    sids = [client.json("POST", "/v1/streams", {}, status=201)["id"] for _ in range(14)]
    with ThreadPoolExecutor(14) as pool:
        list(pool.map(lambda sid: abandon_generate(port, sid, 2.0), sids))
    assert client.json("POST", f"/v1/streams/{other}/feed", {"ids": [1]})["tokens_seen"] == 1
    counts = [client.json("GET", f"/v1/streams/{sid}")["tokens_seen"] for sid in sids]
    time.sleep(1.0)
    assert [client.json("GET", f"/v1/streams/{sid}")["tokens_seen"] for sid in sids] == counts
    assert 0 < min(counts) and max(counts) < LONG // 2, counts  # they ran, then stopped


def test_generate_over_the_servers_limit_is_refused(server):
    client = server[0]
    sid = client.json("POST", "/v1/streams", {}, status=201)["id"]
    code, text = client.request("POST", f"/v1/streams/{sid}/generate", {"max_new_tokens": LONG + 1})
    assert code == 400 and f"[0, {LONG}] (this server's limit)" in json.loads(text)["error"]
    assert client.json("GET", f"/v1/streams/{sid}")["tokens_seen"] == 0


# --- fork, OpenAI-compatible completions (issue: read once, ask many) -------------------------


def test_32_concurrent_forks_of_one_stream_never_see_each_others_tokens(server):
    client, model_path, _, _ = server
    model = InfiniModel(model_path, threads=1)
    N = model.config.segment_len
    source = client.json("POST", "/v1/streams", {}, status=201)["id"]
    prefix = np.random.default_rng(5).integers(0, 256, 2 * N + 7).tolist()
    client.json("POST", f"/v1/streams/{source}/feed", {"ids": prefix})
    own = [np.random.default_rng(600 + i).integers(0, 256, 3 + i).tolist() for i in range(32)]

    def fork_and_feed(i: int) -> tuple[list[float], list[int]]:
        fork = client.json("POST", "/v1/streams", {"fork": source}, status=201)["id"]
        got = client.json("POST", f"/v1/streams/{fork}/feed", {"ids": own[i], "logits": True})
        body = {"max_new_tokens": 4, "temperature": 0, "stop": []}
        return got["logits"], client.json("POST", f"/v1/streams/{fork}/generate", body)["ids"]

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(fork_and_feed, range(32)))
    for i, (logits, ids) in enumerate(answers):
        alone = Stream(model)
        alone.feed(prefix)
        np.testing.assert_array_equal(np.array(logits, np.float32), alone.feed(own[i]))
        assert ids == list(alone.generate([], 4, stop=[], temperature=0))
    assert client.json("GET", f"/v1/streams/{source}")["tokens_seen"] == len(prefix)
    assert client.request("POST", "/v1/streams", {"fork": "0" * 32})[0] == 404


def test_the_openai_client_runs_completions_and_prefixes_come_from_the_store(server):
    openai = pytest.importorskip("openai")
    client, model_path, port, _ = server
    model = InfiniModel(model_path, threads=1)
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in api.models.list().data] == ["infini"]
    document = "".join(chr(32 + i % 90) for i in range(20 * model.config.segment_len + 13))
    saved_before = metric_sum(client, "infini_cache_tokens_saved_total")
    for i, question in enumerate(["Q: who? A:", "Q: where is it? A:", "Q: when? A:"]):
        prompt = document + question
        want = "".join(Stream(model).generate_text(prompt, max_new_tokens=12, temperature=0))
        got = api.completions.create(model="infini", prompt=prompt, max_tokens=12, temperature=0)
        assert got.choices[0].text == want
        assert got.usage.prompt_tokens == len(prompt.encode())
        assert got.choices[0].finish_reason in ("length", "stop")
        if i:  # the document came from the store
            assert got.usage.prompt_tokens_details.cached_tokens >= 20 * 32 - 32
        chunks = api.completions.create(
            model="infini", prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert metric_sum(client, "infini_cache_tokens_saved_total") > saved_before
    assert metric_sum(client, "infini_cache_hits_total") > 0
    assert metric_sum(client, "infini_cache_bytes") > 0


def test_completion_stop_strings_and_refusals(server):
    client, model_path, _, _ = server
    model = InfiniModel(model_path, threads=1)
    prompt = "abc " * 20
    full = "".join(Stream(model).generate_text(prompt, max_new_tokens=30, temperature=0))
    stop = full[5:7] if len(full) > 8 else None
    body = {"prompt": prompt, "max_tokens": 30, "temperature": 0}
    if stop:
        got = client.json("POST", "/v1/completions", {**body, "stop": [stop]})
        assert got["choices"][0]["text"] == full[: full.find(stop)]
        assert got["choices"][0]["finish_reason"] == "stop"
    for bad, status, message in [
        ({**body, "n": 2}, 400, '"n" is not supported'),
        ({**body, "model": "gpt-4"}, 404, "no such model 'gpt-4'"),
        ({**body, "max_tokens": LONG + 1}, 400, "max_tokens"),
        ({**body, "best_of": 3}, 400, "best_of"),
        ({**body, "frobnicate": 1}, 400, "unknown field 'frobnicate'"),
        ({**body, "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
        ({"prompt": [1, "x"]}, 400, "prompt"),
    ]:
        code, text = client.request("POST", "/v1/completions", bad)
        assert code == status and message in json.loads(text)["error"], (bad, text)

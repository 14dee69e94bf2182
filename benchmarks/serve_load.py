"""Load test of `infini serve`, loopback only and bounded in time (docs/serving.md).

Starts `infini serve MODEL` (local Ray), then STREAMS client threads each create a stream and,
until the time is up, feed 16..96 random token ids and generate 8 tokens greedily. Prints
tokens/s, p50/p99 request latency, the server's peak RSS (its whole process tree: Ray's
processes included), and checks that no stream was lost or wrong: every answer's tokens_seen
is what the client expects, and afterwards each stream's history replayed in the runtime here
(in the same calls) gives the same generated tokens and the same final logits.

With --abandon N, first N clients each start a 10,000-token generation and close their socket
2 s later, unanswered; the latency of another stream's one-token feeds is printed while those
generations run and right after their clients left (issue: one client must not stall others).

    python benchmarks/serve_load.py MODEL.onnx [--streams 64] [--seconds 60] [--replicas 2]
        [--abandon 14]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from infini_onnx.runtime import InfiniModel, Stream

ABANDONED_TOKENS = 10_000


class Connection:
    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, float]:
        started = time.perf_counter()
        self.conn.request(method, path, json.dumps(body or {}).encode(),
                          {"Content-Type": "application/json"})  # fmt: skip
        response = self.conn.getresponse()
        answer = json.loads(response.read())
        return response.status, answer, time.perf_counter() - started


def client(port: int, seed: int, deadline: float, results: list, history: dict) -> None:
    """One stream: feed and generate until the deadline; record every call."""
    rng, conn = np.random.default_rng(seed), Connection(port)
    status, answer, _ = conn.call("POST", "/v1/streams")
    if status != 201:
        results.append(("create", status, 0.0, 0, "create failed"))
        return
    sid, calls, expected = answer["id"], [], 0
    while time.monotonic() < deadline:
        ids = rng.integers(0, 256, int(rng.integers(16, 97))).tolist()
        status, answer, seconds = conn.call("POST", f"/v1/streams/{sid}/feed", {"ids": ids})
        expected += len(ids)
        wrong = status != 200 or answer.get("tokens_seen") != expected
        results.append(("feed", status, seconds, len(ids), "wrong" if wrong else ""))
        calls.append(("feed", ids))
        body = {"max_new_tokens": 8, "temperature": 0, "stop": []}
        status, answer, seconds = conn.call("POST", f"/v1/streams/{sid}/generate", body)
        expected += 8
        wrong = status != 200 or answer.get("tokens_seen") != expected
        results.append(("generate", status, seconds, 8, "wrong" if wrong else ""))
        calls.append(("generate", answer.get("ids")))
    history[sid] = (calls, expected, conn)


def abandoned_generations(port: int, n: int) -> bool:
    """Print another stream's one-token feed latency while n long generations run and after
    their clients abandon them; True if every feed was answered 200."""
    conn = Connection(port)

    def create() -> str:
        return conn.call("POST", "/v1/streams")[1]["id"]

    other, sids = create(), [create() for _ in range(n)]

    def abandon(sid: str) -> None:
        body = json.dumps({"max_new_tokens": ABANDONED_TOKENS, "temperature": 0, "stop": []})
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"POST /v1/streams/{sid}/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}".encode())  # fmt: skip
            time.sleep(2.0)

    def feeds(label: str, count: int) -> bool:
        times = [conn.call("POST", f"/v1/streams/{other}/feed", {"ids": [1]}) for _ in range(count)]
        ms = np.array([t[2] for t in times]) * 1e3
        print(f"one-token feed, {label}: max {ms.max():.0f} ms, median {np.median(ms):.0f} ms "
              f"({count} feeds)", flush=True)  # fmt: skip
        return all(t[0] == 200 for t in times)

    clients = [threading.Thread(target=abandon, args=(sid,)) for sid in sids]
    for t in clients:
        t.start()
    time.sleep(0.5)
    ok = feeds(f"{n} long generations running", 5)
    for t in clients:
        t.join()
    ok &= feeds(f"right after their {n} clients left", 10)
    counts = [conn.call("GET", f"/v1/streams/{sid}")[1]["tokens_seen"] for sid in sids]
    print(f"abandoned generations stopped at {min(counts)}..{max(counts)} tokens "
          f"(of {ABANDONED_TOKENS:,} asked)", flush=True)  # fmt: skip
    return ok


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def verify(model: InfiniModel, history: dict) -> tuple[int, int]:
    """(lost, wrong) streams: tokens_seen differs on the server, or the replay differs."""
    lost = wrong = 0
    for sid, (calls, expected, conn) in history.items():
        status, info, _ = conn.call("GET", f"/v1/streams/{sid}")
        if status != 200 or info["tokens_seen"] != expected:
            lost += 1
            continue
        stream, ok = Stream(model), True
        for kind, ids in calls:
            if kind == "feed":
                stream.feed(ids)
            else:
                ok &= list(stream.generate([], 8, stop=[], temperature=0)) == ids
        probe = [1, 2, 3]
        _, answer, _ = conn.call("POST", f"/v1/streams/{sid}/feed", {"ids": probe, "logits": True})
        got = np.array(answer["logits"], np.float32)
        ok &= bool(np.allclose(got, stream.feed(probe), rtol=1e-5, atol=1e-5))
        wrong += not ok
    return lost, wrong


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--replica-cpus", type=float, default=0.5)
    parser.add_argument("--abandon", type=int, default=0, help="abandoned generations first")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state_dir = tempfile.mkdtemp(prefix="infini-load-")
    cmd = [sys.executable, "-c", "from infini_onnx.cli import main; main()", "serve", args.model,
           "--replicas", str(args.replicas), "--replica-cpus", str(args.replica_cpus),
           "--port", str(port), "--state-dir", state_dir,
           "--max-new-tokens-limit", str(ABANDONED_TOKENS)]  # fmt: skip
    log = open(Path(state_dir) / "serve.log", "w")  # noqa: SIM115
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        while "Ctrl-C" not in Path(log.name).read_text():
            if server.poll() is not None or time.monotonic() - started > 300:
                print(Path(log.name).read_text(), file=sys.stderr)
                return 1
            time.sleep(1)
        print(f"server up in {time.monotonic() - started:.0f} s; {args.streams} streams for "
              f"{args.seconds:.0f} s on {os.cpu_count()} cores", flush=True)  # fmt: skip
        if args.abandon and not abandoned_generations(port, args.abandon):
            return 1
        results: list = []
        history: dict = {}
        deadline = time.monotonic() + args.seconds
        threads = [
            threading.Thread(target=client, args=(port, i, deadline, results, history))
            for i in range(args.streams)
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        peak_rss = 0
        while any(t.is_alive() for t in threads):
            peak_rss = max(peak_rss, tree_rss(server.pid))
            time.sleep(1)
        elapsed = time.monotonic() - t0
        latencies = np.array([r[2] for r in results if r[1] == 200])
        errors = sum(r[1] != 200 for r in results)
        fed = sum(r[3] for r in results if r[0] == "feed" and r[1] == 200)
        generated = sum(r[3] for r in results if r[0] == "generate" and r[1] == 200)
        bad_answers = sum(r[4] != "" for r in results)
        print(f"requests: {len(results)} ({errors} errors, {bad_answers} wrong tokens_seen)")
        print(f"tokens/s: {(fed + generated) / elapsed:,.0f} in all "
              f"({fed / elapsed:,.0f} fed, {generated / elapsed:,.0f} generated)")  # fmt: skip
        for kind in ("feed", "generate"):
            lat = np.array([r[2] for r in results if r[0] == kind and r[1] == 200])
            print(f"{kind:8s} latency p50 {np.percentile(lat, 50) * 1e3:7.1f} ms, "
                  f"p99 {np.percentile(lat, 99) * 1e3:7.1f} ms")  # fmt: skip
        print(f"all      latency p50 {np.percentile(latencies, 50) * 1e3:7.1f} ms, "
              f"p99 {np.percentile(latencies, 99) * 1e3:7.1f} ms")  # fmt: skip
        print(f"server RSS peak (process tree): {peak_rss / 2**20:,.0f} MiB")
        lost, wrong = verify(InfiniModel(args.model, threads=1), history)
        lost += args.streams - len(history)
        print(f"streams lost: {lost}, wrong: {wrong} (of {args.streams}, replayed here)")
        return 0 if lost == wrong == errors == bad_answers == 0 else 1
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())

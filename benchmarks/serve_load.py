"""Load test of `infini serve`, loopback only and bounded in time (docs/serving.md).

Starts `infini serve MODEL` (local Ray), then STREAMS client threads each create a stream and,
until the time is up, feed 16..96 random token ids and generate 8 tokens greedily. Prints
tokens/s, p50/p99 request latency, the server's peak RSS (its whole process tree: Ray's
processes included), and checks that no stream was lost or wrong: every answer's tokens_seen
is what the client expects, and afterwards each stream's history replayed in the runtime here
(in the same calls) gives the same generated tokens and the same final logits.

    python benchmarks/serve_load.py MODEL.onnx [--streams 64] [--seconds 60] [--replicas 2]
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
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state_dir = tempfile.mkdtemp(prefix="infini-load-")
    cmd = [sys.executable, "-c", "from infini_onnx.cli import main; main()", "serve", args.model,
           "--replicas", str(args.replicas), "--replica-cpus", str(args.replica_cpus),
           "--port", str(port), "--state-dir", state_dir]  # fmt: skip
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

"""Read once, ask many (docs/serving.md): a long document, then QUESTIONS different questions
about it, each sent to `infini serve`'s /v1/completions with the whole document in its prompt.

Measures, on one thread:

1. here, in the runtime, with no store: one ingest of the document, and each question's own
   time (its prompt's tokens after the document's last segment boundary, and its answer);
   these answers are those of a cold run of each whole prompt (the same model calls);
2. through the server (one replica, the store in its state directory): the total time of the
   QUESTIONS requests, the first of which reads the document.

1 is measured before and again after 2 (a shared machine drifts by 10% and more between
minutes); the ratio of 2 to the mean of 1 is the figure (the target is at most 1.2), and the
ratio to the server's own first request (the ingest through the same path) is printed beside
it. Every answer is checked against the cold one. Loopback only; starts and stops its own
server.

    python benchmarks/prefix_cache.py MODEL.onnx [--tokens 1000000] [--questions 100]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from infini_onnx.runtime import InfiniModel, Stream, textio

MAX_TOKENS = 8


def document(n_bytes: int) -> str:
    """ASCII filler with numbered facts, n_bytes long (a byte-level model: one token each)."""
    lines, i = [], 0
    while sum(map(len, lines)) < n_bytes:
        lines.append(f"Fact {i}: the value of item {i * 7 % 1000} is {i * 7919 % 100000}. ")
        i += 1
    return "".join(lines)[:n_bytes]


def question(i: int) -> str:
    return f"\nQuestion {i}: what is the value of item {i * 37 % 1000}? Answer: the value is"


def cold_answers(model_path: str, doc: str, questions: list[str]) -> tuple[float, float, list]:
    """(ingest seconds, the questions' own seconds, the answers) in the runtime, no store."""
    model = InfiniModel(model_path, threads=1)
    N = model.config.segment_len
    ids = textio.encode(model.tokenizer, doc)
    boundary = len(ids) // N * N
    started = time.perf_counter()
    base = Stream(model)
    base.feed(ids[:boundary])
    ingest = time.perf_counter() - started
    own, answers = 0.0, []
    for q in questions:
        started = time.perf_counter()
        stream = base.fork()
        rest = textio.encode(model.tokenizer, doc[boundary:] + q)  # byte-level: ids = bytes
        pieces = stream.generate_text(rest.tolist(), max_new_tokens=MAX_TOKENS, temperature=0)
        answers.append("".join(pieces))
        own += time.perf_counter() - started
    return ingest, own, answers


def post(port: int, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=3600) as r:
        return json.loads(r.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="document length")
    parser.add_argument("--questions", type=int, default=100)
    args = parser.parse_args()

    doc = document(args.tokens)
    questions = [question(i) for i in range(args.questions)]
    ingest, own, want = cold_answers(args.model, doc, questions)
    print(f"runtime, no store: ingest of {len(doc):,} tokens {ingest:.1f} s, the "
          f"{len(questions)} questions' own time {own:.1f} s", flush=True)  # fmt: skip
    total, first, wrong, cached, median = serve_questions(args.model, doc, questions, want)
    after, own_after, _ = cold_answers(args.model, doc, questions)
    print(f"runtime again, after the server: ingest {after:.1f} s, the questions' own time "
          f"{own_after:.1f} s", flush=True)  # fmt: skip
    print(
        f"server: {len(questions)} requests in {total:.1f} s (the first {first:.1f} s, then "
        f"median {median * 1e3:.0f} ms); {cached:,} prompt tokens read from the store"
    )
    baseline = (ingest + after) / 2 + (own + own_after) / 2
    ratio = total / baseline
    print(f"ratio: {ratio:.3f} of one ingest plus the questions' own time in the runtime "
          f"(mean of before and after; target <= 1.2); {total / (first + own):.3f} of the "
          f"server's first request plus the questions' own time")  # fmt: skip
    print(f"answers equal to the cold run's: {len(questions) - wrong} of {len(questions)}")
    return 0 if wrong == 0 and ratio <= 1.2 else 1


def serve_questions(model: str, doc: str, questions: list[str], want: list[str]):
    """(total s, first request s, wrong answers, prompt tokens from the store, median s of the
    others) of the questions sent to a new `infini serve`."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state_dir = tempfile.mkdtemp(prefix="infini-prefix-")
    cmd = [sys.executable, "-c", "from infini_onnx.cli import main; main()", "serve", model,
           "--replicas", "1", "--threads", "1", "--port", str(port), "--state-dir", state_dir,
           "--max-body-mb", str(4 * len(doc) / 2**20 + 1)]  # fmt: skip
    log = open(Path(state_dir) / "serve.log", "w")  # noqa: SIM115
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        while "Ctrl-C" not in Path(log.name).read_text():
            if server.poll() is not None or time.monotonic() - started > 300:
                sys.exit(Path(log.name).read_text())
            time.sleep(1)
        wrong, cached, times = 0, 0, []
        for q, expected in zip(questions, want):
            t0 = time.perf_counter()
            answer = post(port, {"prompt": doc + q, "max_tokens": MAX_TOKENS, "temperature": 0})
            times.append(time.perf_counter() - t0)
            wrong += answer["choices"][0]["text"] != expected
            cached += answer["usage"]["prompt_tokens_details"]["cached_tokens"]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    rest = sorted(times[1:]) or [0.0]
    return sum(times), times[0], wrong, cached, rest[len(rest) // 2]


if __name__ == "__main__":
    sys.exit(main())

"""The server's stream table: checkpoints at segment boundaries, restore by replay, residency.

Two tables on one state directory stand for two replicas: a stream moved between them must
give exactly what the runtime gives for the same stream alone."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from infini_onnx.errors import InputError, StateFileError, StreamNotFoundError
from infini_onnx.runtime import InfiniModel, SamplingOptions, Stream
from infini_onnx.serve.api import generate_request
from infini_onnx.serve.streams import STALE_TEMP_SECONDS, StreamTable

GREEDY = SamplingOptions(temperature=0)


@pytest.fixture(scope="module")
def model(tiny_onnx):
    return InfiniModel(tiny_onnx[1], threads=1)


def ids(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 256, n).tolist()


def test_stream_moved_between_replicas_matches_the_runtime(model, tmp_path):
    """Feeds and generations that cross segment boundaries (segment_len 32), alternating
    between two tables: every result equals a lone Stream's, to the bit."""
    a, b = StreamTable(model, tmp_path), StreamTable(model, tmp_path)
    sid = a.create()
    alone = Stream(model)
    plan = [("feed", 5), ("feed", 40), ("gen", 7), ("feed", 1), ("gen", 30), ("feed", 64)]
    for i, (op, n) in enumerate(plan):
        table = (a, b)[i % 2]
        if op == "feed":
            chunk = ids(n, i)
            fed = table.feed(sid, ids=chunk)
            np.testing.assert_array_equal(fed.logits, alone.feed(chunk))
            assert fed.tokens_seen == table.info(sid)["tokens_seen"] == alone.tokens_seen
        else:
            opts = dict(
                max_new_tokens=n, stop=[], sampling=SamplingOptions(temperature=0.8, seed=i)
            )
            got = list(table.generate(sid, **opts))
            want = list(alone.generate([], n, stop=[], sampling=opts["sampling"]))
            assert got == want
    # a third replica restores from files alone: same logits, bit for bit
    c = StreamTable(model, tmp_path)
    entry, _ = c._get(sid)
    np.testing.assert_array_equal(entry.stream.logits, alone.logits)
    assert c.stats().restores == 1
    journal = json.loads((tmp_path / f"{sid}.json").read_text())
    assert journal["boundary"] == alone.tokens_seen // 32 * 32
    assert sum(map(len, journal["chunks"])) == alone.tokens_seen % 32
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{sid}.json", f"{sid}.{journal['boundary']}.state"]
    )


def test_stale_resident_copy_is_replaced(model, tmp_path):
    """Replica a holds the stream, b advances it: a's next request sees b's tokens."""
    a, b = StreamTable(model, tmp_path), StreamTable(model, tmp_path)
    sid = a.create()
    a.feed(sid, ids=ids(10, 1))
    b.feed(sid, ids=ids(30, 2))
    assert a.feed(sid, ids=ids(3, 3)).tokens_seen == 43
    alone = Stream(model)
    for seed, n in [(1, 10), (2, 30), (3, 3)]:
        alone.feed(ids(n, seed))
    np.testing.assert_array_equal(a._get(sid)[0].stream.logits, alone.logits)


def test_generation_stopped_early_is_recorded(model, tmp_path):
    a = StreamTable(model, tmp_path)
    sid = a.create()
    tokens = a.generate(sid, prompt=ids(20, 0), max_new_tokens=50, stop=[], sampling=GREEDY)
    taken = [next(tokens) for _ in range(15)]  # crosses the boundary at 32
    tokens.close()
    assert StreamTable(model, tmp_path).info(sid)["tokens_seen"] == 35
    alone = Stream(model)
    assert list(alone.generate(ids(20, 0), 15, stop=[], temperature=0)) == taken
    entry, _ = StreamTable(model, tmp_path)._get(sid)
    np.testing.assert_array_equal(entry.stream.logits, alone.logits)


def test_bad_requests_change_nothing(model, tmp_path):
    a = StreamTable(model, tmp_path)
    sid = a.create()
    a.feed(sid, ids=[1, 2, 3])
    before = (tmp_path / f"{sid}.json").read_text()
    with pytest.raises(InputError, match="outside the vocabulary"):
        a.feed(sid, ids=[1, 999])
    with pytest.raises(InputError, match="flat list of integers"):
        a.feed(sid, ids=[1, [2]])
    with pytest.raises(InputError, match="flat list of integers"):
        a.feed(sid, ids=[True])
    with pytest.raises(InputError, match="empty input"):
        a.feed(sid, text="")
    assert (tmp_path / f"{sid}.json").read_text() == before
    assert a.info(sid)["tokens_seen"] == 3


def test_unknown_and_malformed_ids(model, tmp_path):
    a = StreamTable(model, tmp_path)
    for bad in ["0" * 32, "../../etc/passwd", "A" * 32, "", "0" * 33]:
        with pytest.raises(StreamNotFoundError):
            a.feed(bad, ids=[1])
    sid = a.create()
    a.delete(sid)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StreamNotFoundError):
        a.info(sid)


def test_corrupt_journal_is_a_state_file_error(model, tmp_path):
    a = StreamTable(model, tmp_path)
    sid = a.create()
    (tmp_path / f"{sid}.json").write_text("{not json")
    with pytest.raises(StateFileError, match="corrupt journal"):
        a.feed(sid, ids=[1])


def test_budget_and_idle_eviction(model, tmp_path):
    """At most budget // stream_bytes resident; evicted streams come back from their files."""
    per_stream = model.layout.max_file_bytes()
    a = StreamTable(model, tmp_path, budget_bytes=2 * per_stream, idle_seconds=60)
    sids = [a.create() for _ in range(3)]
    assert a.stats().resident == 2 and a.stats().evictions == 1
    for sid in sids:
        a.feed(sid, ids=[7, 8])
    assert a.stats().resident == 2
    assert [a.info(s)["tokens_seen"] for s in sids] == [2, 2, 2]
    assert a.evict_idle(now=1e12) == 2 and a.stats().resident == 0
    with pytest.raises(InputError, match="holds no stream"):
        StreamTable(model, tmp_path, budget_bytes=per_stream - 1)


def test_a_table_starts_by_removing_what_killed_servers_left(model, tmp_path):
    """A checkpoint's temporary directory (atomic_output's `<name>.<pid>.<random>.tmp`) left by
    a killed server goes when a table starts; a live writer's, a fresh one (maybe another
    node's) and anything not ours stay."""
    dead_pid = 1 << 23  # above Linux's largest pid_max (2^22): no such process
    name = f"{'a' * 32}.64.state"

    def leftover(pid: int, files: list[str], age: float) -> Path:
        d = tmp_path / f"{name}.{pid}.k3x_9q2z.tmp"
        d.mkdir()
        for f in files:
            (d / f).write_bytes(b"partial")
        os.utime(d, (time.time() - age,) * 2)
        return d

    stale = leftover(dead_pid, [name], STALE_TEMP_SECONDS + 5)
    kept = [
        leftover(os.getpid(), [name], STALE_TEMP_SECONDS + 5),  # its writer is alive
        tmp_path / f"{name}.{dead_pid}.fresh000.tmp",  # young: another node may be writing
        tmp_path / f"{name}.{dead_pid}.notours0.tmp",  # holds a file that is not the output's
        tmp_path / "notes.tmp",  # not atomic_output's name
    ]
    kept[1].mkdir()
    kept[2].mkdir()
    (kept[2] / "other.txt").write_text("x")
    os.utime(kept[2], (time.time() - 3600,) * 2)
    kept[3].mkdir()
    StreamTable(model, tmp_path)
    assert not stale.exists() and all(p.exists() for p in kept)


def test_generate_request_is_bounded_by_the_servers_limit():
    assert generate_request({}, 10).max_new_tokens == 10  # the default, capped
    assert generate_request({"max_new_tokens": 10}, 10).max_new_tokens == 10
    assert generate_request({}, 100).max_new_tokens == 64
    with pytest.raises(InputError, match=r"\[0, 10\] \(this server's limit\), got 11"):
        generate_request({"max_new_tokens": 11}, 10)

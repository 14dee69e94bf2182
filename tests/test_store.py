"""The state store (runtime/store.py) and the streams that use it: a hit is bit-identical to a
cold run at every prefix length, damaged entries are ignored and counted, the budgets hold, a
kill during a write leaves the store usable, forks stay apart, and rollback replays exactly."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infini_onnx.errors import InputError
from infini_onnx.runtime import InfiniModel, StateStore, StoreWarning, Stream

FAST = settings(
    derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck),
    max_examples=25,
)  # fmt: skip


@pytest.fixture(scope="module")
def model(tiny_onnx) -> InfiniModel:
    return InfiniModel(tiny_onnx[1], threads=1)


def ids(model: InfiniModel, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, n)


def host(stream: Stream) -> dict[str, np.ndarray]:
    return stream.state.to_host()


def assert_same(a: Stream, b: Stream) -> None:
    """Bit-identical: every state tensor, tokens_seen and logits."""
    ha, hb = host(a), host(b)
    assert ha.keys() == hb.keys()
    for name in ha:
        assert ha[name].tobytes() == hb[name].tobytes(), name


def cold(model: InfiniModel, *calls: np.ndarray) -> Stream:
    stream = Stream(model)
    for call in calls:
        stream.feed(call)
    return stream


# --- hits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [1, 4])
def test_a_hit_is_bit_identical_to_a_cold_run_at_every_prefix_length(model, tmp_path, every):
    N = model.config.segment_len
    doc = ids(model, 12 * N + 5)
    store = StateStore(tmp_path / "store", every=every)
    Stream(model, store=store).feed(doc)  # fills the store
    saved = 0
    for p in [*range(1, 3 * N + 2), 8 * N - 1, 8 * N, 8 * N + 1, 12 * N, 12 * N + 5]:
        before = store.stats().tokens_saved
        warm = Stream(model, store=store)
        logits = warm.feed(doc[:p])
        reference = cold(model, doc[:p])
        assert_same(warm, reference)
        assert logits.tobytes() == reference.logits.tobytes()
        assert list(warm.generate([], 4, temperature=0)) == list(
            reference.generate([], 4, temperature=0)
        )
        saved += store.stats().tokens_saved - before
        if p >= 2 * N and every == 1:  # every boundary is stored: only the tail is fed
            assert store.stats().tokens_saved - before == p // N * N
    assert saved > 0


def test_a_document_read_once_answers_many_questions(model, tmp_path):
    """The server's case: the same document with a different question each time; a question
    pays for the document's last partial segment and itself, nothing more."""
    N = model.config.segment_len
    doc = ids(model, 40 * N + 11)
    store = StateStore(tmp_path / "store", every=8)
    for i in range(6):
        question = ids(model, 5 + 7 * i, seed=100 + i)
        prompt = np.concatenate([doc, question])
        before = store.stats().tokens_saved
        warm = Stream(model, store=store)
        warm.feed(prompt)
        assert_same(warm, cold(model, prompt))
        if i:
            assert store.stats().tokens_saved - before == 40 * N


def test_keys_separate_models_and_call_structure(model, onnx_factory, tmp_path):
    """A state made in other calls has other bits: it is never a hit for the canonical feed;
    another model's entries are never a hit either."""
    N = model.config.segment_len
    doc = ids(model, 4 * N)
    store = StateStore(tmp_path / "store", every=1)
    chunked = Stream(model, store=store)
    for piece in np.array_split(doc, 7):  # the first segment in two calls
        chunked.feed(piece)
    other = InfiniModel(onnx_factory(memory_update="linear")[1], threads=1)
    Stream(other, store=store).feed(doc)
    before = store.stats()
    warm = Stream(model, store=store)
    warm.feed(doc)
    assert store.stats().tokens_saved == before.tokens_saved
    assert_same(warm, cold(model, doc))


def test_a_feed_keeps_the_boundaries_just_before_its_end_across_spans(model, tmp_path):
    """every=4: a feed of 9 segments keeps 4, 8 (every 4th) and 9, 8, 7 (its last, and 1 and 2
    before it, reaching back into the span before the last); a feed that diverges after 7
    segments and 5 tokens then reads 7 segments from the store."""
    N = model.config.segment_len
    store = StateStore(tmp_path / "store", every=4)
    doc = ids(model, 9 * N + 3)
    Stream(model, store=store).feed(doc)
    assert store.stats().stores == 4  # 4N, 7N, 8N, 9N
    other = np.concatenate([doc[: 7 * N + 5], ids(model, 2 * N, seed=9)])
    warm = Stream(model, store=store)
    warm.feed(other)
    assert warm.cached_tokens == 7 * N
    assert_same(warm, cold(model, other))


def test_keys_name_the_variant_and_the_device(model):
    from types import SimpleNamespace

    from infini_onnx.runtime import store as stored

    base = dict(model_id="m", format_version=2, variant="fp32", device="cpu")
    keys = {
        stored.empty_key(SimpleNamespace(**{**base, **change}))
        for change in ({}, {"variant": "int8"}, {"device": "cuda"}, {"format_version": 1},
                       {"model_id": "n"})
    }  # fmt: skip
    assert len(keys) == 5
    assert stored.empty_key(model) == Stream(model, store=StateStore())._history.key


def test_an_entry_gone_meanwhile_is_a_miss_not_damage(model, tmp_path):
    N = model.config.segment_len
    doc = ids(model, 2 * N)
    Stream(model, store=StateStore(tmp_path / "store", every=1)).feed(doc)
    store = StateStore(tmp_path / "store", every=1)
    for f in (tmp_path / "store").glob("*.state"):
        f.unlink()  # evicted by another process between contains() and get()
    stream = Stream(model, store=store)
    stream.feed(doc)
    assert store.stats().rejected == 0 and stream.cached_tokens == 0


def test_hits_share_nothing_writable(model):
    N = model.config.segment_len
    store = StateStore(every=1)
    doc = ids(model, 2 * N)
    Stream(model, store=store).feed(doc)
    logits = Stream(model, store=store).feed(doc)
    logits[:] = 0  # the caller's own copy
    assert_same(Stream(model, store=store), Stream(model, store=store))
    again = Stream(model, store=store)
    assert np.array_equal(again.feed(doc), cold(model, doc).logits)


def test_memory_only_store_and_the_ram_budget(model):
    N = model.config.segment_len
    store = StateStore(every=1, ram_bytes=3 * 200_000)
    Stream(model, store=store).feed(ids(model, 30 * N))
    stats = store.stats()
    assert stats.disk_bytes == 0 and stats.ram_bytes <= 3 * 200_000
    assert stats.evictions > 0


def test_bad_arguments(model, tmp_path):
    with pytest.raises(InputError, match="every must be an integer >= 1"):
        StateStore(every=0)
    with pytest.raises(InputError, match="ram_bytes"):
        StateStore(ram_bytes=True)
    with pytest.raises(InputError, match="store must be a StateStore"):
        Stream(model, store=str(tmp_path))
    with pytest.raises(InputError, match="rollback needs a stream with a state store"):
        Stream(model).rollback(0)
    with pytest.raises(InputError, match="all_logits is for a stream without a store"):
        Stream(model, store=StateStore()).feed([1, 2], all_logits=True)


# --- faults -------------------------------------------------------------------------------------


def damage_all(directory: Path, how: str, donor: Path | None = None) -> int:
    files = sorted(directory.glob("*.state"))
    originals = [f.read_bytes() for f in files]
    for i, f in enumerate(files):
        data = originals[i]
        if how == "corrupt":
            f.write_bytes(data[:-100] + bytes(b ^ 0xFF for b in data[-100:]))
        elif how == "truncated":
            f.write_bytes(data[: len(data) // 2])
        elif how == "foreign":  # another model's entry under this key
            f.write_bytes(next(donor.glob("*.state")).read_bytes())
        elif how == "swapped":  # this model's entry of another key
            f.write_bytes(originals[(i + 1) % len(files)])
    return len(files)


@pytest.mark.parametrize("how", ["corrupt", "truncated", "foreign", "swapped"])
def test_damaged_entries_are_ignored_counted_and_removed(model, onnx_factory, tmp_path, how):
    N = model.config.segment_len
    doc = ids(model, 6 * N + 3)
    Stream(model, store=StateStore(tmp_path / "store", every=1)).feed(doc)
    donor = None
    if how == "foreign":
        other = InfiniModel(onnx_factory(memory_update="linear")[1], threads=1)
        donor = tmp_path / "donor"
        Stream(other, store=StateStore(donor, every=1)).feed(doc)
    damaged = damage_all(tmp_path / "store", how, donor)
    store = StateStore(tmp_path / "store", every=1)  # a new process: nothing in memory
    warm = Stream(model, store=store)
    with pytest.warns(StoreWarning, match="ignored"):
        warm.feed(doc)
    assert_same(warm, cold(model, doc))
    stats = store.stats()
    assert stats.tokens_saved == 0
    assert stats.rejected == damaged
    again = Stream(model, store=StateStore(tmp_path / "store", every=1))
    again.feed(doc)  # the good entries written since: hits, no warning
    assert_same(again, warm)


def test_the_disk_budget_is_never_exceeded(model, tmp_path):
    N = model.config.segment_len
    budget = 700_000
    store = StateStore(tmp_path / "store", every=1, disk_bytes=budget)
    directory = tmp_path / "store"
    seen = []
    original = store.put

    def put(*args):
        original(*args)
        seen.append(sum(f.stat().st_size for f in directory.iterdir()))

    store.put = put
    for seed in range(4):
        Stream(model, store=store).feed(ids(model, 8 * N, seed))
    assert max(seen) <= budget
    assert store.stats().evictions > 0
    assert len(list(directory.glob("*.state"))) >= 2


WRITER = """
import sys, numpy as np
from infini_onnx.runtime import InfiniModel, StateStore, Stream
model = InfiniModel(sys.argv[1], threads=1)
store = StateStore(sys.argv[2], every=1, disk_bytes=int(sys.argv[3]))
print("ready", flush=True)
for seed in range(10**6):
    ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, 4 * 32)
    Stream(model, store=store).feed(ids)
"""


def test_a_kill_9_during_writes_leaves_the_store_usable(model, tiny_onnx, tmp_path):
    directory, budget = tmp_path / "store", 2_000_000
    for delay in (0.3, 0.7, 1.1):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tiny_onnx[1]), str(directory), str(budget)],
            stdout=subprocess.PIPE,
        )
        assert writer.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        writer.kill()
        writer.wait()
        writer.stdout.close()
        store = StateStore(directory, every=1, disk_bytes=budget)  # removes the leftovers
        assert not list(directory.glob("*.tmp"))
        N = model.config.segment_len
        doc = ids(model, 4 * N, seed=7)
        warm = Stream(model, store=store)
        warm.feed(doc)
        assert_same(warm, cold(model, doc))
        assert store.stats().rejected == 0
        assert sum(f.stat().st_size for f in directory.iterdir()) <= budget


# --- forks --------------------------------------------------------------------------------------


def test_32_concurrent_forks_of_one_prefix_never_see_each_others_tokens(model, tmp_path):
    N = model.config.segment_len
    store = StateStore(tmp_path / "store", every=1)
    base = Stream(model, store=store)
    prefix = ids(model, 3 * N + 9)
    base.feed(prefix)
    results: dict[int, Stream] = {}

    def client(i: int) -> None:
        fork = base.fork()
        for j in range(3):
            fork.feed(ids(model, 1 + (7 * i + j) % (2 * N), seed=1000 * i + j))
        results[i] = fork

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, fork in results.items():
        calls = [ids(model, 1 + (7 * i + j) % (2 * N), seed=1000 * i + j) for j in range(3)]
        assert_same(fork, cold(model, prefix, *calls))
    assert_same(base, cold(model, prefix))  # the forks left the original alone


# --- rollback -----------------------------------------------------------------------------------


@FAST
@given(
    lengths=st.lists(st.integers(1, 80), min_size=1, max_size=6),
    back=st.floats(0, 1),
    every=st.sampled_from([1, 2, 3]),
    decode=st.integers(0, 5),
)
def test_rollback_replays_bit_exactly(model, tmp_path_factory, lengths, back, every, decode):
    """Feed random calls (and decode), roll back a random number of tokens: the state is that
    of the same calls cut at the target, bit for bit; then both go on alike."""
    store = StateStore(tmp_path_factory.mktemp("store"), every=every)
    doc = ids(model, sum(lengths), seed=len(lengths))
    calls = np.split(doc, np.cumsum(lengths)[:-1])
    stream = Stream(model, store=store)
    for call in calls:
        stream.feed(call)
    generated = list(stream.generate([], decode, temperature=0))
    calls += [np.array([t]) for t in generated]
    n = int(back * stream.tokens_seen)
    stream.rollback(n)
    target, reference, at = stream.tokens_seen, Stream(model), 0
    assert target == sum(lengths) + decode - n
    for call in calls:
        if at >= target:
            break
        reference.feed(call[: target - at])
        at += len(call[: target - at])
    if target:
        assert_same(stream, reference)
        more = ids(model, 45, seed=99)
        stream.feed(more)
        reference.feed(more)
        assert_same(stream, reference)
    else:
        assert stream.logits is None and reference.logits is None


def test_rollback_refuses_what_it_cannot_reach_and_changes_nothing(model, tmp_path):
    N = model.config.segment_len
    probe = StateStore(every=1)
    Stream(model, store=probe).feed(ids(model, 3 * N + 4))
    entry = probe.stats().ram_bytes // probe.stats().stores  # bytes of one boundary's entry
    store = StateStore(every=1, ram_bytes=entry * 5 // 2)  # keeps the last two boundaries
    stream = Stream(model, store=store)
    stream.feed(ids(model, 3 * N + 4))
    stream.rollback(4 + N)  # to the boundary before the last one
    assert stream.tokens_seen == 2 * N
    before = host(stream)
    with pytest.raises(
        InputError, match=f"roll back to token {2 * N - 1}: .* {N} is not in the store .evicted"
    ):
        stream.rollback(1)
    assert all(before[k].tobytes() == v.tobytes() for k, v in host(stream).items())
    with pytest.raises(InputError, match=rf"n_tokens must be in \[0, {2 * N}\]"):
        stream.rollback(2 * N + 1)
    assert_same(stream, cold(model, ids(model, 3 * N + 4)[: 2 * N]))


def test_a_loaded_stream_rolls_back_to_its_start_and_no_further(model, tmp_path):
    N = model.config.segment_len
    first = cold(model, ids(model, N + 5))
    first.save(tmp_path / "s.state")
    store = StateStore(tmp_path / "store", every=1)
    stream = Stream.load(model, tmp_path / "s.state", store=store)
    stream.feed(ids(model, 2 * N, seed=3))
    stream.rollback(2 * N)
    assert_same(stream, first)
    with pytest.raises(InputError, match="the stream's start"):
        stream.rollback(1)


# --- the command line ---------------------------------------------------------------------------


def test_infini_stream_with_a_cache_reads_the_second_run_from_it(tiny_onnx, tmp_path):
    from clirun import infini

    text = tmp_path / "doc.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 100)  # 4,500 tokens
    args = ["stream", tiny_onnx[1], text, "--generate", 12, "--temperature", 0, "--no-progress"]
    plain = infini(*args)
    first = infini(*args, "--cache", tmp_path / "cache")
    second = infini(*args, "--cache", tmp_path / "cache")
    for result in (plain, first, second):
        assert result.exit_code == 0, result.output
    generated = plain.stdout
    assert first.stdout == generated and second.stdout == generated
    assert "cache: 0 tokens read" in first.stderr
    assert "cache: 4,480 tokens read" in second.stderr  # all but the last partial segment
    bad = infini(*args, "--cache", text)
    assert bad.exit_code != 0 and "--cache" in bad.output

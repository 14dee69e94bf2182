"""The runtime against the PyTorch reference: feeding, generation, batches, forks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from infini_onnx.runtime import InfiniModel, InputError, Stream, StreamBatch

VARIANTS = [("delta", True), ("linear", False)]


def reference_run(model_dir: Path, ids: list[int], new_tokens: int = 0):
    """The PyTorch reference: logits of every token of `ids` [S, V], then greedy tokens and the
    next-token logits after them."""
    import torch

    from infini_onnx.model import from_pretrained

    model = from_pretrained(model_dir)
    generated = [int(t) for t in model.generate(torch.tensor([ids]), new_tokens)]
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids + generated]))
    return logits[0, : len(ids)].numpy(), generated, logits[0, -1].numpy()


def random_ids(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 258, n).tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_feed_and_generate_match_reference(onnx_factory, variant):
    model_dir, onnx_path = onnx_factory(*variant)
    model = InfiniModel(onnx_path, threads=1)
    ids = random_ids(75)  # two whole segments of 32 and a tail: folded into memory
    ref_logits, ref_tokens, ref_last = reference_run(model_dir, ids, new_tokens=40)

    stream = Stream(model)
    logits = stream.feed(ids, all_logits=True)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    tokens = list(stream.generate(max_new_tokens=40, temperature=0, stop=()))
    assert tokens == ref_tokens
    np.testing.assert_allclose(stream.logits, ref_last, atol=1e-4, rtol=0)
    assert stream.tokens_seen == 115

    fresh = Stream(model)
    assert list(fresh.generate(ids, max_new_tokens=40, temperature=0, stop=())) == ref_tokens


def test_chunks_of_any_size_give_the_same_result(tiny_model):
    ids = random_ids(200, seed=1)
    whole = Stream(tiny_model)
    expected = whole.feed(ids, all_logits=True)
    cuts = [0, 1, 5, 37, 64, 65, 130, 200]
    for chunks in (
        [ids[a:b] for a, b in zip(cuts, cuts[1:])],
        (np.array(ids[a:b]) for a, b in zip(cuts, cuts[1:])),  # a lazy iterable
        iter(ids),  # one token at a time
    ):
        stream = Stream(tiny_model)
        np.testing.assert_allclose(stream.feed(chunks, all_logits=True), expected, atol=1e-5)
        np.testing.assert_allclose(stream.logits, whole.logits, atol=1e-5)
        assert stream.tokens_seen == 200
        assert stream.state.cached == 200 % 32


def test_a_new_stream_generates_from_bos(tiny_onnx, tiny_model):
    bos = tiny_model.config.bos_token_id
    _, expected, _ = reference_run(tiny_onnx[0], [bos], new_tokens=12)
    assert list(Stream(tiny_model).generate(max_new_tokens=12, temperature=0, stop=())) == expected


def test_feed_reads_a_lazy_iterable_as_it_goes(tiny_model, monkeypatch):
    """Each chunk is run before the next is read: a stream's memory never holds the input."""
    calls = []
    step = tiny_model.step
    monkeypatch.setattr(
        tiny_model, "step", lambda s, ids, n=1: calls.append(ids.shape[1]) or step(s, ids, n)
    )
    calls_when_read = []

    def chunks():
        for _ in range(5):
            calls_when_read.append(len(calls))
            yield random_ids(32)

    Stream(tiny_model).feed(chunks())
    assert calls_when_read == [0, 1, 2, 3, 4] and len(calls) == 5


LAZY_FEED_RSS = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from infini_onnx.runtime import InfiniModel, Stream

    def chunks(n):  # each chunk of 64 ids pins a fresh 4 MB buffer while it is referenced
        for i in range(n):
            yield np.full(1 << 19, i % 250, np.int64)[::8192]

    stream = Stream(InfiniModel(sys.argv[1], threads=1))
    stream.feed(chunks(20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stream.feed(chunks(200))  # 800 MB of buffers in all
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert stream.tokens_seen == 220 * 64
    print((after - before) // 1024)
    """
)


def test_resident_memory_stays_flat_while_feeding_a_long_iterator(tiny_onnx):
    """Peak RSS in a fresh process: feeding 200 more chunks adds (almost) nothing."""
    result = subprocess.run(
        [sys.executable, "-c", LAZY_FEED_RSS, str(tiny_onnx[1])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 40, f"peak RSS grew by {result.stdout.strip()} MiB"


def test_whole_segments_take_one_call_each(tiny_model, monkeypatch):
    calls = []
    step = tiny_model.step
    monkeypatch.setattr(
        tiny_model,
        "step",
        lambda s, ids, n=1: calls.append((s.cached, ids.shape[1], n)) or step(s, ids, n),
    )
    stream = Stream(tiny_model)
    stream.feed(random_ids(10))
    stream.feed([random_ids(50), random_ids(60)])  # 22 to end the segment, 2 whole, a tail of 24
    assert calls == [(0, 10, 1), (10, 22, 1), (0, 32, 1), (0, 32, 1), (0, 24, 1)]


def test_feed_text_uses_the_metadata_tokenizer(tiny_model):
    a, b = Stream(tiny_model), Stream(tiny_model)
    a.feed_text("héllo, world")
    b.feed(list("héllo, world".encode()))
    np.testing.assert_array_equal(a.logits, b.logits)
    c = Stream(tiny_model)
    c.feed_text(["hé", "llo, ", "world"])
    np.testing.assert_allclose(c.logits, a.logits, atol=1e-5)


def test_generate_text_and_sampling_options(tiny_model):
    prompt = "The quick brown fox"
    greedy = list(Stream(tiny_model).generate(prompt, 30, temperature=0, stop=()))
    assert list(Stream(tiny_model).generate(prompt, 30, top_k=1, stop=())) == greedy
    one = list(Stream(tiny_model).generate(prompt, 30, temperature=1.0, top_p=0.9, seed=7))
    two = list(Stream(tiny_model).generate(prompt, 30, temperature=1.0, top_p=0.9, seed=7))
    assert one == two
    text = "".join(
        Stream(tiny_model).generate_text(prompt, max_new_tokens=30, temperature=0, stop=())
    )
    assert isinstance(text, str) and text
    empty = Stream(tiny_model)
    assert len(list(empty.generate(max_new_tokens=3, stop=()))) == 3  # starts from bos
    assert empty.tokens_seen == 4


def test_stop_token_is_yielded_and_ends_generation(tiny_model):
    stream = Stream(tiny_model)
    first = list(stream.fork().generate("abc", 50, temperature=0, stop=()))
    stop = first[5]
    tokens = list(stream.generate("abc", 50, temperature=0, stop=[stop]))
    assert tokens == first[: first.index(stop) + 1]
    assert stream.tokens_seen == 3 + len(tokens)


def test_fork_and_reset(tiny_model):
    stream = Stream(tiny_model)
    stream.feed(random_ids(40))
    fork = stream.fork()
    a = list(stream.generate(max_new_tokens=10, temperature=0, stop=()))
    b = list(fork.generate(max_new_tokens=10, temperature=0, stop=()))
    assert a == b and stream.tokens_seen == fork.tokens_seen == 50
    stream.reset()
    assert stream.tokens_seen == 0 and stream.logits is None and stream.state.cached == 0
    assert fork.tokens_seen == 50


def test_batch_equals_one_by_one(tiny_model):
    histories = [random_ids(n, seed=n) for n in (10, 42, 74)]  # all at position 10 of a segment
    new = np.array([random_ids(50, seed=100 + i) for i in range(3)])
    singles = []
    for history, row in zip(histories, new):
        s = Stream(tiny_model)
        s.feed(history)
        logits = s.feed(row, all_logits=True)
        tokens = list(s.generate(max_new_tokens=25, temperature=0, stop=()))
        singles.append((logits, tokens, s))

    streams = []
    for history in histories:
        streams.append(Stream(tiny_model))
        streams[-1].feed(history)
    batch = StreamBatch(streams)
    logits = batch.feed(new, all_logits=True)
    tokens = np.stack(list(batch.generate(max_new_tokens=25, temperature=0)), axis=1)
    assert batch.tokens_seen == [85, 117, 149]
    for i, (single_logits, single_tokens, _) in enumerate(singles):
        np.testing.assert_allclose(logits[i], single_logits, atol=1e-5)
        assert tokens[i].tolist() == single_tokens
    for back, (_, _, single) in zip(batch.split(), singles):
        assert back.tokens_seen == single.tokens_seen
        np.testing.assert_allclose(back.logits, single.logits, atol=1e-5)
        a, b = back.state.to_host(), single.state.to_host()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], atol=1e-4, err_msg=name)


def test_batch_refuses_streams_at_different_positions(tiny_model):
    a, b = Stream(tiny_model), Stream(tiny_model)
    a.feed(random_ids(3))
    with pytest.raises(InputError, match="same position"):
        StreamBatch([a, b])
    other = InfiniModel(tiny_model.path, threads=1)
    with pytest.raises(InputError, match="another model"):
        StreamBatch([b, Stream(other)])


def test_token_ids_in_every_accepted_form(tiny_model):
    ids = [0, *random_ids(40, seed=3), 257]  # the ends of the vocabulary are valid
    expected = Stream(tiny_model).feed(ids)
    for form in (np.array(ids), np.array([ids]), [ids[:10], np.array(ids[10:])], iter(ids)):
        np.testing.assert_allclose(Stream(tiny_model).feed(form), expected, atol=1e-6)
    with pytest.raises(InputError, match="token id 258 outside"):  # the first bad id is named
        Stream(tiny_model).feed([0, 258, -1])
    with pytest.raises(InputError, match="must have shape"):
        Stream(tiny_model).feed(np.array([[ids[:4]]]))  # [1, 1, 4]
    stream = Stream(tiny_model)
    logits = stream.feed_text("some text")
    assert logits.shape == (tiny_model.config.vocab_size,)


def test_generate_defaults_and_zero_new_tokens(tiny_model):
    stream = Stream(tiny_model)
    assert list(stream.generate("abc", max_new_tokens=0)) == [] and stream.tokens_seen == 3
    default = list(stream.fork().generate(seed=2, stop=()))
    assert len(default) == 64
    assert default == list(
        stream.fork().generate(max_new_tokens=64, temperature=1.0, seed=2, stop=())
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=2.0, top_k=3, seed=1),
        dict(temperature=2.0, top_p=0.3, seed=1),
        dict(seed=9),
    ],
)
def test_a_batch_of_one_samples_as_the_stream_does(tiny_model, options):
    stream = Stream(tiny_model)
    stream.feed(random_ids(20, seed=4))
    expected = list(stream.fork().generate(max_new_tokens=30, stop=(), **options))
    assert len(set(expected)) > 1
    batch = StreamBatch([stream])
    got = [int(t[0]) for t in batch.generate(max_new_tokens=30, **options)]
    assert got == expected
    assert len(list(StreamBatch([stream]).generate(seed=0))) == 64  # the default length


def test_batch_feeds_chunks_and_split_streams_go_on(tiny_model):
    streams = [Stream(tiny_model) for _ in range(2)]
    batch = StreamBatch(streams)
    ids = np.array([random_ids(40, seed=i) for i in range(2)])
    logits = batch.feed(iter([ids[:, :15], ids[:, 15:]]))
    assert logits.shape == (2, tiny_model.config.vocab_size)
    back = batch.split()
    for i, stream in enumerate(back):
        single = Stream(tiny_model)
        single.feed(ids[i])
        np.testing.assert_allclose(stream.feed([5, 6]), single.feed([5, 6]), atol=1e-5)


def test_repr_names_the_file_and_the_variant(tiny_model):
    text = repr(tiny_model)
    assert str(tiny_model.path) in text and "variant='fp32'" in text
    assert f"segment_len={tiny_model.config.segment_len}" in text

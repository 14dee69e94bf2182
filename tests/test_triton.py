"""`infini triton`: the config parses with tritonclient's protobuf, and ONNX Runtime playing
Triton's sequence batcher (states paired alphabetically, uninitialised buffers with -1 dims set
to 1 at a sequence's start, the START control) gives the runtime's logits for interleaved
sequences, for step graphs of format 2 (the window ring) and format 1 (a growing cache)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result

from infini_onnx.cli import main
from infini_onnx.errors import InputError, ModelFileError
from infini_onnx.runtime import InfiniModel, Stream
from infini_onnx.serve.triton import write_repository
from infini_onnx.stepgraph.metadata import digest
from infini_onnx.stepgraph.names import KEY_CONFIG, KEY_DIGEST

onnx = pytest.importorskip("onnx")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")

FORMAT1 = Path(__file__).parent / "fixtures" / "format1-tiny.onnx"


@pytest.fixture(scope="module", params=[2, 1], ids=["format2", "format1"])
def repo(request, tiny_onnx, tmp_path_factory):
    """(model directory of the repository, the step graph it wraps, its format version)."""
    graph = tiny_onnx[1] if request.param == 2 else FORMAT1
    out = tmp_path_factory.mktemp("triton")
    return write_repository(graph, out, name="infini", instances=3), graph, request.param


def parse_config(model_dir):
    text = (model_dir / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_config_parses_and_declares_the_contract(repo):
    """The pairs, their types and dims: format 2's state (ring and position included) has a
    fixed size, format 1's cache a free length."""
    config = parse_config(repo[0])
    assert config.backend == "onnxruntime" and config.max_batch_size == 0
    assert [i.name for i in config.input] == ["input_ids"]  # states are not inputs
    assert config.instance_group[0].count == 3
    control = config.sequence_batching.control_input[0]
    assert control.name == "START"
    assert (
        control.control[0].kind
        == model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START
    )
    states = {s.input_name: s for s in config.sequence_batching.state}
    pairs = [(s.input_name, s.output_name) for s in states.values()]
    # Triton pairs by alphabetical position: both orders must give the declared pairs
    assert list(zip(sorted(i for i, _ in pairs), sorted(o for _, o in pairs))) == sorted(pairs)
    c = InfiniModel(repo[1], threads=1).config
    L, G, d = c.num_hidden_layers, c.num_key_value_heads, c.head_dim
    cache = [1, L, G, c.local_window - 1 if repo[2] == 2 else -1, d]  # the ring: K = W - 1
    want = {
        "memory": [1, L, G, d, d], "memory_acc": [1, L, G, d, d], "norm": [1, L, G, d],
        "norm_acc": [1, L, G, d], "past_key": cache, "past_value": cache,
        **({"position": [1]} if repo[2] == 2 else {}),
    }  # fmt: skip
    assert {name.removeprefix("INPUT_STATE__"): list(s.dims) for name, s in states.items()} == want
    int64 = {n for n, s in states.items() if s.data_type == model_config_pb2.TYPE_INT64}
    assert int64 == ({"INPUT_STATE__position"} if repo[2] == 2 else set())
    assert {s.data_type for n, s in states.items() if n not in int64} == {
        model_config_pb2.TYPE_FP32
    }
    session = ort.InferenceSession(str(repo[0] / "1" / "model.onnx"))
    graph_inputs = {i.name for i in session.get_inputs()}
    assert graph_inputs == {"input_ids", "START", *(i for i, _ in pairs)}
    assert {o.name for o in session.get_outputs()} == {"logits", *(o for _, o in pairs)}


def test_the_served_graph_is_valid_onnx(repo):
    """onnx.checker with strict shape inference (fails on an unsorted graph, a shape or type
    that an op refuses); node names unique (onnx does not check them)."""
    served = onnx.load(str(repo[0] / "1" / "model.onnx"))
    onnx.checker.check_model(served, full_check=True)
    names = [n.name for n in served.graph.node]
    assert len(set(names)) == len(names)


# Triton's data types as numpy dtypes, and garbage of each for an uninitialised buffer.
DTYPES = {
    model_config_pb2.TYPE_FP32: np.float32,
    model_config_pb2.TYPE_FP16: np.float16,
    model_config_pb2.TYPE_INT64: np.int64,
}


def garbage(rng: np.random.Generator, shape: list[int], dtype) -> np.ndarray:
    """An uninitialised buffer: huge values, NaN first (int64: any values)."""
    if dtype == np.int64:
        return rng.integers(-(2**62), 2**62, shape)
    a = (np.clip(rng.standard_normal(shape), -4, 4) * float(np.finfo(dtype).max / 4)).astype(dtype)
    a.flat[0] = np.nan
    return a


class TritonLoop:
    """Triton's sequence batcher with implicit state, reduced to what matters here: the output
    states come back as the input states, paired by alphabetical position, and must fit the
    declared dims and data type (the next request is checked against them)."""

    def __init__(self, model_dir):
        self.session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
        config = parse_config(model_dir)
        self.specs = {s.input_name: s for s in config.sequence_batching.state}
        inputs = sorted(s.input_name for s in config.sequence_batching.state)
        outputs = sorted(s.output_name for s in config.sequence_batching.state)
        self.pairing = dict(zip(outputs, inputs))  # by position, as Triton does
        self.logits_dims = list(config.output[0].dims)
        self.states: dict[int, dict[str, np.ndarray]] = {}
        self.rng = np.random.default_rng(0)

    def infer(self, sequence: int, input_ids: list[int], start: bool) -> np.ndarray:
        # At START: uninitialised buffers (-1 dims set to 1), or a reused slot's last state.
        if start and sequence not in self.states:
            self.states[sequence] = {
                name: garbage(self.rng, [d if d > 0 else 1 for d in s.dims], DTYPES[s.data_type])
                for name, s in self.specs.items()
            }
        feeds = {
            "input_ids": np.array([input_ids], np.int64),
            "START": np.array([start]),
            **self.states[sequence],
        }
        names = [o.name for o in self.session.get_outputs()]
        out = dict(zip(names, self.session.run(names, feeds)))
        self.states[sequence] = {self.pairing[k]: v for k, v in out.items() if k in self.pairing}
        for name, value in self.states[sequence].items():
            dims = self.specs[name].dims
            assert value.dtype == DTYPES[self.specs[name].data_type], name
            assert value.ndim == len(dims), name
            assert all(d in (-1, n) for d, n in zip(dims, value.shape)), (name, value.shape)
        assert list(out["logits"].shape) == self.logits_dims
        return out["logits"][0, -1]


def test_simulated_triton_loop_matches_the_runtime(repo):
    """Four interleaved sequences over several segments, with requests of 1 token, several
    tokens, the rest of a segment and whole segments (more rows than format 2's ring holds);
    one slot is reused by a new sequence midway. A request never crosses a segment boundary,
    as docs/serving.md asks of clients."""
    loop = TritonLoop(repo[0])
    model = InfiniModel(repo[1], threads=1)
    N = model.config.segment_len
    streams = {seq: Stream(model) for seq in range(4)}
    rng, sizes = np.random.default_rng(1), set()
    for step in range(40):
        if step == 20:
            streams[3] = Stream(model)  # a new sequence in slot 3
        for seq, stream in streams.items():
            room = N - stream.tokens_seen % N
            kind = (step + seq) % 4  # 1 token, some tokens, 1 token, the rest of the segment
            n = {0: 1, 1: int(rng.integers(1, room + 1)), 2: 1, 3: room}[kind]
            sizes.add(n)
            ids = rng.integers(0, 256, n).tolist()
            got = loop.infer(seq, ids, start=stream.tokens_seen == 0)
            want = stream.feed(ids)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert min(s.tokens_seen for s in streams.values()) > 2 * N  # commits happened
    assert {1, N} <= sizes and len(sizes) > 4  # whole segments and sizes in between


def test_cli_writes_a_repository_and_refuses_to_overwrite(tiny_onnx, tmp_path):
    cli = [sys.executable, "-c", "from infini_onnx.cli import main; main()", "triton"]
    done = subprocess.run([*cli, str(tiny_onnx[1]), str(tmp_path / "repo")], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert parse_config(tmp_path / "repo" / "infini").name == "infini"
    again = subprocess.run([*cli, str(tiny_onnx[1]), str(tmp_path / "repo")], capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    missing = subprocess.run([*cli, str(tmp_path / "none.onnx"), str(tmp_path / "r2")],
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 1 and "no such model file" in missing.stderr


# --- hostile options and graphs: one-line errors, nothing written ----------------------------


def triton(*args) -> Result:
    """`infini triton ARGS` in-process."""
    return CliRunner().invoke(main, ["triton", *map(str, args)])


def one_line_error(result, words: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "Traceback" not in result.output
    if code == 1:  # the project's `error: ...`
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert words in result.stderr, result.stderr


@pytest.mark.parametrize(
    "name", ["../../x", "ABS", 'x" backend: "python', "", ".", "..", "a/b", "-x", "x\ny", "é"]
)
def test_a_name_must_be_one_safe_directory_name(tiny_onnx, tmp_path, name):
    name = str(tmp_path / "abs") if name == "ABS" else name
    repo = tmp_path / "deep" / "er" / "repo"
    one_line_error(triton(tiny_onnx[1], repo, "--name", name), "a model name is 1 to 128 of")
    with pytest.raises(InputError, match="a model name is"):
        write_repository(tiny_onnx[1], repo, name=name)
    assert list(tmp_path.rglob("*")) == []  # not REPO, not outside it


def test_a_long_name_is_refused_and_a_dotted_one_accepted(tiny_onnx, tmp_path):
    one_line_error(triton(tiny_onnx[1], tmp_path / "r", "--name", "a" * 129), "a model name")
    assert list(tmp_path.iterdir()) == []
    assert triton(tiny_onnx[1], tmp_path / "r", "--name", "a_1.b-2").exit_code == 0


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_max_idle_must_be_finite(tiny_onnx, tmp_path, value):
    result = triton(tiny_onnx[1], tmp_path / "repo", "--max-idle", value)
    one_line_error(result, "Invalid value for '--max-idle'", code=2)  # click's usage error
    with pytest.raises(InputError, match=r"--max-idle must be in \[0.001, 1e9\] seconds"):
        write_repository(tiny_onnx[1], tmp_path / "repo", max_idle_seconds=float(value))
    assert list(tmp_path.iterdir()) == []


def signed_edit(onnx_path, out, **changes):
    """A copy of a step graph whose config is edited and whose metadata digest is recomputed,
    so that it passes the digest and reaches the shape check."""
    import onnx

    proto = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in proto.metadata_props}
    props[KEY_CONFIG] = json.dumps({**json.loads(props[KEY_CONFIG]), **changes})
    props[KEY_DIGEST] = digest(props)  # signed again
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(out))
    return out


def test_shapes_that_disagree_with_the_metadata_are_refused_as_the_runtime_does(
    tiny_onnx, tmp_path
):
    path = signed_edit(tiny_onnx[1], tmp_path / "edited.onnx", vocab_size=300)
    with pytest.raises(ModelFileError, match="logits has shape") as refused:
        InfiniModel(path)  # the runtime's refusal: the same line
    one_line_error(triton(path, tmp_path / "repo"), str(refused.value))
    assert "but the config in its metadata says ['?', '?', 300]" in str(refused.value)
    assert [p.name for p in tmp_path.iterdir()] == ["edited.onnx"]

"""`infini triton`: the config parses with tritonclient's protobuf, and ONNX Runtime playing
Triton's sequence batcher (states paired alphabetically, uninitialised buffers with -1 dims set
to 1 at a sequence's start, the START control) gives the runtime's logits for interleaved
sequences."""

from __future__ import annotations

import json
import subprocess
import sys

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

pytest.importorskip("onnx")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


@pytest.fixture(scope="module")
def repo(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton")
    return write_repository(tiny_onnx[1], out, name="infini", instances=3), tiny_onnx[1]


def parse_config(model_dir):
    text = (model_dir / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_config_parses_and_declares_the_contract(repo):
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
    pairs = [(s.input_name, s.output_name) for s in config.sequence_batching.state]
    assert len(pairs) == 6
    # Triton pairs by alphabetical position: both orders must give the declared pairs
    assert list(zip(sorted(i for i, _ in pairs), sorted(o for _, o in pairs))) == sorted(pairs)
    session = ort.InferenceSession(str(repo[0] / "1" / "model.onnx"))
    graph_inputs = {i.name for i in session.get_inputs()}
    assert graph_inputs == {"input_ids", "START", *(i for i, _ in pairs)}
    assert {o.name for o in session.get_outputs()} == {"logits", *(o for _, o in pairs)}


class TritonLoop:
    """Triton's sequence batcher with implicit state, reduced to what matters here."""

    def __init__(self, model_dir):
        self.session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
        config = parse_config(model_dir)
        self.specs = {s.input_name: s for s in config.sequence_batching.state}
        inputs = sorted(s.input_name for s in config.sequence_batching.state)
        outputs = sorted(s.output_name for s in config.sequence_batching.state)
        self.pairing = dict(zip(outputs, inputs))  # by position, as Triton does
        self.states: dict[int, dict[str, np.ndarray]] = {}
        self.rng = np.random.default_rng(0)

    def infer(self, sequence: int, input_ids: list[int], start: bool) -> np.ndarray:
        if start:  # uninitialised buffers, every -1 dim set to 1
            self.states[sequence] = {
                name: self.rng.standard_normal([d if d > 0 else 1 for d in s.dims]).astype(
                    np.float32
                )
                * np.float32(1e30)
                for name, s in self.specs.items()
            }
            self.states[sequence]["INPUT_STATE__memory"].flat[0] = np.nan
        feeds = {
            "input_ids": np.array([input_ids], np.int64),
            "START": np.array([start]),
            **self.states[sequence],
        }
        names = [o.name for o in self.session.get_outputs()]
        out = dict(zip(names, self.session.run(names, feeds)))
        self.states[sequence] = {self.pairing[k]: v for k, v in out.items() if k in self.pairing}
        return out["logits"][0, -1]


def test_simulated_triton_loop_matches_the_runtime(repo):
    """Four interleaved sequences of prompts and one-token steps across segment boundaries
    (segment_len 32; a request never crosses one, as docs/serving.md asks of clients)."""
    loop = TritonLoop(repo[0])
    model = InfiniModel(repo[1], threads=1)
    N = model.config.segment_len
    streams = {seq: Stream(model) for seq in range(4)}
    rng = np.random.default_rng(1)
    for step in range(40):
        for seq, stream in streams.items():
            room = N - stream.tokens_seen % N
            n = int(rng.integers(1, room + 1)) if step % 3 == 0 else 1
            ids = rng.integers(0, 256, n).tolist()
            got = loop.infer(seq, ids, start=stream.tokens_seen == 0)
            want = stream.feed(ids)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert min(s.tokens_seen for s in streams.values()) > 2 * N  # commits happened


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

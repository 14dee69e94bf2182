"""The ONNX step graph (docs/design.md): numerics against PyTorch, contract, files, CLI.

The stream loop here drives ONNX Runtime directly (independent of infini_onnx.runtime and of
the exporter's own validation loop).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from infini_onnx import modeldir
from infini_onnx.cli.export_cmd import export_command
from infini_onnx.errors import ValidationError
from infini_onnx.export import exporter, validate
from infini_onnx.model import from_pretrained, init_model_dir
from infini_onnx.stepgraph import names
from infini_onnx.stepgraph.memory_path import memory_node_names
from infini_onnx.stepgraph.metadata import StepGraphInfo
from infini_onnx.stepgraph.names import MEMORY_PREFIX
from infini_onnx.stepgraph.state_spec import LATEST, MEMORY_INPUTS

FIXTURES = Path(__file__).parent / "fixtures"
VARIANTS = [("delta", True), ("linear", False), ("linear", True), ("delta", False)]
MEMORY = ("memory", "norm", "memory_acc", "norm_acc")
STATE = (*MEMORY, "past_key", "past_value")
OUTPUTS = ("logits", "new_key", "new_value", "memory_acc_out", "norm_acc_out")


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cache_dtype(sess: ort.InferenceSession) -> type:
    types = {i.name: i.type for i in sess.get_inputs()}
    return np.float16 if types["past_key"] == "tensor(float16)" else np.float32


def slots(config) -> int:
    """K: the ring's slots, W - 1 (N - 1 without a window; one unseen slot for W = 1), spelled
    here, not read from the spec."""
    return max((config.local_window or config.segment_len) - 1, 1)


def new_state(config, batch: int, cache, rows: int) -> dict[str, np.ndarray]:
    """A new stream: zero memory and a cache of `rows` rows."""
    L, G, d = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    memory, norm = np.zeros((batch, L, G, d, d), np.float32), np.zeros((batch, L, G, d), np.float32)
    empty = np.zeros((batch, L, G, rows, d), cache)
    return dict(memory=memory, norm=norm, memory_acc=memory, norm_acc=norm, past_key=empty,
                past_value=empty.copy())  # fmt: skip


def ort_stream(sess, config, ids: np.ndarray, chunks: list[int], on_call=None):
    """The format-2 runtime loop of docs/design.md: returns all logits [B, S, V] and the final
    state (its ring in slots p mod K, `position` the tokens seen)."""
    N, K, batch = config.segment_len, slots(config), ids.shape[0]
    state = dict(new_state(config, batch, cache_dtype(sess), K), position=0)
    logits = []
    for take in chunks:
        position = state["position"]
        assert position % N + take <= N, "a call must not cross a segment boundary"
        feeds = {k: v for k, v in state.items() if k != "position"}
        feeds.update(
            input_ids=ids[:, position : position + take],
            position=np.full(batch, position, np.int64),
            num_logits=np.array([take]),
        )
        out, key, value, memory_acc, norm_acc = sess.run(list(OUTPUTS), feeds)
        logits.append(out)
        ring_key, ring_value = state["past_key"].copy(), state["past_value"].copy()
        for i in range(take):  # later tokens overwrite earlier ones in the ring
            ring_key[:, :, :, (position + i) % K] = key[:, :, :, i]
            ring_value[:, :, :, (position + i) % K] = value[:, :, :, i]
        state.update(past_key=ring_key, past_value=ring_value, memory_acc=memory_acc,
                     norm_acc=norm_acc, position=position + take)  # fmt: skip
        if state["position"] % N == 0:  # segment complete: the memory commits, the ring stays
            state.update(memory=memory_acc, norm=norm_acc)
        if on_call:
            on_call(key.shape[3], state)
    return np.concatenate(logits, axis=1), state


def ort_stream_format_1(sess, config, ids: np.ndarray, chunks: list[int]) -> np.ndarray:
    """The format-1 runtime loop (a cache of the segment's tokens, emptied at the commit):
    all logits [B, S, V]."""
    state, logits, start = new_state(config, ids.shape[0], cache_dtype(sess), 0), [], 0
    for take in chunks:
        feeds = dict(state, input_ids=ids[:, start : start + take], num_logits=np.array([take]))
        out, key, value, mem_acc, norm_acc = sess.run(None, feeds)
        start += take
        logits.append(out)
        if key.shape[3] == config.segment_len:
            state = dict(memory=mem_acc, norm=norm_acc, memory_acc=mem_acc, norm_acc=norm_acc,
                         past_key=key[:, :, :, :0], past_value=value[:, :, :, :0])  # fmt: skip
        else:
            state.update(memory_acc=mem_acc, norm_acc=norm_acc, past_key=key, past_value=value)
    return np.concatenate(logits, axis=1)


@torch.no_grad()
def torch_stream(model, ids: np.ndarray, chunks: list[int]):
    state, logits, start = None, [], 0
    for take in chunks:
        out, state = model(torch.from_numpy(ids[:, start : start + take]), state)
        logits.append(out)
        start += take
    ref = {k: getattr(state, k).float().numpy() for k in STATE}
    return torch.cat(logits, 1).numpy(), dict(ref, position=state.tokens_seen)


def random_ids(batch: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 258, (batch, n)).astype(np.int64)


def rel(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref - got.astype(np.float32)).max() / np.abs(ref).max())


# --- numerics -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "memory_update,gqa,window",
    [(*v, "default") for v in VARIANTS] + [("delta", True, None), ("delta", True, 7)],
)
def test_stream_matches_pytorch(onnx_factory, memory_update, gqa, window):
    """Whole segments, a partial one, then decoding across a boundary; batch 2, distinct rows.
    Windows: W = N (the default), none (the current segment only, format 1's meaning) and
    W = 7 (a ring of 6, smaller than a call)."""
    overrides = {} if window == "default" else dict(local_window=window)
    model_dir, path = onnx_factory(memory_update, gqa, **overrides)
    model = from_pretrained(model_dir)
    N = model.config.segment_len
    assert model.config.local_window == (N if window == "default" else window)
    chunks = [N, N, N - 3] + [1] * 6
    ids = random_ids(2, sum(chunks))
    assert not np.array_equal(ids[0], ids[1])
    ref_logits, ref_state = torch_stream(model, ids, chunks)
    logits, state = ort_stream(session(path), model.config, ids, chunks)
    assert np.abs(ref_logits - logits).max() < 1e-4
    assert state["position"] == ref_state["position"] == sum(chunks)
    for name in MEMORY:
        assert rel(ref_state[name], state[name]) < 1e-5, name
    for name in ("past_key", "past_value"):
        assert state[name].shape[3] == slots(model.config)
        assert np.abs(ref_state[name] - state[name]).max() < 1e-4, name


def test_a_model_without_window_gives_its_format_1_logits(tmp_path):
    """A model without local_window (the current segment only), exported to format 2, gives the
    logits of the format-1 graph that format-1 infini-onnx exported from it (tests/fixtures):
    whole segments, a partial one, single tokens across a commit, then two more segments."""
    model_dir = tmp_path / "model"
    init_model_dir(model_dir, "tiny", seed=7, local_window=None)
    old = session(FIXTURES / "format1-tiny.onnx")
    meta = old.get_modelmeta().custom_metadata_map
    assert meta[names.KEY_FORMAT_VERSION] == "1"
    assert meta[names.KEY_MODEL_ID] == modeldir.model_id(model_dir)  # the fixture's model
    new = session(exporter.export_model(model_dir, tmp_path / "model.onnx"))
    config = modeldir.load_config(model_dir)
    N = config.segment_len
    chunks = [N, N - 3] + [1] * 6 + [N - 3, N - 4, 4]
    ids = random_ids(2, sum(chunks), seed=3)
    want = ort_stream_format_1(old, config, ids, chunks)
    got, _ = ort_stream(new, config, ids, chunks)
    diff = float(np.abs(want - got).max())
    assert diff < 2e-6 * np.abs(want).max(), diff  # float32 rounding only (measured 1.8e-7)


def step_inputs(model, batch: int, tokens: int, past: int, num_logits: int, seed: int = 1):
    args = exporter.example_inputs(model, batch, tokens, past, num_logits, seed=seed)
    return {name: t.numpy() for name, t in zip(LATEST.input_names, args, strict=True)}


@torch.no_grad()
def torch_step(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The reference's step on the graph's feeds (by name), its outputs in the graph's order."""
    args = {name: torch.from_numpy(v) for name, v in feeds.items() if name != "num_logits"}
    return [t.numpy() for t in model.step(**args, num_logits=int(feeds["num_logits"][0]))]


@pytest.mark.parametrize(
    "batch,tokens,past,num_logits,segments",
    [
        (3, 5, 7, 5, (5, 0, 1)),
        (3, 5, 7, 2, (5, 5, 5)),
        (1, 1, 0, 1, (0,)),
        (2, 4, 0, 10, (5, 2)),
        (1, 32, 0, 1, (5,)),
        (2, 1, 31, 1, (0, 9)),
    ],
)
def test_dynamic_shapes(tiny_onnx, batch, tokens, past, num_logits, segments):
    """Nothing is fixed at trace time (B=2, T=3, position 5N+2): other sizes, T=1, T=N,
    num_logits > T, and each row at its own position (row b after segments[b] segments and
    `past` tokens; at the stream's start the ring's slots hold no token yet)."""
    model_dir, path = tiny_onnx
    model = from_pretrained(model_dir)
    N, K = model.config.segment_len, slots(model.config)
    feeds = step_inputs(model, batch, tokens, past, num_logits)
    feeds["position"] = np.array(segments, np.int64) * N + past
    got = session(path).run(None, feeds)
    ref = torch_step(model, feeds)
    assert feeds["past_key"].shape == (batch, 2, 2, K, 16)
    assert got[0].shape == (batch, min(num_logits, tokens), 258)
    assert got[1].shape == got[2].shape == (batch, 2, 2, tokens, 16)  # the new rows only
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape
        assert np.abs(r - g).max() < 1e-4 * max(1.0, float(np.abs(r).max()))


def test_reference_evaluator(tiny_onnx):
    """The file is valid ONNX: the reference implementation of the standard runs it too, with
    ONNX Runtime's RotaryEmbedding given as numpy (its documented rotate_half semantics)."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class RotaryEmbedding(OpRun):
        op_domain = "com.microsoft"

        def _run(self, x, positions, cos, sin, interleaved=0, **_):
            assert interleaved == 0
            half = x.shape[-1] // 2
            c, s = cos[positions][:, None], sin[positions][:, None]  # [B, 1, S, d/2]
            x1, x2 = x[..., :half], x[..., half:]
            return (np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1).astype(x.dtype),)

    model_dir, path = tiny_onnx
    model = from_pretrained(model_dir)
    feeds = step_inputs(model, batch=2, tokens=3, past=2, num_logits=2)
    got = ReferenceEvaluator(str(path), new_ops=[RotaryEmbedding]).run(None, feeds)
    for r, g in zip(torch_step(model, feeds), got, strict=True):
        assert r.shape == g.shape
        assert np.abs(r - g).max() < 1e-4


def test_state_is_constant_size_over_50_segments(tiny_onnx):
    """The state has the same shapes at every one of 50 commits, its ring K slots; each call
    returns its T new rows only, however long the stream."""
    model_dir, path = tiny_onnx
    config = from_pretrained(model_dir).config
    N = config.segment_len
    # Alternate whole-segment calls with segments fed as a chunk plus single tokens.
    chunks = [c for s in range(50) for c in ([N] if s % 2 == 0 else [N - 4, 1, 1, 1, 1])]
    rows, shapes = [], []

    def on_call(new_rows, state):
        rows.append(new_rows)
        if state["position"] % N == 0:
            shapes.append({k: np.shape(v) for k, v in state.items()})

    _, state = ort_stream(session(path), config, random_ids(1, sum(chunks)), chunks, on_call)
    assert rows == chunks
    assert len(shapes) == 50 and all(s == shapes[0] for s in shapes)
    assert shapes[0]["past_key"] == shapes[0]["past_value"] == (1, 2, 2, slots(config), 16)
    assert state["position"] == 50 * N
    assert all(np.isfinite(v).all() for v in state.values())


# --- the file -------------------------------------------------------------------------------


def io_types(path: Path) -> dict[str, tuple[int, list]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        v.name: (
            v.type.tensor_type.elem_type,
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )  # fmt: skip
        for v in [*graph.input, *graph.output]
    }


def test_contract_names_shapes_metadata(tiny_onnx):
    model_dir, path = tiny_onnx
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == list(LATEST.input_names)
    assert [o.name for o in proto.graph.output] == list(LATEST.output_names)
    F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert io_types(path) == {
        "input_ids": (I64, ["batch", "tokens"]),
        "past_key": (F, ["batch", 2, 2, 31, 16]),  # the ring: K = W - 1 = N - 1 slots
        "past_value": (F, ["batch", 2, 2, 31, 16]),
        "memory": (F, ["batch", 2, 2, 16, 16]),
        "norm": (F, ["batch", 2, 2, 16]),
        "memory_acc": (F, ["batch", 2, 2, 16, 16]),
        "norm_acc": (F, ["batch", 2, 2, 16]),
        "position": (I64, ["batch"]),
        "num_logits": (I64, [1]),
        "logits": (F, ["batch", "logits_len", 258]),
        "new_key": (F, ["batch", 2, 2, "tokens", 16]),  # the T new rows
        "new_value": (F, ["batch", 2, 2, "tokens", 16]),
        "memory_acc_out": (F, ["batch", 2, 2, 16, 16]),
        "norm_acc_out": (F, ["batch", 2, 2, 16]),
    }
    assert [(o.domain, o.version) for o in proto.opset_import] == [
        ("", exporter.DEFAULT_OPSET),
        ("com.microsoft", 1),  # RotaryEmbedding (export/contrib_ops.py)
    ]
    assert proto.ir_version == 8  # ONNX Runtime 1.15 and 1.16 refuse IR 10
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[names.KEY_FORMAT_VERSION] == "2"
    assert StepGraphInfo.from_props(meta, str(path)).spec is LATEST
    assert meta[names.KEY_VARIANT] == "fp32"
    assert json.loads(meta[names.KEY_CONFIG]) == json.loads((model_dir / "config.json").read_text())
    assert meta[names.KEY_TOKENIZER] == (model_dir / "tokenizer.json").read_text()
    assert len(meta[names.KEY_MODEL_ID]) == 64
    assert not any(n.metadata_props for n in proto.graph.node)  # no absolute paths
    onnx.checker.check_model(proto, full_check=True)


def test_rope_is_one_contrib_node_per_rotation(tiny_onnx):
    """Each layer rotates the ring's keys, the new keys and the queries with one ONNX Runtime
    RotaryEmbedding node each (docs/export.md, "Fusions"), not RoPE's six elementwise nodes."""
    model = onnx.load(str(tiny_onnx[1]))
    layers = json.loads({p.key: p.value for p in model.metadata_props}["infini.config"])[
        "num_hidden_layers"
    ]
    rotary = [n for n in model.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(rotary) == 3 * layers
    assert {n.domain for n in rotary} == {"com.microsoft"}
    assert sum(n.op_type == "Neg" for n in model.graph.node) < layers  # rotate_half's are gone


def test_memory_path_names(tiny_onnx):
    proto = onnx.load(str(tiny_onnx[1]))
    nodes = proto.graph.node
    names = memory_node_names(proto)
    assert names and all(n.startswith(MEMORY_PREFIX) for n in names)
    assert {n.name for n in nodes if n.name.startswith(MEMORY_PREFIX)} == set(names)
    memory = [n for n in nodes if n.name in set(names)]
    weights = {t.name for t in proto.graph.initializer}
    # Every Elu (sigma) and every non-shape use of the memory state is on the path ...
    assert sum(n.op_type == "Elu" for n in memory) == 2 * 2  # q and k, 2 layers
    for n in nodes:
        if n.op_type != "Shape" and set(n.input) & set(MEMORY_INPUTS):
            assert n.name in names, n.name
    # ... the memory MatMuls (activation x activation) are, no projection with a weight is.
    assert sum(n.op_type == "MatMul" for n in memory) >= 2 * 4
    assert not [n.name for n in memory if n.op_type == "MatMul" and n.input[1] in weights]
    producers = {o: n for n in nodes for o in n.output}
    assert all(producers[o].name in names for o in ("memory_acc_out", "norm_acc_out"))
    assert producers["logits"].name not in names
    # A graph whose names were rewritten gets the same nodes from the rule ...
    for n in nodes:
        n.name = n.name.removeprefix(MEMORY_PREFIX)
    assert memory_node_names(proto) == [n.removeprefix(MEMORY_PREFIX) for n in names]
    # ... also when its weights are Constant nodes instead of initializers (as some tools
    # write them): a projection by a Constant weight is still not on the memory path.
    constants = [
        onnx.helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t)
        for t in proto.graph.initializer
    ]
    rest = list(proto.graph.node)
    del proto.graph.initializer[:], proto.graph.node[:]
    proto.graph.node.extend(constants + rest)
    assert memory_node_names(proto) == [n.removeprefix(MEMORY_PREFIX) for n in names]


@pytest.mark.parametrize("tied", [False, True])
def test_weights_are_stacked_and_stored_once(model_dir_factory, tmp_path, tied):
    """q/k/v and gate/up are one weight MatMul each (docs/export.md, "Fusions"), and the file
    holds every weight once: the stacked copies replace the originals, a tied embedding is not
    duplicated for the LM head."""
    model_dir = model_dir_factory(tie_word_embeddings=tied)
    path = exporter.export_model(model_dir, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    weights = {t.name: t for t in proto.graph.initializer if len(t.dims) == 2}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    model = from_pretrained(model_dir)
    L = model.config.num_hidden_layers
    assert len(matmuls) == 4 * L + (0 if tied else 1)  # qkv, o, gate-up, down (+ LM head)
    stored = sum(int(np.prod(t.dims)) for t in weights.values())
    matrices = [p.numel() for p in model.parameters() if p.ndim == 2]
    assert 0 <= stored - sum(matrices) < min(matrices)  # (+ small constants such as gate views)


def test_export_is_deterministic(tiny_onnx, tmp_path):
    model_dir, path = tiny_onnx
    again = exporter.export_model(model_dir, tmp_path / "again.onnx")
    assert again.read_bytes() == path.read_bytes()


def test_fp16_structure_and_numerics(model_dir_factory, tmp_path):
    model_dir = model_dir_factory()
    path = exporter.export_model(model_dir, tmp_path / "fp16.onnx", dtype="fp16")
    F, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    types = {name: t for name, (t, _) in io_types(path).items()}
    I64 = onnx.TensorProto.INT64
    assert types == dict(
        input_ids=I64, position=I64, num_logits=I64,
        past_key=F16, past_value=F16, new_key=F16, new_value=F16, logits=F,
        memory=F, norm=F, memory_acc=F, norm_acc=F, memory_acc_out=F, norm_acc_out=F,
    )  # fmt: skip
    proto = onnx.load(str(path))
    assert {p.key: p.value for p in proto.metadata_props}[names.KEY_VARIANT] == "fp16"
    mem = set(memory_node_names(proto))
    read = {
        n.input[i] for n in proto.graph.node if n.op_type in ("MatMul", "Gather") for i in (0, 1)
    }
    weights = [t for t in proto.graph.initializer if t.name in read and t.data_type in (F, F16)]
    assert mem and len(weights) >= 5 and all(t.data_type == F16 for t in weights)
    # Numerics, loosely (ONNX Runtime CPU has the fp16 kernels this graph needs).
    model = from_pretrained(model_dir)
    N = model.config.segment_len
    chunks = [N, N - 3] + [1] * 6
    ids = random_ids(2, sum(chunks))
    ref_logits, ref_state = torch_stream(model, ids, chunks)
    logits, state = ort_stream(session(path), model.config, ids, chunks)
    assert np.abs(ref_logits - logits).max() < 1e-2
    for name in MEMORY:
        assert state[name].dtype == np.float32
        assert rel(ref_state[name], state[name]) < 1e-2, name


# --- the command ----------------------------------------------------------------------------


def test_cli_external_data_validated(model_dir_factory, tmp_path, tiny_onnx):
    """Forced external data on the tiny model; the pair loads from another directory."""
    model_dir, reference = tiny_onnx
    out = tmp_path / "a" / "model.onnx"
    result = CliRunner().invoke(export_command, [str(model_dir), str(out), "--external-data"])
    assert result.exit_code == 0, result.output
    for stage in ("load", "trace", "onnx.checker", "validate"):
        assert stage in result.output
    assert "max diffs: logits" in result.output
    data = out.with_name("model.onnx.data")
    assert data.stat().st_size > 100_000 and out.stat().st_size < 100_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    moved = tmp_path / "b"
    moved.mkdir()
    for f in (out, data):
        shutil.move(f, moved / f.name)
    onnx.checker.check_model(str(moved / "model.onnx"), full_check=True)
    feeds = step_inputs(from_pretrained(model_dir), batch=2, tokens=4, past=3, num_logits=4)
    got = session(moved / "model.onnx").run(None, feeds)
    for r, g in zip(session(reference).run(None, feeds), got, strict=True):
        np.testing.assert_array_equal(r, g)


@pytest.mark.parametrize(
    "args,message",
    [
        (["{missing}", "{out}"], "not a model directory"),
        (["{model}", "{out}", "--dtype", "int8"], "unsupported dtype 'int8'"),
        (["{model}", "{out}", "--opset", "17"], "unsupported opset 17"),
        (["{model}", "{model}/config.json/x.onnx"], "is not a directory"),
        (["{model}", "{model}"], "is a directory"),
    ],
)
def test_cli_errors_are_one_line(model_dir_factory, tmp_path, args, message):
    paths = dict(model=model_dir_factory(), missing=tmp_path / "nope", out=tmp_path / "o.onnx")
    result = CliRunner().invoke(export_command, [a.format(**paths) for a in args])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_validation_failure_leaves_no_file(tiny_onnx, tmp_path, monkeypatch):
    """Over tolerance: non-zero exit, one clear line, no OUT.onnx (trace reused for speed)."""
    model_dir, path = tiny_onnx
    monkeypatch.setattr(exporter, "trace", lambda model, opset: ir.load(path))
    monkeypatch.setitem(validate.TOLERANCES, "fp32", validate.Tolerance(0.0, 0.0))
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(export_command, [str(model_dir), str(out)])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: validation failed") and "logits differs by" in last
    assert list(tmp_path.iterdir()) == []


def test_progress_heartbeat():
    """A long stage is never silent: it reports while running, then its time."""
    import time

    from infini_onnx.export.stages import stage

    lines: list[str] = []
    with stage(lines.append, "trace", heartbeat_s=0.01) as s:
        time.sleep(0.05)
        s.detail = "ok"
    assert any(line.startswith("  ... still trace") for line in lines)
    assert lines[-1].startswith("trace: ") and lines[-1].endswith("s (ok)")


def test_validation_catches_a_graph_a_thousandth_off(tiny_onnx):
    """The exported graph against a reference whose logits are 0.1% larger (final norm x 1.001):
    an export that far off must fail, while the true reference passes."""
    model_dir, path = tiny_onnx
    model = from_pretrained(model_dir).eval()
    diffs = validate.validate_export(path, model)
    assert diffs["logits"] < 1e-5
    with torch.no_grad():
        model.model.norm.weight.mul_(1.001)
    with pytest.raises(ValidationError, match="logits differs by"):
        validate.validate_export(path, model)


def test_model_id_covers_config_and_every_weight_file(model_dir_factory, tmp_path):
    """Same config, other weights: another model, so its state files must not load here."""
    source = model_dir_factory()
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(source, a)
    shutil.copytree(source, b)
    assert modeldir.model_id(a) == modeldir.model_id(b) == modeldir.model_id(source)
    weights = next(b.glob("*.safetensors"))
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01  # one bit of the last weight
    weights.write_bytes(bytes(raw))
    assert modeldir.model_id(a) != modeldir.model_id(b)
    (b / "config.json").write_text((a / "config.json").read_text() + " ")
    weights.write_bytes((a / weights.name).read_bytes())
    assert modeldir.model_id(a) != modeldir.model_id(b)  # the config counts too

"""`infini triton`: a Triton model repository whose server keeps each sequence's state.

Triton's sequence batcher with implicit state (onnxruntime backend) feeds a model's output
states back as its input states, so a client sends only `input_ids`. Its rules shape the
served graph (docs/serving.md, "Triton"):

- output states are paired with input states by position in alphabetical order of their names,
  so the pairs are INPUT_STATE__<name> / OUTPUT_STATE__<name>, which sort alike;
- a pair is copied back after every request, unconditionally: the runtime loop's rules of the
  graph's format (stepgraph/state_spec.py: outputs replace inputs, new rows go into the window
  ring, the commit at a completed segment) happen inside the graph;
- at a sequence's start the state buffers are uninitialised, each -1 dim set to 1: the graph
  takes the START control and zeroes its state itself (Where, so garbage NaN cannot leak).

The step graph is wrapped, not changed: new nodes compute its original state inputs from the
INPUT_STATE__ tensors and START, and the OUTPUT_STATE__ tensors from its outputs. Format 2's
state has a fixed size (the ring and the position are states too); format 1's cache grows.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from infini_onnx.atomic import atomic_output
from infini_onnx.errors import InfiniError, InputError, ModelFileError
from infini_onnx.stepgraph.files import data_file_name
from infini_onnx.stepgraph.metadata import StepGraphInfo, check_io, check_shapes
from infini_onnx.stepgraph.state_spec import EMPTY, KEEP, RING, window_slots

START = "START"
INPUT_PREFIX, OUTPUT_PREFIX = "INPUT_STATE__", "OUTPUT_STATE__"
TRITON_TYPES = {
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.INT64: "TYPE_INT64",
}
# A model name is one directory of the repository and a quoted string in config.pbtxt.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "1 to 128 of A-Z a-z 0-9 _ . -, not starting with . or -"


def check_options(name: str, instances: int, kind: str, max_idle_seconds: float) -> None:
    """Refuse, before any work, options that would write outside the repository or a config
    that Triton cannot read: InputError naming the option."""
    if not (isinstance(name, str) and NAME.fullmatch(name)):
        raise InputError(f"--name {name!r}: a model name is {NAME_RULE}")
    if not (isinstance(instances, int) and 1 <= instances <= 1024):
        raise InputError(f"--instances must be in [1, 1024], got {instances!r}")
    if kind not in ("cpu", "gpu"):
        raise InputError(f"--kind must be cpu or gpu, got {kind!r}")
    if not 0.001 <= max_idle_seconds <= 1e9:  # NaN too
        raise InputError(f"--max-idle must be in [0.001, 1e9] seconds, got {max_idle_seconds}")


def served_graph(model: onnx.ModelProto, info: StepGraphInfo) -> onnx.ModelProto:
    """The step graph wrapped for Triton's implicit state (see the module docstring)."""
    graph, spec = model.graph, info.spec
    N, K = info.config.segment_len, window_slots(info.config)
    inputs = {i.name: i for i in graph.input}
    before: list[onnx.NodeProto] = []  # computes the step graph's inputs
    after: list[onnx.NodeProto] = []  # reads its outputs

    def const(name: str, value) -> str:
        if not any(init.name == f"triton/{name}" for init in graph.initializer):
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), f"triton/{name}"))
        return f"triton/{name}"

    def node(where: list, op: str, ins: list[str], out: str, **attrs) -> str:
        name = out if out.startswith("triton/") else f"triton/{out}"  # unique, as outputs are
        where.append(helper.make_node(op, ins, [out], name=name, **attrs))
        return out

    zero_i, axis3 = const("zero_i", np.zeros(1, np.int64)), const("axis3", [3])
    names = [*spec.names, *([spec.position_input] if spec.position_input else [])]
    # At START the stream is new (no token, zero memory), whatever the buffers hold.
    if spec.position_input:
        position = spec.position_input
        pos = node(before, "Where", [START, zero_i, INPUT_PREFIX + position], position)
        cached = node(before, "Mod", [pos, const("segment_len", [N])], "triton/cached")
    else:  # format 1: the cache holds the current segment's tokens
        cache = INPUT_PREFIX + spec.cache_tensors()[0].name
        held = node(before, "Shape", [cache], "triton/held", start=3, end=4)
        cached = node(before, "Where", [START, zero_i, held], "triton/cached")
    for t in spec.tensors:
        if t.on_commit == EMPTY:  # format 1's cache: keep its P rows
            node(before, "Slice", [INPUT_PREFIX + t.name, zero_i, cached, axis3], t.name)
        else:
            zero = const(f"zero_{t.name}", _zero_of(inputs[t.name]))
            node(before, "Where", [START, zero, INPUT_PREFIX + t.name], t.name)
    node(before, "Constant", [], "num_logits", value=numpy_helper.from_array(np.ones(1, np.int64)))

    # After the call: the loop's rules, and the commit when the call completes the segment.
    tokens = node(after, "Shape", ["input_ids"], "triton/tokens", start=1, end=2)  # [1]
    total = node(after, "Add", [cached, tokens], "triton/total")
    complete = node(after, "Equal", [total, const("segment_len", [N])], "triton/full")
    if not spec.position_input:  # format 1's cache keeps P + T rows, none after the commit
        kept = node(after, "Where", [complete, zero_i, total], "triton/kept")
    for t in spec.tensors:
        out = OUTPUT_PREFIX + t.name
        if t.on_commit == EMPTY:
            node(after, "Slice", [t.output, zero_i, kept, axis3], out)
        elif t.on_call == RING:
            write = partial(node, after)
            _write_ring(write, const, t.name, t.output, pos, tokens, K, out)
        else:
            value = t.name if t.on_call == KEEP else t.output
            if t.on_commit:
                node(after, "Where", [complete, t.on_commit, value], out)
            else:
                node(after, "Identity", [value], out)
    if spec.position_input:
        node(after, "Add", [pos, tokens], OUTPUT_PREFIX + spec.position_input)

    state_inputs = [_renamed(inputs[name], INPUT_PREFIX + name) for name in names]
    outputs = {o.name: o for o in graph.output}
    state_outputs = [_renamed(inputs[name], OUTPUT_PREFIX + name) for name in names]
    for name, o in zip(names, state_outputs):  # a growing cache's length is its own
        if name in spec.names and spec.tensor(name).on_commit == EMPTY:
            o.type.tensor_type.shape.dim[3].dim_param = "kept"
    start = helper.make_tensor_value_info(START, TensorProto.BOOL, [1])
    new_inputs = [inputs["input_ids"], start, *state_inputs]
    new_outputs = [outputs["logits"], *state_outputs]
    del graph.input[:], graph.output[:]
    graph.input.extend(new_inputs)
    graph.output.extend(new_outputs)
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend([*before, *original, *after])
    return model


def _write_ring(node, const, ring: str, rows: str, pos: str, tokens: str, K: int, out: str):
    """out = the ring with the last min(T, K) new rows written at slots (position + i) mod K
    (the runtime's State does the same in numpy)."""
    name = f"triton/{ring}"
    slots_k = const("slots", [K])
    n = node("Min", [tokens, slots_k], f"{name}/n")  # [1]
    skip = node("Sub", [tokens, n], f"{name}/skip")
    kept = node("Slice", [rows, skip, tokens, const("axis3", [3])], f"{name}/rows")
    first = node("Add", [pos, skip], f"{name}/first")
    count = node("Squeeze", [n], f"{name}/count")
    steps = node("Range", [const("zero_s", np.int64(0)), count, const("one_s", np.int64(1))],
                 f"{name}/steps")  # fmt: skip
    slots = node("Mod", [node("Add", [first, steps], f"{name}/at"), slots_k], f"{name}/slots")
    index = node("Reshape", [slots, const("index_shape", [1, 1, 1, -1, 1])], f"{name}/index")
    index = node("Expand", [index, node("Shape", [kept], f"{name}/shape")], f"{name}/indices")
    node("ScatterElements", [ring, index, kept], out, axis=3)


def _zero_of(value: onnx.ValueInfoProto) -> np.ndarray:
    """A scalar zero of the input's element type (broadcast by Where)."""
    return np.zeros((), onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))


def _shapes(graph: onnx.GraphProto) -> dict[str, list[int | str | None]]:
    """Each input's and output's dims as check_shapes takes them (symbolic: str or None)."""

    def dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
        field = d.WhichOneof("value")  # dim_value, dim_param or neither
        return getattr(d, field) if field else None

    return {
        v.name: [dim(d) for d in v.type.tensor_type.shape.dim]
        for v in (*graph.input, *graph.output)
    }


def _renamed(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    copy.name = name
    dims = copy.type.tensor_type.shape.dim
    dims[0].ClearField("dim_param")
    dims[0].dim_value = 1  # max_batch_size 0: one sequence per request
    return copy


def config_pbtxt(
    name: str, served: onnx.ModelProto, info: StepGraphInfo, instances: int, kind: str,
    max_idle_seconds: float,
) -> str:  # fmt: skip
    """The model's config.pbtxt: the sequence batcher, START, the state pairs."""
    V = info.config.vocab_size
    states = []
    for value in served.graph.input:
        if not value.name.startswith(INPUT_PREFIX):
            continue
        t = value.type.tensor_type
        dims = ", ".join(str(d.dim_value) if d.HasField("dim_value") else "-1" for d in t.shape.dim)
        states.append(
            "    {\n"
            f'      input_name: "{value.name}"\n'
            f'      output_name: "{OUTPUT_PREFIX + value.name.removeprefix(INPUT_PREFIX)}"\n'
            f"      data_type: {TRITON_TYPES[t.elem_type]}\n"
            f"      dims: [ {dims} ]\n"
            "    }"
        )
    return (
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        "max_batch_size: 0\n"
        'input [\n  { name: "input_ids" data_type: TYPE_INT64 dims: [ 1, -1 ] }\n]\n'
        f'output [\n  {{ name: "logits" data_type: TYPE_FP32 dims: [ 1, 1, {V} ] }}\n]\n'
        "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {int(max_idle_seconds * 1e6)}\n"
        "  control_input [\n"
        f'    {{ name: "{START}" control [ {{ kind: CONTROL_SEQUENCE_START '
        "bool_false_true: [ false, true ] } ] }\n"
        "  ]\n"
        "  state [\n" + ",\n".join(states) + "\n  ]\n"
        "}\n"
        f"instance_group [\n  {{ count: {instances} kind: KIND_{kind.upper()} }}\n]\n"
    )


def write_repository(
    onnx_path: str | Path,
    repo: str | Path,
    name: str = "infini",
    instances: int = 2,
    kind: str = "cpu",
    max_idle_seconds: float = 600.0,
) -> Path:
    """Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx; returns REPO/NAME.

    Refuses (before writing anything) bad options, a graph that is not a step graph, and one
    whose shapes disagree with its metadata, as the runtime does."""
    check_options(name, instances, kind, max_idle_seconds)
    onnx_path, model_dir = Path(onnx_path), Path(repo) / name
    if not onnx_path.is_file():
        raise ModelFileError(f"{onnx_path}: no such model file")
    if model_dir.exists():
        raise InfiniError(f"{model_dir}: exists; remove it or choose another --name")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as e:  # onnx raises DecodeError, ValueError, ... on garbage
        raise ModelFileError(f"{onnx_path}: not an ONNX model ({type(e).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    info = StepGraphInfo.from_props(props, str(onnx_path))
    check_io([i.name for i in model.graph.input], [o.name for o in model.graph.output],
             str(onnx_path), info.spec)  # fmt: skip
    check_shapes(_shapes(model.graph), info.config, str(onnx_path), info.spec)
    served = served_graph(model, info)
    config = config_pbtxt(name, served, info, instances, kind, max_idle_seconds)
    out = model_dir / "1" / "model.onnx"
    with atomic_output(out, inputs=[onnx_path]) as tmp:
        large = served.ByteSize() >= 2_000_000_000
        onnx.save_model(served, tmp, save_as_external_data=large, location=data_file_name(out))
    with atomic_output(model_dir / "config.pbtxt") as tmp:
        tmp.write_text(config)
    return model_dir

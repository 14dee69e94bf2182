"""`infini triton`: a Triton model repository whose server keeps each sequence's state.

Triton's sequence batcher with implicit state (onnxruntime backend) feeds a model's output
states back as its input states, so a client sends only `input_ids`. Its rules shape the
served graph (docs/serving.md, "Triton"):

- output states are paired with input states by position in alphabetical order of their names,
  so the pairs are INPUT_STATE__<name> / OUTPUT_STATE__<name>, which sort alike;
- a pair is copied back after every request, unconditionally: the segment-boundary commit
  (accumulators become the memory, the cache empties) happens inside the graph;
- at a sequence's start the state buffers are uninitialised, each -1 dim set to 1: the graph
  takes the START control and zeroes its state itself (Where, so garbage NaN cannot leak).

The step graph is wrapped, not changed: new nodes compute its original state inputs from the
INPUT_STATE__ tensors and START, and the OUTPUT_STATE__ tensors from its outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from infini_onnx.errors import InfiniError, InputError, ModelFileError
from infini_onnx.stepgraph.files import atomic_output, data_file_name
from infini_onnx.stepgraph.metadata import StepGraphInfo, check_io, check_shapes
from infini_onnx.stepgraph.names import CACHE_INPUTS, STATE_TENSORS

START = "START"
INPUT_PREFIX, OUTPUT_PREFIX = "INPUT_STATE__", "OUTPUT_STATE__"
# What each state becomes after a call, before the commit: name -> the step graph's output.
NEXT_STATE = {
    "memory": "memory",  # unchanged until the segment completes
    "norm": "norm",
    "memory_acc": "memory_acc_out",
    "norm_acc": "norm_acc_out",
    "past_key": "present_key",
    "past_value": "present_value",
}
COMMITTED = {"memory": "memory_acc_out", "norm": "norm_acc_out"}  # at a completed segment
TRITON_TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16"}
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
    graph = model.graph
    N = info.config.segment_len
    inputs = {i.name: i for i in graph.input}
    nodes: list[onnx.NodeProto] = []

    consts: set[str] = set()

    def const(name: str, value) -> str:
        if name not in consts:
            consts.add(name)
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), f"triton/{name}"))
        return f"triton/{name}"

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=f"triton/{out}", **attrs))
        return out

    zero_f, zero_i = const("zero_f", np.float32(0)), const("zero_i", np.zeros(1, np.int64))
    # At START the cache holds no token and the memory is zero, whatever the buffers hold.
    past_in = INPUT_PREFIX + CACHE_INPUTS[0]
    held = node("Shape", [past_in], "triton/held", start=3, end=4)  # [1]
    cached = node("Where", [START, zero_i, held], "triton/cached")
    for name in STATE_TENSORS:
        if name in CACHE_INPUTS:
            node("Slice", [INPUT_PREFIX + name, zero_i, cached, const("axis3", [3])], name)
        else:
            node("Where", [START, zero_f, INPUT_PREFIX + name], name)
    node("Constant", [], "num_logits", value=numpy_helper.from_array(np.ones(1, np.int64)))
    # After the call: the commit when P + T completes the segment.
    tokens = node("Shape", ["input_ids"], "triton/tokens", start=1, end=2)
    total = node("Add", [cached, tokens], "triton/total")
    complete = node("Equal", [total, const("segment_len", np.array([N], np.int64))], "triton/full")
    keep = node("Where", [complete, zero_i, total], "triton/keep")
    for name, nxt in NEXT_STATE.items():
        out = OUTPUT_PREFIX + name
        if name in CACHE_INPUTS:
            node("Slice", [nxt, zero_i, keep, const("axis3", [3])], out)
        elif name in COMMITTED:
            node("Where", [complete, COMMITTED[name], nxt], out)
        else:
            node("Identity", [nxt], out)

    state_inputs = [_renamed(inputs[name], INPUT_PREFIX + name) for name in STATE_TENSORS]
    outputs = {o.name: o for o in graph.output}
    state_outputs = [_renamed(inputs[name], OUTPUT_PREFIX + name) for name in STATE_TENSORS]
    for o in state_outputs:  # the cache's length is its own (it empties at a commit)
        if o.name.removeprefix(OUTPUT_PREFIX) in CACHE_INPUTS:
            o.type.tensor_type.shape.dim[3].dim_param = "kept"
    start = helper.make_tensor_value_info(START, TensorProto.BOOL, [1])
    new_inputs = [inputs["input_ids"], start, *state_inputs]
    new_outputs = [outputs["logits"], *state_outputs]
    del graph.input[:], graph.output[:]
    graph.input.extend(new_inputs)
    graph.output.extend(new_outputs)
    # topological order: the OUTPUT_STATE__ nodes read the step graph's outputs, the other
    # new nodes feed its inputs
    after = [n for n in nodes if n.output[0].startswith(OUTPUT_PREFIX)]
    before = [n for n in nodes if n not in after]
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend([*before, *original, *after])
    return model


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
        dims = ", ".join(str(d.dim_value) if d.dim_value else "-1" for d in t.shape.dim)
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
             str(onnx_path))  # fmt: skip
    check_shapes(_shapes(model.graph), info.config, str(onnx_path))
    served = served_graph(model, info)
    config = config_pbtxt(name, served, info, instances, kind, max_idle_seconds)
    out = model_dir / "1" / "model.onnx"
    with atomic_output(out, inputs=[onnx_path]) as tmp:
        large = served.ByteSize() >= 2_000_000_000
        onnx.save_model(served, tmp, save_as_external_data=large, location=data_file_name(out))
    with atomic_output(model_dir / "config.pbtxt") as tmp:
        tmp.write_text(config)
    return model_dir

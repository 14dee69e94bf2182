"""Reading an fp32 step graph and planning what may be quantised: weight MatMuls and the
embedding.

The memory path (sigma, the products with M and z, the sums, the accumulators) is found by the
rule of `infini_onnx.stepgraph.memory_path`: everything downstream of the memory inputs and of
every sigma (Elu) node, up to the weight MatMuls. It stays float32 in every variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from infini_onnx.errors import ModelDirError, ModelFileError, QuantizeError
from infini_onnx.stepgraph.memory_path import memory_node_names
from infini_onnx.stepgraph.metadata import StepGraphInfo, check_io
from infini_onnx.stepgraph.state_spec import MEMORY_OUTPUTS

# An RMSNorm's statistics, in graph order (the Reciprocal only in graphs of infini-onnx 0.1).
NORM_STATISTICS = ("Pow", "ReduceMean", "Add", "Sqrt", "Reciprocal")
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QLinearMatMul",
        "MatMulNBits",
        "GatherBlockQuantized",
    }
)


@dataclass(frozen=True)
class GraphPlan:
    """Which nodes a quantiser may touch and which it must leave float32."""

    weight_matmuls: tuple[str, ...]  # MatMul nodes whose B input is an initializer
    embedding: str | None  # the Gather node reading the embedding table
    memory_path: frozenset[str]  # nodes on the memory path: never quantised
    memory_matmuls: tuple[str, ...]  # the activation x activation MatMuls of the memory path
    norm_statistics: frozenset[str]  # RMSNorm's mean(x^2) .. sqrt chains (float32 in fp16)


def load_step_graph(path: str | Path) -> tuple[onnx.ModelProto, StepGraphInfo]:
    """Load an fp32 step graph and its metadata; refuse anything else with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError, ValueError, ... on garbage
        raise QuantizeError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    try:
        info = StepGraphInfo.from_props({p.key: p.value for p in model.metadata_props}, str(path))
        check_io(
            [i.name for i in model.graph.input],
            [o.name for o in model.graph.output],
            str(path),
            info.spec,
        )
    except (ModelFileError, ModelDirError) as e:  # not a step graph, or its config is bad
        raise QuantizeError(str(e)) from None
    if info.variant != "fp32" or any(n.op_type in QUANTIZED_OPS for n in model.graph.node):
        raise QuantizeError(f"{path}: already a {info.variant} variant; quantize the fp32 export")
    return model, info


def plan_graph(model: onnx.ModelProto) -> GraphPlan:
    """Classify the nodes of a step graph (every node must have a unique name)."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    float_tables = {
        i.name
        for i in graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
    }
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def is_weight_matmul(node: onnx.NodeProto) -> bool:
        return node.op_type == "MatMul" and node.input[1] in constants

    memory_names = set(memory_node_names(model))
    path = {n.name: n for n in graph.node if n.name in memory_names}

    produced = {o for node in path.values() for o in node.output}
    if not all(o in produced for o in MEMORY_OUTPUTS):
        raise QuantizeError("not an infini step graph: the memory path does not reach the state")
    weight_matmuls = tuple(n.name for n in graph.node if is_weight_matmul(n))
    tables = [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in float_tables]
    return GraphPlan(
        norm_statistics=frozenset(_norm_statistics(graph.node, consumers)),
        weight_matmuls=weight_matmuls,
        embedding=tables[0] if len(tables) == 1 else None,
        memory_path=frozenset(path),
        memory_matmuls=tuple(n.name for n in path.values() if n.op_type == "MatMul"),
    )


def _norm_statistics(
    nodes: list[onnx.NodeProto], consumers: dict[str, list[onnx.NodeProto]]
) -> list[str]:
    """The nodes of every RMSNorm from Pow(x, 2) to Sqrt(mean + eps), and the Reciprocal after
    it in graphs of infini-onnx 0.1 (which wrote x * rsqrt(...), not x / sqrt(...))."""
    found = []
    for node in nodes:
        if node.op_type != "Pow":
            continue
        chain = [node]
        for op in NORM_STATISTICS[1:]:
            nxt = consumers.get(chain[-1].output[0], [])
            if len(nxt) != 1 or nxt[0].op_type != op:
                break
            chain.append(nxt[0])
        if len(chain) >= 4:  # up to Sqrt at least
            found += [n.name for n in chain]
    return found

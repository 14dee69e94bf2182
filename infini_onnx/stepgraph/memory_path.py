"""Find and name the Infini-attention memory path of a step graph (pure Python).

The memory path is the float32 math on the compressive memory: the feature map sigma
(Elu + 1), the reads and writes with M and z, the accumulators and the gate mix. Quantisers
must keep it float (docs/design.md, "The memory-path rule"), so the exporter prefixes those
nodes' names with MEMORY_PREFIX and `memory_node_names` lists them.

Rule: start from the state inputs `memory`, `norm`, `memory_acc`, `norm_acc` and from every
Elu output, and follow data flow forward. The walk does not enter Shape/Size (shape-only use)
and stops at a MatMul/Gemm with a constant right-hand side (a weight: o_proj), so the
projections and the rest of the network are never part of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infini_onnx.stepgraph.names import MEMORY_PREFIX
from infini_onnx.stepgraph.state_spec import MEMORY_INPUTS

if TYPE_CHECKING:
    import onnx

_SEED_OPS = frozenset({"Elu"})
_SHAPE_OPS = frozenset({"Shape", "Size"})
_WEIGHT_OPS = frozenset({"MatMul", "Gemm", "MatMulNBits", "MatMulInteger", "QLinearMatMul"})


@dataclass(frozen=True)
class NodeRef:
    """The part of a node the walk needs (from an onnx.NodeProto or an onnx_ir.Node)."""

    op_type: str
    inputs: Sequence[str]
    outputs: Sequence[str]


def find_memory_path(nodes: Sequence[NodeRef], constants: Iterable[str]) -> list[int]:
    """Indices (in `nodes`) of the memory-path nodes."""
    constants = set(constants)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.inputs:
            consumers.setdefault(name, []).append(i)
    seeds = [i for i, n in enumerate(nodes) if n.op_type in _SEED_OPS]
    frontier = [i for name in MEMORY_INPUTS for i in consumers.get(name, [])] + seeds
    found: set[int] = set()
    while frontier:
        i = frontier.pop()
        node = nodes[i]
        if i in found or node.op_type in _SHAPE_OPS:
            continue
        if node.op_type in _WEIGHT_OPS and len(node.inputs) > 1 and node.inputs[1] in constants:
            continue
        found.add(i)
        frontier.extend(j for out in node.outputs for j in consumers.get(out, []))
    return sorted(found)


def _proto_refs(graph: onnx.GraphProto) -> tuple[list[NodeRef], set[str]]:
    nodes = [NodeRef(n.op_type, list(n.input), list(n.output)) for n in graph.node]
    constants = {t.name for t in graph.initializer}
    constants.update(n.output[0] for n in graph.node if n.op_type == "Constant")
    return nodes, constants


def memory_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the memory-path nodes of a step graph, for quantisers' `nodes_to_exclude`.

    Exported graphs carry MEMORY_PREFIX on those names; for a graph without any prefixed
    node (e.g. rewritten by another tool) the path is found again with the rule above.
    """
    names = [n.name for n in model.graph.node if n.name.startswith(MEMORY_PREFIX)]
    if names:
        return names
    nodes, constants = _proto_refs(model.graph)
    return [model.graph.node[i].name for i in find_memory_path(nodes, constants)]

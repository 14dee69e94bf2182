"""Turn the traced graph into a step-graph file (docs/design.md), in onnx_ir (any size).

- IR version: the lowest one the opset allows, so that older ONNX Runtime builds load it
  (torch writes IR 10, which ORT < 1.17 refuses).
- Node metadata (stack traces with absolute paths) dropped: the bytes depend only on the input.
- Memory-path nodes renamed with MEMORY_PREFIX.
- Output dimensions named after the contract (`logits_len`, `tokens`: state_spec.DYNAMIC_DIMS)
  instead of the tracer's symbolic expressions.
- Weights the model stacks at run time (the fused q/k/v and gate/up projections) folded into
  one initializer each, so the file holds each weight once and the quantisers see a plain
  MatMul of an initializer (docs/export.md, "Fusions").
- The model metadata (stepgraph.metadata).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnxscript.optimizer import fold_constants

from infini_onnx.errors import InfiniError
from infini_onnx.stepgraph.memory_path import NodeRef, find_memory_path
from infini_onnx.stepgraph.names import MEMORY_PREFIX
from infini_onnx.stepgraph.state_spec import DYNAMIC_DIMS, LATEST


def finalize(model: ir.Model, opset: int, metadata: dict[str, str]) -> int:
    """Apply the fixes above in place; returns the number of memory-path nodes."""
    got = model.opset_imports.get("")
    if got != opset:
        raise InfiniError(f"unsupported opset {opset}: the exporter produced opset {got}")
    fold_weights(model)
    model.ir_version = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    nodes = list(model.graph)
    for node in nodes:
        node.metadata_props.clear()
    memory = name_memory_path(model.graph, nodes)
    io_dims = LATEST.io_dims()
    for value in model.graph.outputs:
        dims = list(value.shape)
        for axis, dim in enumerate(io_dims[value.name]):
            if dim in DYNAMIC_DIMS:
                dims[axis] = ir.SymbolicDim(DYNAMIC_DIMS[dim])
        value.shape = ir.Shape(dims)
    model.metadata_props.update(metadata)
    return memory


def fold_weights(model: ir.Model) -> None:
    """Fold the Concat of weights that `stacked_linear` traces into one initializer. The
    optimizer of torch.onnx leaves it (its inputs pass the default size limit); the folder's
    output rule still refuses any fold that would grow the file (a weight read elsewhere too,
    such as a tied embedding, stays)."""
    fold_constants(model, should_fold=lambda node: True if node.op_type == "Concat" else None)


def name_memory_path(graph: ir.Graph, nodes: list[ir.Node]) -> int:
    """Prefix the memory-path nodes' names with MEMORY_PREFIX; returns how many."""
    refs = [
        NodeRef(
            n.op_type,
            [v.name if v is not None else "" for v in n.inputs],
            [v.name for v in n.outputs],
        )
        for n in nodes
    ]
    constants = set(graph.initializers)
    constants.update(n.outputs[0].name for n in nodes if n.op_type == "Constant")
    found = find_memory_path(refs, constants)
    for i in found:
        name = nodes[i].name or f"node_{i}"
        nodes[i].name = name if name.startswith(MEMORY_PREFIX) else MEMORY_PREFIX + name
    return len(found)

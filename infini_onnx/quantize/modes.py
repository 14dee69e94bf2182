"""One function per variant of the table (stepgraph/variants.py): fp32 step graph ->
quantised graph, the memory path left float32.

Every function gets the explicit node lists of a GraphPlan: only weight MatMuls (and, for
int8-static, the embedding Gather) are quantised; every memory-path node is excluded by name.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx.onnx_pb import TensorProto
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)
from onnxruntime.transformers.float16 import convert_float_to_float16

from infini_onnx.quantize.plan import GraphPlan
from infini_onnx.quantize.targets import Settings
from infini_onnx.stepgraph.state_spec import FLOAT32_IO

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
logging.getLogger("root").setLevel(logging.ERROR)  # ORT's "consider pre-processing" chatter


def _int8_nodes(plan: GraphPlan) -> list[str]:
    return [*plan.weight_matmuls, *([plan.embedding] if plan.embedding else [])]


def _via_file(run: Callable[[Path], None]) -> onnx.ModelProto:
    """Run an ORT quantiser that writes a file, and read the result back."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.onnx"
        run(out)
        return onnx.load(str(out))


def int8_static(
    model: onnx.ModelProto, plan: GraphPlan, s: Settings, calibration: CalibrationDataReader
) -> onnx.ModelProto:
    """QDQ int8, S8S8 symmetric (TensorRT, Jetson), activation ranges from calibration."""
    return _via_file(
        lambda out: quantize_static(
            model,
            out,
            calibration,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gather"],
            per_channel=s.per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=_int8_nodes(plan),
            nodes_to_exclude=sorted(plan.memory_path),
            extra_options={
                "MatMulConstBOnly": True,
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
            },
        )
    )


def weight_blocks(bits: int) -> Callable[[onnx.ModelProto, GraphPlan, Settings], onnx.ModelProto]:
    """Weight-only MatMulNBits of `bits` bits, symmetric, one scale per block_size weights. With
    accuracy_level 4 the activations are quantised to int8 per row and block, so the rows of a
    batch stay independent."""

    def quantize(model: onnx.ModelProto, plan: GraphPlan, s: Settings) -> onnx.ModelProto:
        config = DefaultWeightOnlyQuantConfig(
            block_size=s.block_size,
            is_symmetric=True,
            accuracy_level=s.accuracy_level,
            bits=bits,
            op_types_to_quantize=("MatMul",),
        )
        quantizer = MatMulNBitsQuantizer(
            model,
            nodes_to_include=list(plan.weight_matmuls),
            nodes_to_exclude=sorted(plan.memory_path),
            algo_config=config,
        )
        quantizer.process()
        return quantizer.model.model

    return quantize


def fp16(model: onnx.ModelProto, plan: GraphPlan, s: Settings) -> onnx.ModelProto:
    """Half-precision weights and activations; state, logits, the memory math and RMSNorm's
    statistics stay float32."""
    blocked = plan.memory_path | plan.norm_statistics
    half = convert_float_to_float16(
        model, keep_io_types=list(FLOAT32_IO), node_block_list=sorted(blocked)
    )
    _drop_round_trips(half, blocked)
    return half


def _drop_round_trips(model: onnx.ModelProto, float32_nodes: frozenset[str]) -> None:
    """Replace Cast(float32 -> float16 -> float32) pairs between float32 nodes by Identity.

    The converter casts each blocked node's output to float16 and back for the next blocked
    node; z and sigma(q) z pass 65504 on long streams and would become inf there.
    """
    graph = model.graph
    float32 = {o for n in graph.node if n.name in float32_nodes for o in n.output}
    float32 |= {i.name for i in graph.input if i.type.tensor_type.elem_type == FLOAT}
    producer = {o: n for n in graph.node for o in n.output}

    def cast_to(node: onnx.NodeProto | None, dtype: int) -> bool:
        return (
            node is not None
            and node.op_type == "Cast"
            and onnx.helper.get_attribute_value(node.attribute[0]) == dtype
        )

    for node in graph.node:
        first = producer.get(node.input[0]) if node.input else None
        if cast_to(node, FLOAT) and cast_to(first, FLOAT16) and first.input[0] in float32:
            node.op_type, node.input[0] = "Identity", first.input[0]
            del node.attribute[:]
    _remove_dead_casts(graph)


def _remove_dead_casts(graph: onnx.GraphProto) -> None:
    """Drop Cast nodes whose output nothing reads (repeated: chains of them)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


# variant name (stepgraph/variants.py) -> the function that writes it; int8-static also takes
# the calibration reader
PRODUCERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "fp16": fp16,
    "int8": weight_blocks(8),
    "int8-static": int8_static,
    "int4": weight_blocks(4),
}

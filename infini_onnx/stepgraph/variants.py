"""The variant table: every kind of step graph infini-onnx writes, in one place.

One entry per variant (as gguf keeps one table of its quantisation types) says what produces it,
the ops that carry its weights, whether the rows of a batch are independent, and the dtype of its
local-attention cache. The quantiser (`quantize/modes.py`), the CLI's `--mode` choices and the
runtime's batching read it; nothing else spells a variant's properties. Pure Python: the runtime
imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from infini_onnx.errors import ModelFileError


@dataclass(frozen=True)
class Variant:
    name: str  # the file's `infini.variant` metadata and `infini quantize --mode`
    produced_by: str  # the command that writes it
    weight_ops: tuple[str, ...]  # the ops that read its weight matrices
    weight_bits: int
    rows_independent: bool  # a batch row's outputs are those it would have alone
    cache_dtype: str  # past_key / past_value (the memory is float32 in every variant)
    summary: str  # what it is, for --help and docs/quantize.md


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "fp32",
            "infini export",
            ("MatMul",),
            32,
            True,
            "float32",
            "the exported graph",
        ),
        Variant(
            "fp16",
            "infini quantize --mode fp16 (or infini export --dtype fp16)",
            ("MatMul",),
            16,
            True,
            "float16",
            "float16 weights, activations and cache (GPUs)",
        ),
        Variant(
            "int8",
            "infini quantize --mode int8",
            ("MatMulNBits",),
            8,
            True,
            "float32",
            "8-bit weights, one scale per block of weights; activations quantised per row (CPU)",
        ),
        Variant(
            "int8-static",
            "infini quantize --mode int8-static",
            ("QuantizeLinear", "DequantizeLinear", "MatMul"),
            8,
            True,
            "float32",
            "QDQ S8S8, activation ranges calibrated on text (TensorRT, Jetson)",
        ),
        Variant(
            "int4",
            "infini quantize --mode int4",
            ("MatMulNBits",),
            4,
            True,
            "float32",
            "4-bit weights, one scale per block of weights (the smallest file)",
        ),
    )
}
QUANTIZE_MODES = tuple(name for name in VARIANTS if name != "fp32")  # `infini quantize --mode`


def variant(name: str, source: str) -> Variant:
    """The table entry of the variant a file names; ModelFileError for one this version does
    not know."""
    if name not in VARIANTS:
        raise ModelFileError(
            f"{source}: unknown variant {name!r} (this infini-onnx knows "
            f"{', '.join(VARIANTS)}); upgrade infini-onnx, or quantize the fp32 export again"
        )
    return VARIANTS[name]

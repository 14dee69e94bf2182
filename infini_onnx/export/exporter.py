"""Export one segment step of a model directory to the ONNX step graph (docs/design.md)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch
from torch import Tensor, nn
from torch.export import Dim

from infini_onnx import modeldir
from infini_onnx.atomic import atomic_output
from infini_onnx.errors import InfiniError, ValidationError
from infini_onnx.export.contrib_ops import translation_table
from infini_onnx.export.finalize import finalize
from infini_onnx.export.stages import stage
from infini_onnx.model import InfiniLlamaForCausalLM
from infini_onnx.stepgraph.files import data_file_name
from infini_onnx.stepgraph.metadata import StepGraphInfo
from infini_onnx.stepgraph.state_spec import DYNAMIC_DIMS, FLOAT32, LATEST, MEMORY_INPUTS

DEFAULT_OPSET = 18  # ONNX Runtime >= 1.15 loads it (docs/export.md)
MIN_OPSET = 18  # torch's exporter cannot go lower (it silently keeps 18)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# A protobuf file cannot exceed 2 GiB: larger weights always go to OUT.onnx.data.
EXTERNAL_DATA_BYTES = 1_800_000_000


class StepGraph(nn.Module):
    """The step function with `num_logits` as a tensor input, as the graph takes it (its
    inputs in the order of the spec's input_names)."""

    def __init__(self, model: InfiniLlamaForCausalLM):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids,
        past_key,
        past_value,
        memory,
        norm,
        memory_acc,
        norm_acc,
        position,
        num_logits: Tensor,
    ):
        n = num_logits[0].item()  # becomes a plain Slice start in ONNX
        torch._check(n >= 1)
        return self.model.step(
            input_ids,
            past_key,
            past_value,
            memory,
            norm,
            memory_acc,
            norm_acc,
            position,
            num_logits=n,
        )


def example_inputs(
    model: InfiniLlamaForCausalLM,
    batch: int,
    tokens: int,
    past: int,
    num_logits: int = 1,
    seed: int = 0,
) -> tuple[Tensor, ...]:
    """Random step-graph inputs in the order of LATEST.input_names (state scaled like a real
    stream's: positive norm; `past` tokens of the current segment seen, after 5 segments)."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    state = {}
    for t in LATEST.tensors:
        shape = LATEST.shape(t.dims, c, B=batch)
        dtype = torch.float32 if t.dtype == FLOAT32 else model.dtype
        state[t.name] = torch.randn(shape, generator=g).to(dtype)
    memory, norm, memory_acc, norm_acc = MEMORY_INPUTS
    state[norm] = state[norm].abs() * 10
    state[memory_acc] = state[memory] + state[memory_acc]
    state[norm_acc] = state[norm] + state[norm_acc].abs()
    state[LATEST.position_input] = torch.full((batch,), 5 * c.segment_len + past)
    state["input_ids"] = torch.randint(0, c.vocab_size, (batch, tokens), generator=g)
    state["num_logits"] = torch.tensor([num_logits])
    return tuple(state[name] for name in LATEST.input_names)


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    return onnx.defs.onnx_opset_version()


def check_options(dtype: str, opset: int) -> None:
    """Refuse an unsupported dtype or opset before any work."""
    if dtype not in DTYPES:
        raise InfiniError(f"unsupported dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    if not MIN_OPSET <= opset <= max_opset():
        raise InfiniError(f"unsupported opset {opset} (choose {MIN_OPSET} to {max_opset()})")


@contextmanager
def _quiet_torch():
    """Hide torch.onnx's warnings and log lines (torchvision missing, ...) from the output."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def trace_module(
    module: nn.Module,
    args: tuple[Tensor, ...],
    dynamic_shapes: dict[str, Any],
    input_names: list[str],
    output_names: list[str],
    opset: int,
) -> ir.Model:
    """torch.onnx (dynamo) export of `module` called on `args`, torch's chatter hidden. Trace
    with every dynamic size >= 2 (torch.export specialises 0 and 1)."""
    with _quiet_torch():
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            custom_translation_table=translation_table(),
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    return program.model


def trace(model: InfiniLlamaForCausalLM, opset: int) -> ir.Model:
    """The step graph with its dynamic dims (the spec's: batch and new tokens)."""
    dims = {dim: Dim(name) for dim, name in DYNAMIC_DIMS.items()}
    io_dims = LATEST.io_dims()
    dynamic_shapes = {
        name: {i: dims[dim] for i, dim in enumerate(io_dims[name]) if dim in dims} or None
        for name in LATEST.input_names
    }
    args = example_inputs(model, batch=2, tokens=3, past=2)
    return trace_module(
        StepGraph(model),
        args,
        dynamic_shapes,
        list(LATEST.input_names),
        list(LATEST.output_names),
        opset,
    )


def export_model(
    model_dir: str | Path,
    out_path: str | Path,
    opset: int = DEFAULT_OPSET,
    log: Callable[[str], None] = lambda msg: None,
    *,
    dtype: str = "fp32",
    external_data: bool = False,
    validate: bool = False,
) -> Path:
    """Export the step graph of `model_dir` to `out_path`, written atomically.

    dtype: "fp32" or "fp16" (weights, activations and cache; memory math and state float32).
    external_data: always put the weights in OUT.onnx.data (they go there anyway past
    EXTERNAL_DATA_BYTES). validate: compare with PyTorch in ONNX Runtime before the file is
    put in place (raises ValidationError). The graph always passes onnx.checker (full check).
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    check_options(dtype, opset)
    with atomic_output(out_path, inputs=modeldir.loaded_files(model_dir)) as tmp_path:
        with stage(log, f"load {model_dir} ({dtype})") as s:
            model = InfiniLlamaForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype])
            s.detail = f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
        with stage(log, f"trace step graph (opset {opset})"):
            onnx_model = trace(model, opset)
        with stage(log, "finalize graph") as s:
            info = StepGraphInfo(
                model.config,
                dtype,
                modeldir.model_id(model_dir),
                modeldir.tokenizer_text(model_dir),
                gates=[layer.self_attn.gate.tolist() for layer in model.model.layers],
            )
            n = finalize(onnx_model, opset, info.to_props())
            s.detail = f"{n} memory-path nodes"
        with stage(log, "save") as s:
            weights = sum(v.const_value.nbytes for v in onnx_model.graph.initializers.values())
            external = external_data or weights > EXTERNAL_DATA_BYTES
            data = data_file_name(out_path) if external else None
            ir.save(onnx_model, tmp_path, external_data=data)
            s.detail = f"{weights / 1e6:.1f} MB of weights" + (f" in {data}" if data else "")
        with stage(log, "onnx.checker (full check)"):
            try:
                onnx.checker.check_model(str(tmp_path), full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
                first = str(e).strip().splitlines()[0]
                raise InfiniError(f"exported graph fails onnx.checker: {first}") from None
        if validate:
            _validate(tmp_path, model, dtype, log, out_path)
    return out_path


def _validate(path: Path, model: InfiniLlamaForCausalLM, dtype: str, log, out_path: Path) -> None:
    from infini_onnx.export.validate import device_for, format_diffs, validate_export  # runtime

    with stage(log, "validate against PyTorch in ONNX Runtime") as s:
        try:
            diffs = validate_export(path, model, dtype, device_for(dtype))
        except ValidationError as e:
            raise ValidationError(f"{e} ({out_path} not written)") from None
        s.detail = f"max diffs: {format_diffs(diffs)}"

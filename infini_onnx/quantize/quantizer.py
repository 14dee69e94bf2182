"""fp32 step graph -> int8 / int8-static / int4 / fp16 variant, with its accuracy report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from infini_onnx.atomic import atomic_output, check_output
from infini_onnx.errors import QuantizeError
from infini_onnx.quantize import modes
from infini_onnx.quantize.accuracy import Report, compare, file_bytes
from infini_onnx.quantize.calibration import CarriedStateReader
from infini_onnx.quantize.corpus import token_stream
from infini_onnx.quantize.plan import load_step_graph, plan_graph
from infini_onnx.quantize.targets import Settings
from infini_onnx.runtime import InfiniModel, Stream
from infini_onnx.stepgraph.files import data_file_name, graph_files

CALIB_SEED, EVAL_SEED = 1, 2  # generated calibration text and the held-out stream differ
_PROTOBUF_LIMIT = 1 << 31


def quantize_model(
    in_path: str | Path,
    out_path: str | Path,
    settings: Settings,
    calib: str | Path | None = None,
    calib_segments: int = 16,
    log: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Write the variant of the fp32 graph `in_path` to `out_path` (atomically).

    The metadata is copied with `infini.variant` set to the mode. int8-static calibrates on
    `calib_segments` segments of `calib` (a text file) or of generated text.
    """
    check_output(out_path, graph_files(in_path), QuantizeError)  # before any work
    model, info = load_step_graph(in_path)
    _check_runs(in_path, f"{in_path}: the input")
    if settings.mode == "int8-static":  # a bad calibration file is refused before the work
        reader = _calibration(in_path, calib, calib_segments)
    name_nodes(model)
    plan = plan_graph(model)
    log(
        f"{len(plan.weight_matmuls)} weight MatMuls to quantise; {len(plan.memory_path)} "
        f"memory-path nodes ({len(plan.memory_matmuls)} MatMuls) kept float32"
    )
    produce = modes.PRODUCERS[settings.mode]
    if settings.mode == "int8-static":
        result = produce(model, plan, settings, reader)
    else:
        result = produce(model, plan, settings)
    props = {p.key: p.value for p in model.metadata_props}  # keys of other tools kept
    props.update(dataclasses.replace(info, variant=settings.mode).to_props())
    del result.metadata_props[:]
    onnx.helper.set_model_props(result, props)
    return save_atomic(result, Path(out_path), graph_files(in_path), settings.mode)


def _calibration(
    in_path: str | Path, calib: str | Path | None, calib_segments: int
) -> CarriedStateReader:
    """The int8-static calibration feeds (lazy), its tokens read now (corpus.file_tokens)."""
    float_model = InfiniModel(in_path, quiet=True)
    tokens = token_stream(float_model, calib_segments, CALIB_SEED, calib)
    return CarriedStateReader(float_model, tokens)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name: the quantisers select and exclude nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def save_atomic(
    model: onnx.ModelProto, out_path: Path, inputs: list[Path] = (), variant: str = "variant"
) -> Path:
    """Write out_path (and, past 2 GB, its external data file `<name>.data`) complete or not at
    all, and only once the runtime has run a segment through it."""
    with atomic_output(out_path, error=QuantizeError, inputs=inputs) as tmp:
        if model.ByteSize() < _PROTOBUF_LIMIT:
            onnx.save_model(model, tmp)
        else:
            location = data_file_name(out_path)
            onnx.save_model(model, tmp, save_as_external_data=True, location=location)
        _check_runs(tmp, f"{out_path}: the {variant} variant (not written)")
    return out_path


def _check_runs(path: str | Path, what: str) -> None:
    """Load `path` in the runtime and feed it one segment; QuantizeError if anything fails."""
    try:
        model = InfiniModel(path, threads=1, quiet=True)
        Stream(model).feed(np.zeros(model.config.segment_len, np.int64))
    except Exception as e:  # the runtime's errors and ONNX Runtime's, which share no base
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizeError(f"{what} does not run in the runtime: {reason}") from None


def held_out_tokens(
    in_path: str | Path, segments: int = 32, text: str | Path | None = None
) -> np.ndarray:
    """The accuracy report's stream: `segments` segments of the text file `text` (bounded
    read, corpus.file_tokens) or of generated text, for the fp32 graph `in_path`."""
    model = InfiniModel(in_path, threads=1, quiet=True)
    return token_stream(model, segments, EVAL_SEED, text)


def accuracy_report(
    in_path: str | Path,
    out_path: str | Path,
    segments: int = 32,
    text: str | Path | None = None,
    threads: int | None = None,
    *,
    tokens: np.ndarray | None = None,
) -> Report:
    """Sizes of both files and the variant's accuracy on a held-out stream of `segments`
    (`tokens`, if already read by held_out_tokens)."""
    reference = InfiniModel(in_path, threads=threads, quiet=True)
    variant = InfiniModel(out_path, threads=threads, quiet=True)
    if tokens is None:
        tokens = token_stream(reference, segments, EVAL_SEED, text)
    accuracy = compare(reference, variant, tokens)
    return Report(
        variant=variant.variant,
        input_path=str(in_path),
        output_path=str(out_path),
        input_bytes=file_bytes(in_path),
        output_bytes=file_bytes(out_path),
        accuracy=accuracy,
    )

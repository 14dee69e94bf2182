"""The files of a step graph: OUT.onnx and its external data file, OUT.onnx.data (written
with infini_onnx.atomic, which keeps the pair whole)."""

from __future__ import annotations

from pathlib import Path


def data_file_name(out_path: Path) -> str:
    """The external data file beside OUT.onnx: OUT.onnx.data (a location relative to it)."""
    return out_path.name + ".data"


def graph_files(onnx_path: str | Path) -> list[Path]:
    """An .onnx file and its external data file: what no output may overwrite."""
    return [Path(onnx_path), Path(onnx_path).parent / data_file_name(Path(onnx_path))]

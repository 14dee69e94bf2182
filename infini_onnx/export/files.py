"""Atomic output: the .onnx (and its external data file) appear complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infini_onnx.errors import InfiniError


def data_file_name(out_path: Path) -> str:
    """The external data file beside OUT.onnx: OUT.onnx.data (a relative location)."""
    return out_path.name + ".data"


@contextmanager
def atomic_output(out_path: Path) -> Iterator[Path]:
    """Yield a temporary path with out_path's file name in a private directory beside it.

    Everything written there is renamed into place when the block succeeds (the external
    data file first, the .onnx last) and removed when it fails. Raises InfiniError at once
    when out_path's directory cannot be written, before any expensive work.
    """
    if out_path.is_dir():
        raise InfiniError(f"{out_path}: is a directory, expected an .onnx file path")
    blocking = next((p for p in out_path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise InfiniError(f"{out_path}: cannot write ({blocking} is not a directory)")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    except OSError as e:
        raise InfiniError(f"{out_path}: cannot write ({e.strerror or e})") from None
    try:
        yield tmp_dir / out_path.name
        written = sorted(tmp_dir.iterdir(), key=lambda p: p.name == out_path.name)
        for f in written:
            os.replace(f, out_path.parent / f.name)
    except OSError as e:
        raise InfiniError(f"{out_path}: cannot write ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

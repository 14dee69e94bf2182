"""Safe file writing: an output appears complete or not at all (every file infini-onnx writes).

A step graph may come with an external data file (`OUT.onnx.data`), so the writer works on a
private temporary directory beside the target: everything written there is fsynced and renamed
into place when the block succeeds (the target last), and removed when it fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infini_onnx.errors import InfiniError


def data_file_name(out_path: Path) -> str:
    """The external data file beside OUT.onnx: OUT.onnx.data (a location relative to it)."""
    return out_path.name + ".data"


@contextmanager
def atomic_output(out_path: str | Path, error: type[InfiniError] = InfiniError) -> Iterator[Path]:
    """Yield a temporary path with out_path's file name in a private directory beside it
    (`<name>.<random>.tmp/`, on the same file system so that the renames are atomic).

    Files written into that directory replace their namesakes beside out_path when the block
    succeeds. Missing parent directories are created. Any OSError, and a target that cannot be
    written (a directory, a parent that is a file), is raised as `error` naming out_path,
    before the block runs where possible.
    """
    out_path = Path(out_path)
    if out_path.is_dir():
        raise error(f"{out_path}: is a directory, expected a file path")
    blocking = next((p for p in out_path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise error(f"{out_path}: cannot write ({blocking} is not a directory)")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(
            tempfile.mkdtemp(prefix=f"{out_path.name}.", suffix=".tmp", dir=out_path.parent)
        )
    except OSError as e:
        raise error(f"{out_path}: cannot write ({e.strerror or e})") from None
    try:
        yield tmp_dir / out_path.name
        written = sorted(tmp_dir.iterdir(), key=lambda p: p.name == out_path.name)
        for f in written:
            _fsync(f)
        for f in written:
            os.replace(f, out_path.parent / f.name)
        _fsync(out_path.parent)  # make the renames durable
    except OSError as e:
        raise error(f"{out_path}: cannot write ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _fsync(path: Path) -> None:
    """fsync a file or directory (skipped where the platform does not allow it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Atomic file writing: every file infini-onnx writes appears complete or not at all.

A step graph may come with an external data file (`OUT.onnx.data`), so the writer works on a
private temporary directory beside the target: everything written there is fsynced and renamed
into place when the block succeeds (the target last), and removed when it fails. Outputs that
are not regular files, or are one of the inputs, are refused before any work.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from infini_onnx.errors import InfiniError
from infini_onnx.stepgraph.files import data_file_name

# atomic_output's private directories: <name>.<pid>.<random>.tmp
_TEMP_DIR = re.compile(r"(.+)\.(\d+)\.[a-z0-9_]{8}\.tmp")


def check_output(
    out_path: str | Path, inputs: Iterable[str | Path] = (), error: type[InfiniError] = InfiniError
) -> Path:
    """Refuse, before any long work, an output that cannot be written safely: anything but a
    regular file or a new path (a directory, a device node, a FIFO), the same file as one of
    `inputs`, a parent that is a file, or a directory where nothing can be created (probed by
    creating and removing a temporary directory)."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise error(f"{out_path}: is a directory, expected a file path")
    _check_replaceable(out_path, inputs, error)
    existing = next((p for p in out_path.parents if os.path.lexists(p)), Path("."))
    if not existing.is_dir():
        raise error(f"{out_path}: cannot write ({existing} is not a directory)")
    try:
        Path(tempfile.mkdtemp(prefix=".infini-probe.", dir=existing)).rmdir()
    except OSError as e:
        raise error(f"{out_path}: cannot write in {existing} ({e.strerror or e})") from None
    return out_path


@contextmanager
def atomic_output(
    out_path: str | Path, error: type[InfiniError] = InfiniError, inputs: Iterable[str | Path] = ()
) -> Iterator[Path]:
    """Yield a temporary path with out_path's file name in a private directory beside it
    (`<name>.<pid>.<random>.tmp/`, on the same file system so that the renames are atomic).

    The output is checked first (`check_output`, with `inputs`), and temporary directories
    that killed writers left for this name are removed. Files written into the directory
    replace their namesakes beside out_path when the block succeeds (the target last); on any
    failure they are removed and the previous files stay. Any OSError is raised as `error`
    naming out_path.
    """
    inputs = list(inputs)
    out_path = check_output(out_path, inputs, error)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_path.parent, out_path.name)
        tmp_dir = Path(
            tempfile.mkdtemp(
                prefix=f"{out_path.name}.{os.getpid()}.", suffix=".tmp", dir=out_path.parent
            )
        )
    except OSError as e:
        raise error(f"{out_path}: cannot write ({e.strerror or e})") from None
    try:
        yield tmp_dir / out_path.name
        written = sorted(tmp_dir.iterdir(), key=lambda p: p.name == out_path.name)
        for f in written:  # OUT.data too: never over a device or an input
            _check_replaceable(out_path.parent / f.name, inputs, error)
            _fsync(f)
        for f in written:
            os.replace(f, out_path.parent / f.name)
        _fsync(out_path.parent)  # make the renames durable
    except OSError as e:
        raise error(f"{out_path}: cannot write ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _check_replaceable(
    target: Path, inputs: Iterable[str | Path], error: type[InfiniError]
) -> None:
    """Refuse to replace an existing target that is not a regular file or is one of `inputs`."""
    if not target.exists():
        return
    if not target.is_file():
        raise error(f"{target}: not a regular file (a device, FIFO or socket): not replaced")
    for source in inputs:
        if Path(source).exists() and os.path.samefile(target, source):
            raise error(f"{target}: is the input {source}; write the output elsewhere")


def remove_stale_temporaries(
    directory: Path, name: str | None = None, min_age_s: float = 0.0
) -> int:
    """Remove the temporary directories that killed writers left in `directory` (of the output
    `name` only, if given): exactly `<name>.<pid>.<8 characters>.tmp`, holding nothing but files
    named like the output, whose process is gone on this machine and that nothing has touched for
    `min_age_s` seconds (a writer on another machine sharing the directory is not ours to judge
    by its pid). Returns how many were removed."""
    removed = 0
    for leftover in directory.glob(f"{glob.escape(name)}.*.tmp" if name else "*.tmp"):
        match = _TEMP_DIR.fullmatch(leftover.name)
        if not match or (name is not None and match[1] != name):
            continue
        try:
            if not leftover.is_dir() or leftover.is_symlink():
                continue
            names = {p.name for p in leftover.iterdir()}
            age = time.time() - leftover.stat().st_mtime
        except OSError:  # removed meanwhile
            continue
        ours = names <= {match[1], data_file_name(Path(match[1]))}
        if ours and age >= min_age_s and not _alive(int(match[2])):
            shutil.rmtree(leftover, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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

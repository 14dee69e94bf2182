"""Build the infini-onnx wheel from a copy of the repository's files (never in the source tree,
whose build/ and egg-info would leak into it). Used by tests/test_passkey.py and the aarch64 job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def build_wheel(workdir: Path) -> Path:
    """The wheel of the files git tracks or would track (uncommitted edits included), built
    without build isolation (setuptools from this environment); returns its path."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    source = workdir / "src"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(workdir / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if built.returncode != 0:
        raise RuntimeError(f"building the wheel failed:\n{built.stderr}")
    return next((workdir / "dist").glob("infini_onnx-*.whl"))

"""State-file headers for the tests that edit them (layout: docs/runtime.md, "State files")."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from infini_onnx.runtime.statefile import _checksum


def read_header(path: Path) -> tuple[dict, bytes]:
    """A state file's JSON header and the data after it."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0, "data must start 8-byte aligned"
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_header(path: Path, header: dict, data: bytes, resign: bool = False) -> None:
    """Write a state file from a header and data. resign: recompute the checksum over them,
    as an attacker would (where the header still has a metadata object to hold it)."""
    if resign and isinstance(header.get("__metadata__"), dict):
        try:
            header["__metadata__"]["checksum"] = _checksum(header, data)
        except (TypeError, ValueError):  # a header too broken to canonicalise
            pass
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)

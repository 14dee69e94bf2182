"""Stream state files: the safetensors layout, written with numpy alone (no safetensors package).

Layout (https://huggingface.co/docs/safetensors): 8 bytes little-endian header length n, n bytes
of JSON header (padded with spaces to a multiple of 8), then the raw little-endian tensor data.
The header maps each tensor name to {"dtype", "shape", "data_offsets"} and "__metadata__" to
string pairs. See docs/runtime.md for the tensors and metadata of a stream state.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from infini_onnx.errors import StateFileError
from infini_onnx.stepgraph.files import atomic_output

STATE_FORMAT = "infini-stream-state"
STATE_VERSION = "1"
DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}


def _checksum(header: dict, data: bytes | memoryview) -> str:
    """sha256 over the header (without the checksum itself, canonical JSON) and the data."""
    meta = {k: v for k, v in header["__metadata__"].items() if k != "checksum"}
    canonical = json.dumps({**header, "__metadata__": meta}, sort_keys=True, separators=(",", ":"))
    h = hashlib.sha256(canonical.encode())
    h.update(data)
    return "sha256:" + h.hexdigest()


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]):
    """Write tensors and string metadata atomically (stepgraph.files.atomic_output)."""
    header: dict = {"__metadata__": dict(metadata)}
    blobs, offset = [], 0
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": CODES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    data = b"".join(blobs)
    header["__metadata__"]["checksum"] = _checksum(header, data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with atomic_output(path, error=StateFileError) as tmp:
        tmp.write_bytes(struct.pack("<Q", len(text)) + text + data)


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read tensors and metadata, verifying the checksum; any damage is a StateFileError."""
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"{path}: no such state file")
    raw = path.read_bytes()
    corrupt = lambda why: StateFileError(f"{path}: corrupt state file ({why})")  # noqa: E731
    if len(raw) < 8:
        raise corrupt("truncated header")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise corrupt("truncated header")
    try:
        header = json.loads(raw[8 : 8 + n])
        metadata = header["__metadata__"]
        expected = metadata["checksum"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise corrupt(f"unreadable header: {e!r}") from None
    data = memoryview(raw)[8 + n :]
    if _checksum(header, data) != expected:
        raise corrupt("checksum mismatch: truncated or modified")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(
            data[start:end], dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        )
        tensors[name] = array.astype(DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors, metadata


def save_state(path: str | Path, host: dict[str, np.ndarray], model_id: str, variant: str) -> None:
    """Write a stream's host tensors (memory, norm, accumulators, cache, tokens_seen, logits)."""
    metadata = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "model_id": model_id,
        "variant": variant,
    }
    write_safetensors(path, host, metadata)


def load_state(path: str | Path, model_id: str) -> dict[str, np.ndarray]:
    """Read a state file written by save_state for the model `model_id`."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != STATE_FORMAT:
        raise StateFileError(f"{path}: not an infini-onnx stream state")
    if metadata.get("version") != STATE_VERSION:
        raise StateFileError(
            f"{path}: state format version {metadata.get('version')!r} is not supported "
            f"(this runtime reads {STATE_VERSION})"
        )
    if metadata.get("model_id") != model_id:
        raise StateFileError(
            f"{path}: state of another model (model_id {metadata.get('model_id', '?')[:12]}..., "
            f"this model is {model_id[:12]}...)"
        )
    return tensors

"""Stream state files: the safetensors layout, written with numpy alone (no safetensors package).

Layout (https://huggingface.co/docs/safetensors): 8 bytes little-endian header length n, n bytes
of JSON header (padded with spaces to a multiple of 8), then the raw little-endian tensor data.
The header maps each tensor name to {"dtype", "shape", "data_offsets"} and "__metadata__" to
string pairs. See docs/runtime.md for the tensors and metadata of a stream state.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from infini_onnx.atomic import atomic_output
from infini_onnx.errors import StateFileError

STATE_FORMAT = "infini-stream-state"
STATE_VERSION = "1"
DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 1 << 20  # a state's header is a few hundred bytes
MAX_NDIM = 8  # a state's tensors have at most 5 dimensions ([B, L, G, P, d])
MAX_TOKENS_SEEN = (1 << 63) - 1  # tokens_seen is stored as I64


def _checksum(header: dict, data: bytes | memoryview) -> str:
    """sha256 over the header (without the checksum itself, canonical JSON) and the data."""
    meta = {k: v for k, v in header["__metadata__"].items() if k != "checksum"}
    canonical = json.dumps({**header, "__metadata__": meta}, sort_keys=True, separators=(",", ":"))
    h = hashlib.sha256(canonical.encode())
    h.update(data)
    return "sha256:" + h.hexdigest()


def write_safetensors(
    path: str | Path,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str],
    inputs: Iterable[str | Path] = (),
) -> None:
    """Write tensors and string metadata atomically (infini_onnx.atomic.atomic_output), never over
    one of `inputs`."""
    data = safetensors_bytes(tensors, metadata)
    with atomic_output(path, error=StateFileError, inputs=inputs) as tmp:
        tmp.write_bytes(data)


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The whole file of tensors and string metadata, checksum included."""
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
    return struct.pack("<Q", len(text)) + text + data


def read_safetensors(
    path: str | Path, max_bytes: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read tensors and metadata, verifying the checksum and every header entry; any damage,
    and a file larger than max_bytes (checked before reading it), is a StateFileError."""
    path = Path(path)
    if path.is_dir():
        raise StateFileError(f"{path}: is a directory, not a state file")
    if not path.is_file():
        raise StateFileError(f"{path}: no such state file")
    corrupt = lambda why: StateFileError(f"{path}: corrupt state file ({why})")  # noqa: E731
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise corrupt(f"{size:,} bytes, more than a state of this model can hold")
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise corrupt("truncated header")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise corrupt("truncated header" if n > size - 8 else "header too large")
            text, data = f.read(n), memoryview(f.read())
    except OSError as e:
        raise StateFileError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(text)
        metadata = header["__metadata__"]
        expected = metadata["checksum"]
    except (ValueError, RecursionError, KeyError, TypeError) as e:
        raise corrupt(f"unreadable header: {type(e).__name__}") from None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt("metadata must map names to strings")
    if _checksum(header, data) != expected:
        raise corrupt("checksum mismatch: truncated or modified")
    tensors = {}
    for name, info in header.items():
        if name != "__metadata__":
            tensors[name] = _tensor(info, data, lambda why, n=name: corrupt(f"tensor {n!r}: {why}"))
    return tensors, metadata


def _tensor(info: object, data: memoryview, corrupt) -> np.ndarray:
    """One header entry's array, every field checked against the data it points into."""
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        raise corrupt("unknown or missing dtype")
    if info["dtype"] not in DTYPES:
        raise corrupt("unknown or missing dtype")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    if not isinstance(shape, list) or not all(whole(n) for n in shape):
        raise corrupt(f"bad shape {shape!r}")
    if len(shape) > MAX_NDIM:
        raise corrupt(f"{len(shape)} dimensions, at most {MAX_NDIM}")
    dtype = np.dtype(DTYPES[info["dtype"]])
    if math.prod(n for n in shape if n) * dtype.itemsize > len(data):  # even if a 0 empties it
        raise corrupt(f"shape larger than the {len(data):,} bytes of data")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(whole, offsets))):
        raise corrupt(f"bad data_offsets {offsets!r}")
    start, end = offsets
    if not start <= end <= len(data) or end - start != math.prod(shape) * dtype.itemsize:
        raise corrupt(f"data_offsets {offsets} do not fit shape {shape} and the data")
    array = np.frombuffer(data[start:end], dtype=dtype.newbyteorder("<"))
    return array.astype(dtype).reshape(shape)


def save_state(
    path: str | Path,
    host: dict[str, np.ndarray],
    model_id: str,
    variant: str,
    graph_format: int,
    inputs: Iterable[str | Path] = (),
) -> None:
    """Write a stream's host tensors (its graph format's state tensors, tokens_seen, logits),
    never over one of `inputs` (the model file)."""
    metadata = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "model_id": model_id,
        "variant": variant,
        "graph_format": str(graph_format),
    }
    write_safetensors(path, host, metadata, inputs)


def load_state(
    path: str | Path, model_id: str, graph_format: int, max_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Read a state file written by save_state for the model `model_id` and a step graph of
    format `graph_format` (at most max_bytes)."""
    return read_state(path, model_id, graph_format, max_bytes)[0]


def read_state(
    path: str | Path, model_id: str, graph_format: int, max_bytes: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """load_state's tensors, and the file's metadata. Files written before the graph_format key
    existed are format 1's."""
    tensors, metadata = read_safetensors(path, max_bytes)
    if metadata.get("format") != STATE_FORMAT:
        raise StateFileError(f"{path}: not an infini-onnx stream state")
    if metadata.get("version") != STATE_VERSION:
        raise StateFileError(
            f"{path}: state format version {metadata.get('version')!r} is not supported "
            f"(this runtime reads {STATE_VERSION})"
        )
    saved_format = metadata.get("graph_format", "1")
    if saved_format != str(graph_format):
        raise StateFileError(
            f"{path}: a state of a format-{saved_format} step graph; this graph is format "
            f"{graph_format} (resume it with the graph it was saved from)"
        )
    if metadata.get("model_id") != model_id:
        raise StateFileError(
            f"{path}: state of another model (model_id {metadata.get('model_id', '?')[:12]!r}..., "
            f"this model is {model_id[:12]}...)"
        )
    return tensors, metadata

"""The model configuration (config.json of a model directory, docs/design.md).

Loaded and validated without torch so that the runtime and the CLI can read it anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from infini_onnx.errors import ModelDirError

MODEL_TYPE = "infini-llama"
MEMORY_UPDATES = ("linear", "delta")
OPTIONAL_KEYS = ("local_window",)
# Sizes refused before anything is allocated (a typo such as segment_len 1e12).
MAX_STATE_BYTES = 1 << 36  # 64 GiB per stream
MAX_PARAMETERS = 1 << 40
# A whole segment's local attention holds an N x N float32 causal bias and N x N scores per
# head: 1 GiB each at N = 2^14, 8 times the largest preset's segment (base: 2048).
MAX_SEGMENT_LEN = 1 << 14
# Every integer is a size or a token id held in int64 by numpy and ONNX Runtime; a larger JSON
# integer fits no tensor and overflows float conversion.
MAX_INT = (1 << 63) - 1
# Closed ranges of the float keys. RMSNorm's eps only guards its division: 1e-12 (BERT) to 1e-5
# (Llama) are in use, and an eps far above the mean square of the activations (~1) makes the
# output independent of the input. RoPE's frequencies theta^(-2i/d), computed in float32, fall
# from 1 only for theta >= 1 (a theta that rounds to 0 gives inf, then NaN); models use 1e4 to
# 5e5, long-context ones a few 1e9.
FLOAT_RANGES = {"rms_norm_eps": (1e-12, 0.1), "rope_theta": (1.0, 1e12)}


@dataclass(frozen=True)
class InfiniConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    bos_token_id: int
    eos_token_id: int
    segment_len: int
    memory_update: str
    # W: each token attends to itself and the W - 1 tokens before it, across segment
    # boundaries (step-graph format 2). None (the key absent): the current segment only, the
    # meaning of every model directory written before the key existed.
    local_window: int | None = None
    model_type: str = MODEL_TYPE
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    def to_dict(self) -> dict[str, Any]:
        """The config.json content: known keys first, then the kept unknown ones."""
        d = asdict(self)
        extra = d.pop("extra")
        if d["local_window"] is None:  # absent, as in the directories written before it
            del d["local_window"]
        return {**d, **{k: v for k, v in extra.items() if k not in d}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> InfiniConfig:
        """Build and validate a config; errors name the source and the key."""
        if not isinstance(data, dict):
            raise ModelDirError(f"{source}: expected a JSON object")
        model_type = data.get("model_type")
        if model_type != MODEL_TYPE:
            raise ModelDirError(
                f"{source}: unknown model_type {model_type!r} (expected {MODEL_TYPE!r})"
            )
        known = {f.name: f for f in fields(cls) if f.name not in ("extra", "model_type")}
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name in data:
                values[name] = coerce(data[name], f.type, name, source)
            elif name not in OPTIONAL_KEYS:
                raise ModelDirError(f"{source}: missing required key {name!r}")
        extra = {k: v for k, v in data.items() if k not in known and k != "model_type"}
        try:
            return cls(**values, extra=extra)
        except ModelDirError as e:
            raise ModelDirError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> InfiniConfig:
        path = Path(path)
        if not path.is_file():
            raise ModelDirError(f"{path}: missing config.json")
        try:
            data = json.loads(path.read_text())
        except (ValueError, RecursionError, OSError) as e:  # bad JSON, huge ints, deep nesting
            raise ModelDirError(f"{path}: not valid JSON ({type(e).__name__})") from None
        return cls.from_dict(data, source=str(path))


def coerce(value: Any, type_name: str, key: str, source: str) -> Any:
    """Check a JSON value against a declared type ("int", "float", "bool", "str",
    "int | None"); ModelDirError naming the source and key otherwise."""
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "int | None": value is None or (isinstance(value, int) and not isinstance(value, bool)),
    }[type_name]
    if not ok:
        raise ModelDirError(f"{source}: key {key!r} must be {type_name}, got {value!r}")
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise ModelDirError(
            f"{source}: key {key!r} must fit in 64 bits, got an integer of "
            f"{value.bit_length()} bits"
        )
    return float(value) if type_name == "float" else value


def _validate(c: InfiniConfig) -> None:
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "segment_len",
    ):
        if getattr(c, key) < 1:
            raise ModelDirError(f"key {key!r} must be >= 1, got {getattr(c, key)}")
    if c.segment_len > MAX_SEGMENT_LEN:
        raise ModelDirError(
            f"key 'segment_len' must be <= {MAX_SEGMENT_LEN} (a segment's attention is N x N), "
            f"got {c.segment_len}"
        )
    if c.local_window is not None and not 1 <= c.local_window <= MAX_SEGMENT_LEN:
        raise ModelDirError(
            f"key 'local_window' must be in [1, {MAX_SEGMENT_LEN}] (each token's attention spans "
            f"it), got {c.local_window}"
        )
    if c.num_attention_heads % c.num_key_value_heads:
        raise ModelDirError(
            f"key 'num_attention_heads' ({c.num_attention_heads}) must be a multiple of "
            f"'num_key_value_heads' ({c.num_key_value_heads})"
        )
    if c.head_dim % 2:
        raise ModelDirError(f"key 'head_dim' must be even for RoPE, got {c.head_dim}")
    if c.memory_update not in MEMORY_UPDATES:
        raise ModelDirError(
            f"key 'memory_update' must be one of {MEMORY_UPDATES}, got {c.memory_update!r}"
        )
    for key, (low, high) in FLOAT_RANGES.items():
        if not low <= getattr(c, key) <= high:  # NaN fails too
            raise ModelDirError(
                f"key {key!r} must be in [{low:g}, {high:g}], got {getattr(c, key)}"
            )
    for key in ("bos_token_id", "eos_token_id"):
        if not 0 <= getattr(c, key) < c.vocab_size:
            raise ModelDirError(f"key {key!r} must be in [0, vocab_size), got {getattr(c, key)}")
    if state_bytes(c) > MAX_STATE_BYTES or parameter_count(c) > MAX_PARAMETERS:
        raise ModelDirError(
            f"sizes too large: a stream's state would take {state_bytes(c) / 2**30:,.1f} GiB "
            f"(at most {MAX_STATE_BYTES / 2**30:g}) and the model {parameter_count(c):,} "
            f"parameters (at most {MAX_PARAMETERS:,})"
        )


def state_bytes(c: InfiniConfig) -> int:
    """float32 bytes of one stream's state at its largest: M, z, their accumulators and the
    local-attention cache (a segment in format 1, the window in format 2)."""
    L, G, d = c.num_hidden_layers, c.num_key_value_heads, c.head_dim
    cached = max(c.segment_len, c.local_window or 0)
    return 4 * L * G * (2 * d * d + 2 * d + 2 * cached * d)


def parameter_count(c: InfiniConfig) -> int:
    """The number of weights (the LM head counted even when tied)."""
    D, H, G, d = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    layer = 2 * D * H * d + 2 * D * G * d + 3 * D * c.intermediate_size + H + 2 * D
    return 2 * c.vocab_size * D + c.num_hidden_layers * layer + D


PRESETS: dict[str, dict[str, Any]] = {
    # For tests and the flat-memory benchmarks: tiny and fast.
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        segment_len=32,
    ),
    # >= 10M parameters with head_dim 64: for speed benchmarks.
    "small": dict(
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=64,
        segment_len=512,
    ),
    "base": dict(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
        segment_len=2048,
    ),
    # The real-text model (examples/models/text-3m): bytes in, a window of one segment, sized
    # to train in under an hour on 2 cores (docs/real-text.md).
    "text": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        segment_len=256,
    ),
    # About 0.5B parameters, the size users run on a CPU: weights far larger than any cache,
    # so decode is bound by memory bandwidth (`infini bench --presets`).
    "0.5b": dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=22,
        num_attention_heads=20,
        num_key_value_heads=4,
        head_dim=64,
        segment_len=2048,
    ),
}


def preset_config(name: str, **overrides: Any) -> InfiniConfig:
    """A config for one of PRESETS, with the byte-level vocabulary (256 bytes + bos + eos)."""
    if name not in PRESETS:
        raise ModelDirError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    values: dict[str, Any] = dict(
        vocab_size=258,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=256,
        eos_token_id=257,
        memory_update="delta",
    )
    values.update(PRESETS[name])
    values.update(overrides)
    values.setdefault("local_window", values["segment_len"])  # new models: W = N
    return InfiniConfig.from_dict({"model_type": MODEL_TYPE, **values}, source=f"preset {name}")

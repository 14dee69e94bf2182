"""The state contract of each step-graph format version: every tensor a stream carries between
graph calls, its output partner, dtype class, shape, and what a call and a segment's commit do
to it (docs/design.md, "The step graph" and "The runtime loop").

This is the one place the state is spelled. The reference model's loop, the exporter (example
inputs, dynamic axes), the metadata check, the runtime State, state files (and so the serve
journal's checkpoints), the Triton wrapper and the quantiser read a `StateSpec`; a new format
version is a new spec here.

Pure Python (no numpy): the runtime and the exporter both import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from infini_onnx.config import InfiniConfig

# Dimension names: B batch, T new tokens, P cached tokens of the current segment (format 1),
# K window slots (format 2), L layers, G key/value heads, d head_dim, V vocabulary, n logits.
# The dynamic ones, as the graph names them:
DYNAMIC_DIMS = {"B": "batch", "T": "tokens", "P": "past", "P+T": "present_len", "n": "logits_len"}

# dtype classes: the memory is float32 in every variant; the cache has the model's dtype.
FLOAT32, MODEL = "float32", "model"

# What a call does to a state tensor:
KEEP = "keep"  # nothing: read only until the segment commits
REPLACE = "replace"  # the output replaces it
RING = "ring"  # the output holds the T new rows, written at slots (position + i) mod K
# What the commit at a completed segment does (after the call's own update): None (nothing),
# EMPTY (no rows left) or the name of the output it takes.
EMPTY = "empty"


@dataclass(frozen=True)
class StateTensor:
    name: str  # the graph input
    output: str | None  # the graph output that updates it (None: none, KEEP)
    dtype: str  # FLOAT32 or MODEL
    dims: tuple[str, ...]
    on_call: str  # KEEP, REPLACE or RING
    on_commit: str | None  # None, EMPTY, or an output's name


@dataclass(frozen=True)
class StateSpec:
    """The step graph of one format version: its state tensors and its other inputs/outputs."""

    version: int
    tensors: tuple[StateTensor, ...]
    position_input: str | None  # an int64 [B] input fed with the stream's tokens_seen

    @cached_property
    def names(self) -> tuple[str, ...]:
        """The state tensors' names, in their order (a State's, a state file's)."""
        return tuple(t.name for t in self.tensors)

    @cached_property
    def input_names(self) -> tuple[str, ...]:
        position = (self.position_input,) if self.position_input else ()
        cache = tuple(t.name for t in self.tensors if t.dtype == MODEL)
        memory = tuple(t.name for t in self.tensors if t.dtype == FLOAT32)
        return ("input_ids", *cache, *memory, *position, "num_logits")

    @cached_property
    def output_names(self) -> tuple[str, ...]:
        cache = tuple(t.output for t in self.tensors if t.dtype == MODEL)
        memory = tuple(t.output for t in self.tensors if t.dtype == FLOAT32 and t.output)
        return ("logits", *cache, *memory)

    def tensor(self, name: str) -> StateTensor:
        return next(t for t in self.tensors if t.name == name)

    def cache_tensors(self) -> tuple[StateTensor, ...]:
        return tuple(t for t in self.tensors if t.dtype == MODEL)

    def sizes(self, config: InfiniConfig) -> dict[str, int]:
        """The config's fixed dimensions."""
        c = config
        return {
            "L": c.num_hidden_layers,
            "G": c.num_key_value_heads,
            "d": c.head_dim,
            "V": c.vocab_size,
            "K": window_slots(c),
        }

    def shape(
        self, dims: tuple[str, ...], config: InfiniConfig, **dynamic: int
    ) -> tuple[int | None, ...]:
        """Concrete dims (None for a dynamic one not given in `dynamic`)."""
        sizes = {**self.sizes(config), **dynamic}
        return tuple(sizes.get(dim) for dim in dims)

    def io_dims(self) -> dict[str, tuple[str, ...]]:
        """Every input's and output's named dims."""
        dims: dict[str, tuple[str, ...]] = {"input_ids": ("B", "T"), "num_logits": ("1",)}
        if self.position_input:
            dims[self.position_input] = ("B",)
        for t in self.tensors:
            dims[t.name] = t.dims
            if t.output:
                dims[t.output] = NEW_ROWS if t.on_call == RING else _grown(t.dims)
        dims["logits"] = ("B", "n", "V")
        return dims


def window_reach(config: InfiniConfig) -> int:
    """How many earlier tokens a token sees: W - 1 (a model without `local_window` sees its
    current segment only: at most N - 1 earlier tokens)."""
    window = config.local_window if config.local_window is not None else config.segment_len
    return window - 1


def window_slots(config: InfiniConfig) -> int:
    """K: the ring's slots in format 2, the reach (one slot, never seen, for W = 1: ONNX
    exporters and runtimes handle a fixed dimension of 0 badly)."""
    return max(window_reach(config), 1)


def ring_slots(position: int, tokens: int, slots: int) -> tuple[list[int], int]:
    """Where a call's new rows go in a ring of `slots` rows: (slot of each kept row, how many of
    the last new rows are kept). Token i of the call is at stream position `position` + i and
    lives in slot (position + i) mod K; only the last K of the T new rows are kept."""
    kept = min(tokens, slots)
    first = position + tokens - kept
    return [(first + i) % slots for i in range(kept)], kept


def _grown(dims: tuple[str, ...]) -> tuple[str, ...]:
    """A format-1 cache output: P + T rows."""
    return tuple("P+T" if dim == "P" else dim for dim in dims)


NEW_ROWS = ("B", "L", "G", "T", "d")
MATRIX, VECTOR = ("B", "L", "G", "d", "d"), ("B", "L", "G", "d")

_MEMORY = (
    StateTensor("memory", None, FLOAT32, MATRIX, KEEP, "memory_acc_out"),
    StateTensor("norm", None, FLOAT32, VECTOR, KEEP, "norm_acc_out"),
    StateTensor("memory_acc", "memory_acc_out", FLOAT32, MATRIX, REPLACE, None),
    StateTensor("norm_acc", "norm_acc_out", FLOAT32, VECTOR, REPLACE, None),
)

# Format 1: the cache holds the current segment's P tokens (keys after RoPE, positions from the
# segment start); the graph returns it grown by the T new tokens; the commit empties it.
FORMAT_1 = StateSpec(
    version=1,
    tensors=(
        *_MEMORY,
        StateTensor("past_key", "present_key", MODEL, ("B", "L", "G", "P", "d"), REPLACE, EMPTY),
        StateTensor(
            "past_value", "present_value", MODEL, ("B", "L", "G", "P", "d"), REPLACE, EMPTY
        ),
    ),
    position_input=None,
)

# Format 2: the cache is a ring of the last K tokens' keys (before RoPE) and values, across
# segment boundaries; the graph returns only the T new rows, which the loop writes into the ring
# (nothing is copied per token); the commit leaves it alone. `position` (tokens_seen) tells the
# graph which slots hold which tokens: scores depend only on the distance between positions.
FORMAT_2 = StateSpec(
    version=2,
    tensors=(
        *_MEMORY,
        StateTensor("past_key", "new_key", MODEL, ("B", "L", "G", "K", "d"), RING, None),
        StateTensor("past_value", "new_value", MODEL, ("B", "L", "G", "K", "d"), RING, None),
    ),
    position_input="position",
)

SPECS = {spec.version: spec for spec in (FORMAT_1, FORMAT_2)}
LATEST = FORMAT_2

# The compressive memory is the same in every format: float32 in every variant, M, z and their
# accumulators in this order (matrix, vector, matrix, vector).
MEMORY_INPUTS = tuple(t.name for t in _MEMORY)
MEMORY_OUTPUTS = tuple(t.output for t in _MEMORY if t.output)
FLOAT32_IO = (*MEMORY_INPUTS, *MEMORY_OUTPUTS, "logits")  # float32 whatever the variant

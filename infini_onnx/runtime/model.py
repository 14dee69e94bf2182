"""InfiniModel: an exported step graph loaded in ONNX Runtime, and the runtime loop."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from infini_onnx import contract
from infini_onnx.config import InfiniConfig
from infini_onnx.runtime import graph, statefile
from infini_onnx.runtime import state as st
from infini_onnx.runtime.errors import (
    DeviceError,
    InputError,
    ModelFileError,
    NonFiniteError,
    StateFileError,
)
from infini_onnx.runtime.state import State
from infini_onnx.runtime.stream import Stream, StreamBatch


class InfiniModel:
    """An infini-onnx .onnx file ready to run streams.

    device: "cpu", "cuda" or "tensorrt" (the last two need onnxruntime-gpu). threads: intra-op
    threads (default: the cores this process may use). session_options: your own
    onnxruntime.SessionOptions instead of the defaults of `graph.session_options`.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        session_options: ort.SessionOptions | None = None,
    ):
        self.path = Path(path)
        self.device = device
        providers = graph.providers_for(device)
        if session_options is None:
            session_options = graph.session_options(threads)
        elif threads:
            session_options.intra_op_num_threads = threads
        session = _open_session(self.path, session_options, providers)
        if session.get_providers()[0] != providers[0]:
            raise DeviceError(f"{self.path}: onnxruntime could not start {providers[0]}")
        meta = _read_metadata(self.path, session)
        self.config = meta["config"]
        self.model_id: str = meta["model_id"]
        self.variant: str = meta["variant"]
        self.tokenizer: Tokenizer | None = meta["tokenizer"]
        self.cache_dtype = np.dtype(graph.ORT_DTYPES[_input_types(session)["past_key"]])
        self._graph = graph.make_graph(session, device)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"InfiniModel({str(self.path)!r}, device={self.device!r}, variant={self.variant!r}, "
            f"layers={c.num_hidden_layers}, segment_len={c.segment_len})"
        )

    # --- streams ---------------------------------------------------------------------------

    def stream(self) -> Stream:
        """A new stream: empty memory, nothing cached."""
        return Stream(self, self.new_state())

    def batch(self, streams: Sequence[Stream]) -> StreamBatch:
        """Run several streams through one call per step (they must be at the same position in
        their segment). `StreamBatch.split()` gives them back."""
        if not streams:
            raise InputError("batch of no streams")
        if any(s.model is not self for s in streams):
            raise InputError("streams of another model cannot join this model's batch")
        positions = {s.state.cached for s in streams}
        if len(positions) > 1:
            raise InputError(
                f"streams of a batch must be at the same position in their segment, got "
                f"{sorted(positions)} (tokens_seen mod segment_len {self.config.segment_len})"
            )
        return StreamBatch(
            self, self.from_host(st.concat([self.to_host(s.state) for s in streams]))
        )

    def load_stream(self, path: str | Path) -> Stream:
        """A stream from a state file written by `Stream.save` for this model."""
        host = statefile.load_state(path, self.model_id)
        if not all(np.isfinite(a).all() for a in host.values()):
            raise StateFileError(f"{path}: NaN or inf in the saved state")
        try:
            state = self.from_host(host)
        except (KeyError, ValueError) as e:
            raise StateFileError(f"{path}: not a state of this model ({e})") from None
        if state.batch != 1:
            raise StateFileError(f"{path}: a batch of {state.batch} streams")
        return Stream(self, state)

    def new_state(self, batch: int = 1) -> State:
        c = self.config
        host = st.zeros(
            c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.cache_dtype, batch
        )
        host["tokens_seen"] = np.zeros(batch, np.int64)
        return self.from_host(host)

    # --- the runtime loop: every graph call goes through here -------------------------------

    def step(
        self, state: State, input_ids: np.ndarray, num_logits: int = 1
    ) -> tuple[np.ndarray, State]:
        """One call of the step graph with T = input_ids.shape[1] new tokens, P + T <= N.

        Returns the logits of the last min(num_logits, T) positions [B, n, V] and the next state:
        the cache grows by T; when the segment is complete the memory commits
        (memory, norm <- memory_acc_out, norm_acc_out) and the cache empties (SPEC section 3).
        Raises NonFiniteError, leaving `state` the last good one, if NaN or inf appears.
        """
        N, P, T = self.config.segment_len, state.cached, input_ids.shape[1]
        if not 1 <= T <= N - P:
            raise InputError(f"{T} tokens do not fit the segment ({P} of {N} cached)")
        out = self._graph.run(input_ids, num_logits, state.graph_inputs())
        if not self._graph.finite(out, P):
            raise NonFiniteError(
                f"NaN or inf in the model's outputs for tokens {int(state.tokens_seen[0])}.."
                f"{int(state.tokens_seen[0]) + T - 1}: the stream keeps its last good state"
            )
        seen, last = state.tokens_seen + T, out.logits[:, -1].copy()  # not a view of all logits
        if P + T == N:
            empty = self._empty_cache(state.batch)
            macc, nacc = out.memory_acc, out.norm_acc
            return out.logits, State(macc, nacc, macc, nacc, empty, empty, 0, seen, last)
        return out.logits, State(
            state.memory,
            state.norm,
            out.memory_acc,
            out.norm_acc,
            out.present_key,
            out.present_value,
            P + T,
            seen,
            last,
        )

    def _empty_cache(self, batch: int) -> np.ndarray:
        c = self.config
        shape = (batch, c.num_hidden_layers, c.num_key_value_heads, 0, c.head_dim)
        return np.zeros(shape, self.cache_dtype)

    # --- moving states between the device and the host -------------------------------------

    def to_host(self, state: State) -> dict[str, np.ndarray]:
        """The state as host arrays (what a state file holds)."""
        host = {name: self._graph.to_host(v) for name, v in state.graph_inputs().items()}
        host["tokens_seen"] = state.tokens_seen
        if state.logits is not None:
            host["logits"] = state.logits
        return host

    def from_host(self, host: dict[str, np.ndarray]) -> State:
        """A State on this model's device from host arrays; checks shapes and dtypes."""
        c = self.config
        B = len(host["tokens_seen"])
        L, G, d, P = (
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            host["past_key"].shape[3],
        )
        expected = {
            "memory": ((B, L, G, d, d), np.float32),
            "norm": ((B, L, G, d), np.float32),
            "memory_acc": ((B, L, G, d, d), np.float32),
            "norm_acc": ((B, L, G, d), np.float32),
            "past_key": ((B, L, G, P, d), self.cache_dtype),
            "past_value": ((B, L, G, P, d), self.cache_dtype),
        }
        if "logits" in host:
            expected["logits"] = ((B, c.vocab_size), np.float32)
        for name, (shape, dtype) in expected.items():
            if host[name].shape != shape:
                raise ValueError(
                    f"{name} has shape {list(host[name].shape)}, expected {list(shape)}"
                )
            host[name] = host[name].astype(dtype, copy=False)
        if P >= c.segment_len:
            raise ValueError(f"{P} cached tokens, segment_len is {c.segment_len}")
        tensors = {name: self._graph.to_device(host[name]) for name in st.TENSORS}
        return State(
            **tensors,
            cached=P,
            tokens_seen=host["tokens_seen"].astype(np.int64),
            logits=host.get("logits"),
        )


def _open_session(
    path: Path, options: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelFileError(
            f"{path}: not a readable ONNX model, or truncated ({reason})"
        ) from None


def _input_types(session: ort.InferenceSession) -> dict[str, str]:
    return {i.name: i.type for i in session.get_inputs()}


def _read_metadata(path: Path, session: ort.InferenceSession) -> dict:
    """Config, identity and tokenizer from the graph's metadata (SPEC section 3)."""
    meta = session.get_modelmeta().custom_metadata_map
    version = meta.get(contract.KEY_FORMAT_VERSION)
    if version is None:
        raise ModelFileError(
            f"{path}: no {contract.KEY_FORMAT_VERSION} metadata: not a step graph exported by "
            "infini-onnx (run `infini export`)"
        )
    if version != str(contract.FORMAT_VERSION):
        raise ModelFileError(
            f"{path}: step-graph format version {version} is not supported by this runtime "
            f"(it reads version {contract.FORMAT_VERSION}); upgrade infini-onnx"
        )
    missing = [k for k in (contract.KEY_CONFIG, contract.KEY_MODEL_ID) if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: metadata {missing[0]!r} missing")
    try:
        config = InfiniConfig.from_dict(
            json.loads(meta[contract.KEY_CONFIG]), source=f"{path} metadata"
        )
    except json.JSONDecodeError as e:
        raise ModelFileError(
            f"{path}: metadata {contract.KEY_CONFIG!r} is not JSON ({e})"
        ) from None
    types = _input_types(session)
    outputs = {o.name for o in session.get_outputs()}
    if set(types) != set(contract.INPUT_NAMES) or outputs != set(contract.OUTPUT_NAMES):
        raise ModelFileError(f"{path}: inputs/outputs differ from the step-graph contract")
    if types["past_key"] not in graph.ORT_DTYPES:
        raise ModelFileError(f"{path}: unsupported cache type {types['past_key']}")
    tokenizer = None
    if contract.KEY_TOKENIZER in meta:
        try:
            tokenizer = Tokenizer.from_str(meta[contract.KEY_TOKENIZER])
        except Exception as e:  # tokenizers raises plain Exception
            raise ModelFileError(f"{path}: metadata tokenizer unreadable ({e})") from None
    return dict(
        config=config,
        model_id=meta[contract.KEY_MODEL_ID],
        variant=meta.get(contract.KEY_VARIANT, "fp32"),
        tokenizer=tokenizer,
    )

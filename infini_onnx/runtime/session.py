"""InfiniModel: an exported step graph in an ONNX Runtime session, and the runtime loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from infini_onnx.errors import DeviceError, InputError, ModelFileError, NonFiniteError
from infini_onnx.runtime import device as dev
from infini_onnx.runtime.state import Layout, State
from infini_onnx.stepgraph.metadata import StepGraphInfo, check_io, check_shapes
from infini_onnx.stepgraph.variants import variant


class InfiniModel:
    """An infini-onnx .onnx file ready to run streams (`Stream(model)`).

    device: "cpu", "cuda" or "tensorrt" (the last two need onnxruntime-gpu). threads: intra-op
    threads, an integer in [1, the cores this process may use] (default: all of them; InputError
    otherwise, before anything is allocated). session_options: your own
    onnxruntime.SessionOptions instead of the defaults of `device.session_options`. quiet:
    silence ONNX Runtime's warnings (the quantiser's own graphs draw some that say nothing to
    the user).
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        session_options: ort.SessionOptions | None = None,
        quiet: bool = False,
    ):
        self.path = Path(path)
        self.device = device
        providers = dev.providers_for(device)
        if session_options is None:
            session_options = dev.session_options(threads)
        elif threads is not None:
            session_options.intra_op_num_threads = dev.check_threads(threads)
        if quiet:  # ONNX Runtime's warnings (quantised graphs draw some that say nothing)
            session_options.log_severity_level = 3
        session = _open_session(self.path, session_options, providers)
        if session.get_providers()[0] != providers[0]:
            raise DeviceError(f"{self.path}: onnxruntime could not start {providers[0]}")
        info = StepGraphInfo.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        input_types = {i.name: i.type for i in session.get_inputs()}
        check_io(input_types, [o.name for o in session.get_outputs()], str(path), info.spec)
        shapes = {v.name: v.shape for v in (*session.get_inputs(), *session.get_outputs())}
        check_shapes(shapes, info.config, str(path), info.spec)
        kind = variant(info.variant, str(path))
        cache_type = input_types[info.spec.cache_tensors()[0].name]
        cache_dtype = dev.ORT_DTYPES.get(cache_type)
        if cache_dtype is None or np.dtype(cache_dtype) != kind.cache_dtype:
            raise ModelFileError(
                f"{path}: a {kind.name} graph with a {cache_type} cache "
                f"({kind.cache_dtype} expected)"
            )
        self.config = info.config
        self.model_id: str = info.model_id
        self.variant: str = info.variant
        self.tokenizer: Tokenizer | None = _tokenizer(info.tokenizer_json, self.path)
        self.gates: list[list[float]] | None = info.gates  # [L][H] gate logits, if recorded
        self.cache_dtype = np.dtype(cache_dtype)
        self.format_version: int = info.spec.version
        calls = dev.device_calls(session, device, info.spec)
        self.layout = Layout(self.config, self.cache_dtype, calls, info.spec)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"InfiniModel({str(self.path)!r}, device={self.device!r}, variant={self.variant!r}, "
            f"format={self.format_version}, layers={c.num_hidden_layers}, "
            f"segment_len={c.segment_len})"
        )

    # --- the runtime loop: every graph call goes through here -------------------------------

    def step(
        self, state: State, input_ids: np.ndarray, num_logits: int = 1
    ) -> tuple[np.ndarray, State]:
        """One call of the step graph with T = input_ids.shape[1] new tokens, P + T <= N.

        Returns the logits of the last min(num_logits, T) positions [B, n, V] and the next state
        (`State.advance`). Raises NonFiniteError, leaving `state` the last good one, if NaN or
        inf appears.
        """
        N, P, T = self.config.segment_len, state.cached, input_ids.shape[1]
        if not 1 <= T <= N - P:
            raise InputError(f"{T} tokens do not fit the segment ({P} of {N} cached)")
        calls = self.layout.device
        out = calls.run(input_ids, num_logits, state.graph_inputs())
        if not calls.finite(out, P):
            raise NonFiniteError(
                f"NaN or inf in the model's outputs for tokens {int(state.tokens_seen[0])}.."
                f"{int(state.tokens_seen[0]) + T - 1}: the stream keeps its last good state"
            )
        return out.logits, state.advance(out, T)


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


def _tokenizer(tokenizer_json: str | None, path: Path) -> Tokenizer | None:
    if tokenizer_json is None:
        return None
    try:
        return Tokenizer.from_str(tokenizer_json)
    except Exception as e:  # tokenizers raises plain Exception
        raise ModelFileError(f"{path}: metadata tokenizer unreadable ({e})") from None

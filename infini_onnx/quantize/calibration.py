"""Calibration data for int8-static: whole segments with the state the float model carries."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from infini_onnx.quantize.segments import segments
from infini_onnx.runtime import InfiniModel, Stream


class CarriedStateReader(CalibrationDataReader):
    """Yields the graph feeds of successive segments of `tokens`, each with the memory and norm
    the float model (run by a runtime Stream) has written up to that segment (zero state would
    misrepresent all but the first).
    """

    def __init__(self, float_model: InfiniModel, tokens: np.ndarray):
        self._feeds = self._walk(float_model, tokens)

    @staticmethod
    def _walk(model: InfiniModel, tokens: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        stream = Stream(model)
        for ids in segments(tokens, model.config.segment_len):
            num_logits = np.array([ids.size], np.int64)  # all positions: calibrates the LM head
            state = {k: np.array(v) for k, v in stream.state.graph_inputs().items()}
            yield {**state, "input_ids": ids[None], "num_logits": num_logits}
            stream.feed(ids)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

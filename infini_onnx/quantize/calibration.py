"""Calibration data for int8-static: whole segments with the state the float model carries."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from infini_onnx.quantize.stream import segments
from infini_onnx.runtime import InfiniModel


class CarriedStateReader(CalibrationDataReader):
    """Yields the graph feeds of successive segments of `tokens`, each with the memory and norm
    the float model (run by the runtime's loop) has written up to that segment (zero state would
    misrepresent all but the first).
    """

    def __init__(self, float_model: InfiniModel, tokens: np.ndarray):
        self._feeds = self._walk(float_model, tokens)

    @staticmethod
    def _walk(model: InfiniModel, tokens: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        state = model.new_state()
        for ids in segments(tokens, model.config.segment_len):
            num_logits = np.array([ids.size], np.int64)  # all positions: calibrates the LM head
            yield {**state.graph_inputs(), "input_ids": ids, "num_logits": num_logits}
            state = model.step(state, ids)[1]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

"""Calibration data for int8-static: whole segments with the state the float model carries."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from infini_onnx.quantize.stream import segment_feeds, segments, zero_state


class CarriedStateReader(CalibrationDataReader):
    """Yields the feeds of successive segments of `tokens`, each with the memory and norm the
    float model has written up to that segment (zero state would misrepresent all but the first).
    """

    def __init__(self, float_session: ort.InferenceSession, config: dict, tokens: np.ndarray):
        self._feeds = self._walk(float_session, config, tokens)

    @staticmethod
    def _walk(
        session: ort.InferenceSession, config: dict, tokens: np.ndarray
    ) -> Iterator[dict[str, np.ndarray]]:
        memory, norm = zero_state(config)
        for ids in segments(tokens, config["segment_len"]):
            feeds = segment_feeds(session, config, ids, memory, norm)
            yield feeds
            memory, norm = session.run(["memory_acc_out", "norm_acc_out"], feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

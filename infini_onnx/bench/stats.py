"""Repeated measurements: timing calls one by one, and their median with min and max."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_calls(fn: Callable[[], object], calls: int) -> list[float]:
    """Seconds of each of `calls` calls of fn (no warm-up: call fn first where one is needed)."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summary(values: list[float]) -> dict:
    """{"median", "min", "max", "n"} of a non-empty list."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }

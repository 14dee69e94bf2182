"""Summaries of repeated measurements: median with min and max."""

from __future__ import annotations

import statistics


def summary(values: list[float]) -> dict:
    """{"median", "min", "max", "n"} of a non-empty list."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }

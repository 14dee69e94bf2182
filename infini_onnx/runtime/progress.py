"""A torch-free progress line for long streams: tokens, tokens/s, resident memory."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO

import numpy as np


def _proc_status(field: str) -> int | None:
    """A memory field of /proc/self/status in bytes (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _maxrss() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB elsewhere


def rss_bytes() -> int:
    """Resident memory now (the peak where the current value is not available)."""
    return _proc_status("VmRSS") or _maxrss()


def peak_rss_bytes() -> int:
    """Peak resident memory of the process so far."""
    return _proc_status("VmHWM") or _maxrss()


class Progress:
    """`tokens 1,234,567 | 45,678 tok/s | RSS 71.3 MB`, redrawn in place at most 10 times a
    second on a terminal; otherwise only the final line is written."""

    def __init__(self, out: TextIO | None = None, interval: float = 0.1):
        self.out, self.interval = out or sys.stderr, interval
        self.live = self.out.isatty()
        self.tokens = 0
        self.start = self.drawn = time.perf_counter()

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return (
            f"tokens {self.tokens:,} | {self.tokens / elapsed:,.0f} tok/s | "
            f"RSS {rss_bytes() / 2**20:.1f} MB"
        )

    def update(self, tokens: int) -> None:
        self.tokens += tokens
        now = time.perf_counter()
        if self.live and now - self.drawn >= self.interval:
            self.out.write("\r" + self.line())
            self.out.flush()
            self.drawn = now

    def track(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Pass token chunks through, counting them."""
        for chunk in chunks:
            yield chunk
            self.update(len(chunk))

    def close(self) -> None:
        self.out.write(("\r" if self.live else "") + self.line() + "\n")
        self.out.flush()

"""Stage timings for the export's progress output (never silent for long)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Log = Callable[[str], None]
HEARTBEAT_S = 20.0


class Stage:
    """A running stage; set `detail` to add it to the closing line."""

    detail = ""


@contextmanager
def stage(log: Log, what: str, heartbeat_s: float = HEARTBEAT_S) -> Iterator[Stage]:
    """Log `what: 1.2s (detail)` when the block ends, `... still what (40s)` while it runs."""
    current = Stage()
    t0 = time.perf_counter()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(heartbeat_s):
            log(f"  ... still {what} ({time.perf_counter() - t0:.0f}s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield current
    finally:
        done.set()
        thread.join()
    detail = f" ({current.detail})" if current.detail else ""
    log(f"{what}: {time.perf_counter() - t0:.1f}s{detail}")

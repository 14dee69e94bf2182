"""The server's Prometheus metrics, rendered in the text exposition format (no client library).

The ingress counts every request it answers; the replicas' own figures (resident streams,
restores, evictions) come back with each of their answers and are kept per replica.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)  # (route, status) -> n
        self.latency_counts: dict[str, list[int]] = {}  # route -> per-bucket counts (+inf last)
        self.latency_sums: dict[str, float] = defaultdict(float)
        self.replicas: dict[str, dict[str, int]] = {}  # replica -> its last reported figures

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[route, status] += 1
            counts = self.latency_counts.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 1))
            counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sums[route] += seconds

    def replica_report(self, stats: dict) -> None:
        """Keep a replica's figures: {"replica", "resident", "restores", "evictions",
        "tokens_fed", "tokens_generated", "cache_hits", "cache_tokens_saved", "cache_bytes"}."""
        with self._lock:
            self.replicas[stats["replica"]] = {k: v for k, v in stats.items() if k != "replica"}

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP infini_requests_total HTTP requests answered, by route and status.",
                "# TYPE infini_requests_total counter",
            ]
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'infini_requests_total{{route="{route}",status="{status}"}} {n}')
            lines += [
                "# HELP infini_request_seconds Request latency (to the last byte sent).",
                "# TYPE infini_request_seconds histogram",
            ]
            for route, counts in sorted(self.latency_counts.items()):
                total = 0
                for bound, n in zip((*LATENCY_BUCKETS, "+Inf"), counts):
                    total += n
                    lines.append(
                        f'infini_request_seconds_bucket{{route="{route}",le="{bound}"}} {total}'
                    )
                lines.append(f'infini_request_seconds_sum{{route="{route}"}} '
                             f"{self.latency_sums[route]:.6f}")  # fmt: skip
                lines.append(f'infini_request_seconds_count{{route="{route}"}} {total}')
            for name, kind, what in (
                ("resident", "gauge", "Streams held in a replica's memory."),
                ("restores", "counter", "Streams a replica restored from the state directory."),
                ("evictions", "counter", "Resident streams a replica dropped (budget, idle)."),
                ("tokens_fed", "counter", "Tokens a replica fed (prompts included)."),
                ("tokens_generated", "counter", "Tokens a replica generated."),
                ("cache_hits", "counter", "Prefixes a replica read from the state store."),
                ("cache_tokens_saved", "counter", "Prompt tokens read from the store, not fed."),
                ("cache_bytes", "gauge", "Bytes the state store's directory holds."),
            ):
                own = name.startswith(("tokens", "cache"))
                metric = "infini_" + (name if own else f"streams_{name}")
                metric += "_total" if kind == "counter" else ""
                lines += [f"# HELP {metric} {what}", f"# TYPE {metric} {kind}"]
                for replica, figures in sorted(self.replicas.items()):
                    lines.append(f'{metric}{{replica="{replica}"}} {figures[name]}')
            return "\n".join(lines) + "\n"

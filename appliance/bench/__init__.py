"""Benchmarks that print figures and ratios measured side by side in one run
(``appliance bench latency | answers | calls | storage | startup``)."""

from __future__ import annotations

import statistics


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95_index = min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))
    return {
        "median_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[p95_index], 1),
        "n": len(ordered),
    }

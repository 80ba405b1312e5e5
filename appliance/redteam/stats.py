"""Rates with their uncertainty: the Wilson score interval (95%)."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The 95% Wilson score interval for successes/n (E. B. Wilson, 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(successes: int, n: int) -> dict[str, float | int]:
    low, high = wilson(successes, n)
    return {
        "rate": round(successes / n, 4) if n else 0.0,
        "n": n,
        "successes": successes,
        "ci95_low": round(low, 4),
        "ci95_high": round(high, 4),
    }

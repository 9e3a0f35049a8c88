"""Small statistics helpers (no numpy: the tool must stay importable without it)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation between closest ranks (numpy's default).

    `q` is in [0, 100]. Raises on an empty sequence: a missing figure must never
    silently become 0.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    frac = rank - lo
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * frac)


def latency_summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/max of durations given in seconds, reported in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator/denominator, or None when either side is missing or the base is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def percentile_from_counts(counts: dict[int, int], q: float) -> float | None:
    """Percentile of integer-valued samples given as value -> count (loadtest's ms histogram).

    Uses the nearest-rank definition: the smallest value whose cumulative share is >= q.
    """
    total = sum(counts.values())
    if total == 0:
        return None
    needed = math.ceil(total * q / 100.0)
    needed = max(needed, 1)
    running = 0
    for value in sorted(counts):
        running += counts[value]
        if running >= needed:
            return float(value)
    return float(max(counts))

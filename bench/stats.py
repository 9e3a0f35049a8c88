"""Small statistics helpers."""

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
    rank = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(rank), math.ceil(rank)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo))


def median(values: Sequence[float | None]) -> float | None:
    """Median of the figures present; None when there is none."""
    present = [v for v in values if v is not None]
    return percentile(present, 50) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator/denominator, or None when either side is missing or the base is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator

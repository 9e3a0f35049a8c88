"""Read the server's Prometheus /metrics and turn before/after snapshots into step figures.

Every benchmark step takes a snapshot before and after; histograms and counters are
cumulative, so the difference is exactly what happened during the step.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

LabelKey = tuple[tuple[str, str], ...]
Snapshot = dict[tuple[str, LabelKey], float]

BATCH_SIZE = "textclf_batch_size"
QUEUE_DEPTH = "textclf_queue_depth"
BATCH_TOKENS = "textclf_batch_tokens"
INPUT_TOKENS = "textclf_input_tokens"
QUEUE_WAIT = "textclf_queue_wait_seconds"
INFERENCE = "textclf_inference_seconds"
REQUESTS = "textclf_requests_total"
REJECTIONS = "textclf_rejections_total"


def parse_snapshot(text: str) -> Snapshot:
    """Flatten exposition text into {(sample name, sorted labels): value}."""
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def fetch_snapshot(metrics_url: str, timeout_s: float = 5.0) -> Snapshot:
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as resp:
        return parse_snapshot(resp.read().decode("utf-8"))


def _matches(labels: LabelKey, want: Mapping[str, str]) -> bool:
    present = dict(labels)
    return all(present.get(k) == v for k, v in want.items())


@dataclass
class Histogram:
    """Cumulative buckets (upper bound -> count), summed over every matching label set."""

    buckets: dict[float, float] = field(default_factory=dict)
    count: float = 0.0
    total: float = 0.0

    def minus(self, before: Histogram) -> Histogram:
        return Histogram(
            buckets={le: c - before.buckets.get(le, 0.0) for le, c in self.buckets.items()},
            count=self.count - before.count,
            total=self.total - before.total,
        )

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None

    def quantile(self, q: float, floor: float = 0.0) -> float | None:
        """Prometheus histogram_quantile: linear interpolation inside the bucket.

        `q` in [0, 1]. The lower edge of the first bucket is `floor` (Prometheus uses 0;
        batch sizes are >= 1, so a histogram of all-1 batches must say 1, not 0.5).
        """
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower_bound, lower_count = floor, 0.0
        finite = sorted(le for le in self.buckets if not math.isinf(le))
        for le in finite:
            cum = self.buckets[le]
            if cum >= rank:
                in_bucket = cum - lower_count
                if in_bucket <= 0:
                    return le
                return lower_bound + (le - lower_bound) * (rank - lower_count) / in_bucket
            lower_bound, lower_count = le, cum
        # Rank falls in the +Inf bucket: the best statement is "above the last bound".
        return finite[-1] if finite else None


def histogram(snapshot: Snapshot, name: str, labels: Mapping[str, str] | None = None) -> Histogram:
    want = dict(labels or {})
    h = Histogram()
    for (sample, key), value in snapshot.items():
        if not _matches(key, want):
            continue
        if sample == f"{name}_bucket":
            le = float(dict(key)["le"])
            h.buckets[le] = h.buckets.get(le, 0.0) + value
        elif sample == f"{name}_count":
            h.count += value
        elif sample == f"{name}_sum":
            h.total += value
    return h


def counter_by(
    snapshot: Snapshot, name: str, label: str, labels: Mapping[str, str] | None = None
) -> dict[str, float]:
    """Counter values grouped by one label (e.g. requests by status)."""
    want = dict(labels or {})
    out: dict[str, float] = {}
    for (sample, key), value in snapshot.items():
        if sample == name and _matches(key, want):
            group = dict(key).get(label, "")
            out[group] = out.get(group, 0.0) + value
    return out


def counter_diff(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, int]:
    diff = {k: round(after.get(k, 0.0) - before.get(k, 0.0)) for k in sorted({*after, *before})}
    return {k: v for k, v in diff.items() if v != 0}


def pending_texts(snapshot: Snapshot) -> float:
    """Texts tokenized but neither forwarded nor rejected yet (0 when the server is idle)."""
    tokenized = histogram(snapshot, INPUT_TOKENS).count
    forwarded = histogram(snapshot, BATCH_SIZE).total
    rejected = sum(counter_by(snapshot, REJECTIONS, "reason").values())
    return tokenized - forwarded - rejected


def gauge(snapshot: Snapshot, name: str) -> float | None:
    values = [v for (sample, _), v in snapshot.items() if sample == name]
    return sum(values) if values else None


def _r(value: float | None, scale: float = 1.0, digits: int = 2) -> float | None:
    return None if value is None else round(value * scale, digits)


def step_metrics(before: Snapshot, after: Snapshot, route: str = "/predict") -> dict[str, Any]:
    """What the server's side of one step says: passes, batch size, padding, queue wait."""

    def diff(name: str) -> Histogram:
        return histogram(after, name).minus(histogram(before, name))

    sizes, padded, real = diff(BATCH_SIZE), diff(BATCH_TOKENS), diff(INPUT_TOKENS)
    wait, infer = diff(QUEUE_WAIT), diff(INFERENCE)
    # Token-weighted padding efficiency (real tokens / tokens computed) is what costs CPU.
    # Real tokens are counted at tokenization, which can fall outside the step's window for
    # texts in flight at its edges: mean tokens per text x texts actually forwarded.
    efficiency = (
        real.mean * sizes.total / padded.total
        if real.mean is not None and padded.total > 0
        else None
    )
    return {
        "forward_passes": round(sizes.count),
        "batch_size": {
            "mean": _r(sizes.mean),
            "p50": _r(sizes.quantile(0.5, floor=1.0)),
            "p90": _r(sizes.quantile(0.9, floor=1.0)),
        },
        "padding_efficiency": _r(efficiency, digits=3),
        "queue_wait_ms": {"mean": _r(wait.mean, 1000), "p99": _r(wait.quantile(0.99), 1000)},
        "inference_ms_per_pass": _r(infer.mean, 1000),
        "requests_by_status": counter_diff(
            counter_by(after, REQUESTS, "status", {"route": route}),
            counter_by(before, REQUESTS, "status", {"route": route}),
        ),
        "rejections_by_reason": counter_diff(
            counter_by(after, REJECTIONS, "reason"), counter_by(before, REJECTIONS, "reason")
        ),
    }

"""Statistics and Prometheus-diff helpers of the benchmark tool."""

from __future__ import annotations

import math

import pytest

from bench.promstats import (
    Histogram,
    counter_by,
    counter_diff,
    histogram,
    parse_snapshot,
    pending_texts,
    step_metrics,
)
from bench.stats import median, percentile, ratio


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_median_ignores_missing_figures() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None]) is None


def test_ratio_handles_missing() -> None:
    assert ratio(1.0, 2.0) == 0.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None


def _exposition(sizes: list[int], eff: list[float], statuses: dict[str, int]) -> str:
    """Build /metrics text the way the app's prometheus_client registry would."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
    from prometheus_client import Histogram as PromHistogram

    r = CollectorRegistry()
    bs = PromHistogram("textclf_batch_size", "x", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
    pe = PromHistogram(
        "textclf_batch_padding_efficiency", "x", buckets=(0.5, 0.8, 0.9, 1.0), registry=r
    )
    bt = PromHistogram("textclf_batch_tokens", "x", buckets=(64, 1024), registry=r)
    it = PromHistogram("textclf_input_tokens", "x", buckets=(16, 64), registry=r)
    req = Counter("textclf_requests", "x", ["route", "status"], registry=r)
    rej = Counter("textclf_rejections", "x", ["reason"], registry=r)
    Gauge("textclf_queue_depth", "x", registry=r).set(0)
    for size, e in zip(sizes, eff, strict=True):
        bs.observe(size)
        pe.observe(e)
        bt.observe(size * 40)
        for _ in range(size):
            it.observe(40 * e)
    for status, n in statuses.items():
        req.labels("/predict", status).inc(n)
        req.labels("/health", status).inc(1)
    rej.labels("queue_full").inc(statuses.get("503", 0))
    return generate_latest(r).decode()


def test_histogram_and_counter_diff() -> None:
    before = parse_snapshot(_exposition([1, 2], [1.0, 0.9], {"200": 3}))
    after = parse_snapshot(
        _exposition([1, 2, 32, 32, 16], [1.0, 0.9, 0.5, 0.6, 0.85], {"200": 60, "503": 2})
    )
    h = histogram(after, "textclf_batch_size").minus(histogram(before, "textclf_batch_size"))
    assert h.count == 3
    assert h.mean == pytest.approx(80 / 3)
    assert h.buckets[32.0] - h.buckets[16.0] == 2
    by_status = counter_by(after, "textclf_requests_total", "status", {"route": "/predict"})
    assert by_status == {"200": 60.0, "503": 2.0}
    diff = counter_diff(by_status, counter_by(before, "textclf_requests_total", "status"))
    assert diff["503"] == 2


def test_step_metrics_summary() -> None:
    before = parse_snapshot(_exposition([], [], {}))
    after = parse_snapshot(_exposition([32, 32, 16], [0.5, 0.6, 0.85], {"200": 80}))
    sm = step_metrics(before, after)
    assert sm["forward_passes"] == 3
    bs = sm["batch_size"]
    assert isinstance(bs, dict)
    assert bs["mean"] == pytest.approx(26.67, abs=0.01)
    # Token-weighted: (32*20 + 32*24 + 16*34) / (32*40 + 32*40 + 16*40)
    expected = (32 * 20 + 32 * 24 + 16 * 34) / (80 * 40)
    assert sm["padding_efficiency"] == pytest.approx(expected, abs=1e-3)
    assert sm["requests_by_status"] == {"200": 80}


def test_quantile_interpolation_and_floor() -> None:
    h = Histogram(buckets={1.0: 10.0, 2.0: 10.0, 4.0: 20.0, math.inf: 20.0}, count=20, total=50)
    # Half the mass is <= 1; the other half is spread over (2, 4].
    assert h.quantile(0.5) == pytest.approx(1.0)
    assert h.quantile(0.75) == pytest.approx(3.0)
    ones = Histogram(buckets={1.0: 5.0, 2.0: 5.0, math.inf: 5.0}, count=5, total=5)
    assert ones.quantile(0.5) == pytest.approx(0.5)  # Prometheus' convention
    assert ones.quantile(0.5, floor=1.0) == pytest.approx(1.0)  # batch sizes are >= 1
    assert Histogram().quantile(0.5) is None


def test_quantile_in_inf_bucket_reports_last_bound() -> None:
    h = Histogram(buckets={8.0: 1.0, math.inf: 10.0}, count=10, total=500)
    assert h.quantile(0.9) == 8.0


def test_pending_texts_zero_when_idle() -> None:
    snap = parse_snapshot(_exposition([4, 4], [1.0, 1.0], {"200": 8}))
    assert pending_texts(snap) == 0

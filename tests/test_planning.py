from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from app.planning import CostModel, padded_width, plan_batches


def _check_partition(batches: list[list[int]], count: int) -> None:
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(count))


def test_every_text_is_planned_exactly_once_within_limits() -> None:
    rng = random.Random(7)
    lengths = [rng.randint(3, 120) for _ in range(100)]
    batches = plan_batches(lengths, max_rows=16, max_tokens=1024, cost=CostModel())
    _check_partition(batches, len(lengths))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 16
        assert len(batch) == 1 or len(batch) * width <= 1024


def test_similar_lengths_go_together() -> None:
    lengths = [10, 80, 11, 82, 9, 79]
    batches = plan_batches(lengths, max_rows=32, max_tokens=8192, cost=CostModel(0.01, 0.001))
    assert sorted(sorted(b) for b in batches) == [[0, 2, 4], [1, 3, 5]]
    assert [lengths[b[0]] for b in batches] == [9, 79]  # shortest batch first


def test_cheap_overhead_prefers_exact_batches_and_dear_overhead_one_batch() -> None:
    lengths = [5, 10, 20, 40]
    many = plan_batches(lengths, max_rows=8, max_tokens=8192, cost=CostModel(0.0, 1.0))
    one = plan_batches(lengths, max_rows=8, max_tokens=8192, cost=CostModel(1000.0, 1.0))
    assert len(many) == 4
    assert len(one) == 1


def test_a_single_row_is_allowed_even_over_the_token_budget() -> None:
    batches = plan_batches([600, 600], max_rows=8, max_tokens=512, cost=CostModel())
    assert batches == [[0], [1]]


def test_padding_multiple_rounds_widths() -> None:
    assert padded_width(9, 8) == 16
    assert padded_width(16, 8) == 16
    batches = plan_batches([9, 15], max_rows=8, max_tokens=16, cost=CostModel(), pad_multiple=8)
    assert batches == [[0], [1]]  # 2 rows x 16 would exceed 16 tokens


def test_cost_model_fit_recovers_a_linear_cost() -> None:
    samples = [(r, w, 0.004 + 0.0002 * r * w) for r, w in [(1, 16), (4, 32), (16, 64), (32, 48)]]
    fitted = CostModel.fit(samples)
    assert fitted.per_batch_s == pytest.approx(0.004, rel=1e-6)
    assert fitted.per_token_s == pytest.approx(0.0002, rel=1e-6)
    assert CostModel.fit([(1, 1, 1.0)]) == CostModel()


def test_cost_model_never_believes_passes_are_free() -> None:
    # Timings from a busy machine: the straight line through them crosses zero.
    noisy = [(1, 16, 0.010), (4, 32, 0.030), (16, 32, 0.120), (32, 48, 0.400)]
    fitted = CostModel.fit(noisy)
    assert fitted.per_batch_s >= 0.25 * 0.010
    lengths = [20 + (i % 7) for i in range(32)]
    batches = plan_batches(lengths, max_rows=32, max_tokens=8192, cost=fitted)
    assert len(batches) < 8, "similar lengths must still share passes"
    assert CostModel.fit([(1, 8, 0.5), (8, 8, 0.1)]) == CostModel()  # negative slope: refuse


def test_calibration_times_every_worker_at_once(settings_for: Any) -> None:
    """Passes are timed the way they run when serving: on all inference workers together."""
    from app.classifier import HFClassifier
    from app.startup import calibrate

    settings = settings_for(inference_workers=3)
    classifier = HFClassifier(settings)
    active = {"now": 0, "max": 0}
    lock = threading.Lock()

    def timed_forward(rows: int, width: int) -> float:
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.002)
        with lock:
            active["now"] -= 1
        return 0.001 + 0.0001 * rows * width

    classifier.timed_forward = timed_forward  # type: ignore[method-assign]
    cost = calibrate(classifier, settings)
    assert active["max"] == 3
    assert cost.per_batch_s == pytest.approx(0.001)
    assert cost.per_token_s == pytest.approx(0.0001)


def test_fit_keeps_the_per_pass_cost_when_a_large_pass_is_noisy() -> None:
    # A 4% error on the largest pass is 9 ms, more than the whole per-pass cost: fitted on
    # absolute error it moves the intercept by 14%; on relative error by under 3%.
    shapes = ((1, 8), (1, 32), (2, 16), (4, 32), (8, 32), (16, 48))
    samples = [(rows, width, 0.007 + 0.0003 * rows * width) for rows, width in shapes]
    rows, width, seconds = samples[-1]
    samples[-1] = (rows, width, seconds * 0.96)
    cost = CostModel.fit(samples)
    assert cost.per_batch_s == pytest.approx(0.007, rel=0.03)
    assert cost.per_token_s == pytest.approx(0.0003, rel=0.03)


@pytest.mark.parametrize("unpadded", ["auto", "off"])
def test_only_the_padded_forward_pays_for_calibration(settings_for: Any, unpadded: str) -> None:
    from app.classifier import HFClassifier
    from app.startup import warm_up_and_calibrate

    settings = settings_for(unpadded=unpadded)
    classifier = HFClassifier(settings)
    calls: list[tuple[int, int]] = []

    def timed_forward(rows: int, width: int) -> float:
        calls.append((rows, width))
        return 0.001 + 0.0001 * rows * width

    classifier.timed_forward = timed_forward  # type: ignore[method-assign]
    cost = warm_up_and_calibrate(classifier, settings)
    shapes = set(calls)
    if unpadded == "auto":  # padding-free: the planner is not used, one warm-up pass per shape
        assert classifier.padding_free
        assert cost == CostModel()
        assert len(calls) == len(shapes)
    else:  # warm-up plus three timed passes per shape, and a fitted model
        assert len(calls) == 4 * len(shapes)
        assert cost.per_batch_s == pytest.approx(0.001)

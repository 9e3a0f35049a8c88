"""Batch planning: the padded planner, its cost model and how warm-up fits it, and the
padding-free oldest-first rule."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.core import bringup
from app.core.planning import CostModel, Work, oldest_first, padded_width, plan_batches
from tests.conftest import make_settings
from tests.fakes import FakeClassifier


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


def test_padding_free_batches_take_the_oldest_texts_up_to_the_limits() -> None:
    lengths = [5, 40, 6, 7, 8]
    # Lengths do not matter for the cost, so arrival order decides, up to the row limit.
    assert oldest_first(lengths, max_rows=3, max_tokens=1000) == 3
    assert oldest_first(lengths, max_rows=10, max_tokens=1000) == 5
    # 3 rows x 40 tokens would pass 100: the token bound stops at 2 rows.
    assert oldest_first(lengths, max_rows=3, max_tokens=100) == 2
    assert oldest_first([40, 5, 6], max_rows=3, max_tokens=100) == 2
    # A single text always fits, however long.
    assert oldest_first([500, *lengths], max_rows=3, max_tokens=100) == 1
    assert oldest_first([], max_rows=3, max_tokens=100) == 0


class _Clock:
    """perf_counter for app.core.bringup: per thread, moved on only by the fake's passes."""

    def __init__(self, per_batch_s: float, per_token_s: float, per_square_s: float = 0) -> None:
        self.per_batch_s = per_batch_s
        self.per_token_s = per_token_s
        self.per_square_s = per_square_s  # attention: per token and token of its row
        self._local = threading.local()

    def perf_counter(self) -> float:
        return float(getattr(self._local, "now", 0.0))

    def on_pass(self, rows: Sequence[Sequence[int]]) -> None:
        width = max(map(len, rows))  # warm-up passes are full rows of filler
        self._local.now = self.perf_counter() + self.seconds(len(rows), width)

    def seconds(self, rows: int, width: int) -> float:
        return (
            self.per_batch_s
            + self.per_token_s * rows * width
            + self.per_square_s * rows * width * width
        )


def _warm_up(
    monkeypatch: pytest.MonkeyPatch,
    tiny_model: Path,
    fake: FakeClassifier,
    clock: _Clock | None = None,
    **overrides: int,
) -> CostModel:
    clock = clock or _Clock(per_batch_s=0.001, per_token_s=0.0001)
    monkeypatch.setattr(bringup, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    barrier = threading.Barrier(fake.workers, timeout=30)

    def on_pass(rows: Sequence[Sequence[int]]) -> None:
        barrier.wait()  # every worker passes at once, or this breaks
        clock.on_pass(rows)

    fake.on_pass = on_pass
    return bringup.warm_up(fake, make_settings(tiny_model, **overrides))


_SHAPES = [(1, 8), (1, 32), (2, 16), (4, 32), (8, 32), (16, 48)]


@pytest.mark.parametrize("padding_free", [False, True])
def test_warm_up_fits_the_cost_model_on_every_worker_at_once(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, padding_free: bool
) -> None:
    """Passes are timed as they run when serving: on all inference workers together. The
    padded planner needs the fit, admission too (padding-free or not)."""
    fake = FakeClassifier(padding_free=padding_free, workers=3)
    cost = _warm_up(monkeypatch, tiny_model, fake)
    assert cost.per_batch_s == pytest.approx(0.001)
    assert cost.per_token_s == pytest.approx(0.0001)
    assert cost.per_token_squared_s == pytest.approx(0, abs=1e-12)  # this clock has none
    # Per shape and worker: one warm-up pass, then the fastest of three timed ones; then a
    # text at the model's limit (64 tokens), the fastest of two.
    longest = [(1, 64)] * (3 * 3)
    assert fake.batches == [shape for shape in _SHAPES for _ in range(3 * 4)] + longest


def test_warm_up_prices_attention_at_the_model_limit(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    """Short calibration passes barely show attention's cost; the pass at the limit gives it,
    so admission's estimate of the longest text is the real time, not a linear guess."""
    clock = _Clock(per_batch_s=0.001, per_token_s=0.0001, per_square_s=2e-6)
    fake = FakeClassifier(workers=2, max_length=256)
    cost = _warm_up(monkeypatch, tiny_model, fake, clock)
    assert cost.per_token_squared_s > 0
    limits = {"workers": 1, "max_rows": 32, "max_tokens": 8192}
    longest = cost.seconds_for(Work.of([256]), **limits)
    assert longest == pytest.approx(clock.seconds(1, 256))
    assert longest > 1.5 * CostModel.fit(
        [(1, 8, clock.seconds(1, 8)), (16, 48, clock.seconds(16, 48))]
    ).cost(1, 256)
    # A shorter text is priced in between, never below the linear fit's guess.
    middle = cost.seconds_for(Work.of([128]), **limits)
    assert cost.cost(1, 128) < middle < 1.2 * clock.seconds(1, 128)


def test_warm_up_keeps_to_the_batch_limits(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    fake = FakeClassifier(padding_free=False, max_length=24)
    _warm_up(monkeypatch, tiny_model, fake, max_batch_size=4, max_batch_tokens=64)
    # Rows cut to 4 and widths to 24 tokens; (4, 24) would pass 64 tokens and is left out.
    shapes = [(1, 8), (1, 24), (2, 16)]
    assert fake.batches == [shape for shape in shapes for _ in range(4)] + [(1, 24)] * 3


def test_admission_estimate_shares_passes_between_idle_workers() -> None:
    cost = CostModel(per_batch_s=0.01, per_token_s=0.001, per_token_squared_s=1e-6)
    limits = {"max_rows": 4, "max_tokens": 1000}
    assert cost.seconds_for(Work(), workers=2, **limits) == 0
    one = cost.seconds_for(Work.of([100]), workers=2, **limits)
    assert one == pytest.approx(0.01 + 0.1 + 0.01)  # one text runs on one thread
    # Eight texts of 100: two passes of four, one per thread, side by side.
    assert cost.seconds_for(Work.of([100] * 8), workers=2, **limits) == pytest.approx(
        0.01 + (0.8 + 0.08) / 2
    )
    # 3000 tokens make at least three passes of 1000: two rounds on two threads.
    assert cost.seconds_for(Work.of([500] * 6), workers=2, **limits) == pytest.approx(
        2 * 0.01 + (3 + 1.5) / 2
    )
    assert Work.of([3, 4]) + Work.of([5]) - Work.of([4]) == Work.of([3, 5])

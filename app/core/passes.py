"""Forward passes as the batcher runs them: width, out-of-memory splitting, their pace, and
the admission that pace decides."""

from __future__ import annotations

import math
from collections.abc import Sequence

from app.core.errors import Overloaded, PayloadTooLarge
from app.core.planning import CostModel, Work, padded_width
from app.engine.base import Classifier, DeviceOutOfMemory, FloatArray
from app.metrics import Metrics

# Admitted work must be estimated to end within this share of its time left. The rest covers
# the pass its last text shares with later ones, a pace that drifts between estimate and run,
# and the tokenizing and HTTP time around the model.
ADMIT_SHARE = 0.7


def batch_width(model: Classifier, rows: Sequence[Sequence[int]]) -> int:
    """The longest row, rounded up to the model's multiple but never past its limit."""
    longest = max(len(row) for row in rows)
    return max(longest, min(padded_width(longest, model.pad_multiple), model.info.max_length))


def forward_splitting(
    model: Classifier, rows: Sequence[Sequence[int]]
) -> tuple[list[FloatArray | None], bool]:
    """Scores per row and whether memory ran out. On out-of-memory the batch is retried in
    halves, each padded to its own longest row; a row that fails alone gets None."""
    try:
        result: list[FloatArray | None] | None = list(model.forward(rows, batch_width(model, rows)))
    except DeviceOutOfMemory:
        result = None
    if result is None:
        model.release_cached_memory()
        if len(rows) == 1:
            return [None], True
        half = len(rows) // 2
        left, _ = forward_splitting(model, rows[:half])
        right, _ = forward_splitting(model, rows[half:])
        return left + right, True
    if len(result) != len(rows):  # fail the batch now, not at each request's deadline
        raise RuntimeError(f"the model returned {len(result)} rows for {len(rows)} texts")
    return result, False


class TokenRate:
    """How long work takes the inference threads: the warm-up cost model, scaled by how much
    slower (or faster) than it recent passes ran. Scaling the model, not a tokens-per-second
    figure, keeps the estimate right when texts change length: a pass of short texts costs
    mostly its fixed overhead, one of long texts mostly attention."""

    # A long pass of full batches says more about the pace under load than a pass of one
    # text: each pass weighs 1 - exp(-seconds / window), so about the last second counts.
    WINDOW_S = 1.0

    def __init__(self, cost: CostModel, *, workers: int, max_rows: int, max_tokens: int) -> None:
        self.cost = cost
        self.slowdown = 0.0  # measured / predicted pass time, smoothed; 0: nothing measured
        # The fastest pace held over a window of pass time: a warm-up beside other work
        # overrates what an idle server needs.
        self.best_slowdown = 1.0
        self._measured_s = 0.0
        self._workers = max(1, workers)
        self._max_rows = max_rows
        self._max_tokens = max_tokens

    def observe(self, lengths: Sequence[int], seconds: float) -> None:
        """One pass of texts with these token counts took `seconds`."""
        predicted = self._seconds(Work.of(lengths), workers=1)
        if seconds <= 0 or predicted <= 0:
            return
        ratio = seconds / predicted
        weight = 1 - math.exp(-seconds / self.WINDOW_S) if self.slowdown else 1.0
        self.slowdown += weight * (ratio - self.slowdown)
        self._measured_s += seconds
        if self._measured_s >= self.WINDOW_S:
            self.best_slowdown = min(self.best_slowdown, self.slowdown)

    def idle_seconds(self, work: Work) -> float:
        """What an idle server needs, whatever runs now: the warm-up model, or the fastest
        pace seen since when that was faster (a warm-up beside other work ran slow)."""
        return self._model_seconds(work) * self.best_slowdown

    def seconds_for(self, work: Work) -> float:
        """At the pace recent passes ran (the warm-up model's before any has)."""
        return self._model_seconds(work) * (self.slowdown or 1.0)

    def _model_seconds(self, work: Work) -> float:
        return self._seconds(work, workers=self._workers)

    def _seconds(self, work: Work, *, workers: int) -> float:
        return self.cost.seconds_for(
            work, workers=workers, max_rows=self._max_rows, max_tokens=self._max_tokens
        )


def _seconds_header(seconds: float) -> int:
    """Retry-After: whole seconds, 1 to 60."""
    return max(1, min(60, math.ceil(seconds)))


class Admission:
    """Work is admitted only if it can end within its deadline: 413 for good if not even on
    an idle server (the warm-up model, so contention never makes it a 4xx) or if it holds
    more tokens than the queue; 503 for now if not behind the work ahead (the live pace) or
    past the queue's token bound, with the seconds until it would fit."""

    def __init__(
        self, rate: TokenRate, metrics: Metrics, max_queue_tokens: int, timeout_s: float
    ) -> None:
        self._rate = rate
        self._metrics = metrics
        self._max_queue_tokens = max_queue_tokens
        self._timeout_s = timeout_s

    def retry_after(self, work: Work) -> int:
        return _seconds_header(self._rate.seconds_for(work) - ADMIT_SHARE * self._timeout_s)

    def check(
        self, own: Work, queued: Work, running: Work, seconds_left: float, *, exact: bool
    ) -> None:
        """`exact=False`: `own` holds upper bounds, which may refuse for now, never for good."""
        limit = self._max_queue_tokens
        if exact:
            self._refuse_too_large(own)
        else:  # a bound over the limits still gets in when the queue is empty, to be counted
            own = Work(own.texts, min(own.tokens, limit), own.squares)
        if queued.tokens + own.tokens > limit:
            self._refuse_for_now(
                f"the queue is full ({queued.tokens} tokens waiting, limit {limit})",
                own,
                wait=self._rate.seconds_for(queued)
                * (queued.tokens + own.tokens - limit)
                / max(1, queued.tokens),
            )
        ahead = queued + running
        if not ahead.texts:
            return  # alone it fits: the idle check said so, or tokenizing will
        needed = self._rate.seconds_for(ahead + own)
        budget = ADMIT_SHARE * seconds_left
        if needed > budget:
            self._refuse_for_now(
                f"the work queued ahead would take about {needed:.1f} s with this request, "
                f"longer than its {self._timeout_s:g} s deadline allows",
                own,
                wait=needed - budget,
            )

    def _refuse_too_large(self, own: Work) -> None:
        limit = self._max_queue_tokens
        if own.tokens > limit:
            reason = (
                f"the request holds {own.tokens} tokens, more than the whole queue may "
                f"(TEXTCLF_MAX_QUEUE_TOKENS={limit})"
            )
        else:
            alone = self._rate.idle_seconds(own)
            budget = ADMIT_SHARE * self._timeout_s
            if alone <= budget:
                return
            reason = (
                f"the request needs about {alone:.1f} s of model time even on an idle server; "
                f"the {self._timeout_s:g} s deadline (TEXTCLF_REQUEST_TIMEOUT_S) admits "
                f"up to {budget:.1f} s"
            )
        self._metrics.rejections.labels("too_large").inc(own.texts)
        raise PayloadTooLarge(f"{reason}; send fewer or shorter texts")

    def _refuse_for_now(self, reason: str, own: Work, wait: float) -> None:
        self._metrics.rejections.labels("queue_full").inc(own.texts)
        raise Overloaded(f"{reason}; retry later", retry_after=_seconds_header(wait))

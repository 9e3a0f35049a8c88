"""Dynamic batching: inference threads merge queued texts into length-aware forward passes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from app.errors import Draining, InferenceFailed, Overloaded, ResourceExhausted
from app.metrics import Metrics
from app.planning import CostModel, padded_width, plan_batches
from app.scoring import FloatArray

logger = logging.getLogger(__name__)

_IDLE_GAP_S = 0.05  # after this long without a batch, the next text runs at once
_RATE_SMOOTHING = 0.2


def _smooth(old: float, new: float) -> float:
    return new if old == 0 else (1 - _RATE_SMOOTHING) * old + _RATE_SMOOTHING * new


class BatchModel(Protocol):
    def forward(
        self, rows: Sequence[Sequence[int]], width: int, alone: bool = False
    ) -> FloatArray: ...

    def release_cached_memory(self) -> None: ...


@dataclass(frozen=True)
class BatchLimits:
    max_rows: int
    max_tokens: int
    max_wait_s: float
    max_queue: int
    pad_multiple: int = 1
    # Rounding up to pad_multiple never goes past the model's token limit (its position
    # table may not be a multiple of 8).
    max_width: int | None = None
    workers: int = 1
    # The model runs real tokens only (app/unpadded.py): lengths need not match within a batch.
    padding_free: bool = False


@dataclass(eq=False)
class _Item:
    ids: list[int]
    future: asyncio.Future[FloatArray]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Outcome:
    """What the inference thread did with one planned batch."""

    items: list[_Item]
    scores: list[FloatArray | None]
    seconds: float
    width: int
    out_of_memory: bool = False
    error: BaseException | None = None
    started: float = 0.0  # perf_counter when the pass began


class Batcher:
    """Bounded queue of texts and the inference threads that drain it.

    Admission is checked per text (a 40-text request counts 40), so the queue bound is a
    bound on work, and a full queue answers at once instead of letting latency grow.

    Each inference thread plans and takes its own next batch the moment its last pass ends.
    Dispatching from the event loop instead left the threads idle about a fifth of the time
    at concurrency 32 (py-spy): the loop reached the hand-off only after the responses and
    requests queued ahead of it.
    """

    def __init__(
        self, model: BatchModel, limits: BatchLimits, metrics: Metrics, cost: CostModel
    ) -> None:
        self._model = model
        self._limits = limits
        self._metrics = metrics
        self._cost = cost
        # Guards _pending, _closed, _last_rows and _last_end; the threads wait on it for work.
        self._work = threading.Condition()
        self._pending: list[_Item] = []
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._last_rows = 0
        self._last_end = 0.0
        self._busy = 0  # inference threads between taking a batch and finishing it
        self._primary_busy = False  # inference thread 0, the only one that runs passes alone
        # Real tokens per second over all workers, and tokens per text, both smoothed: texts
        # differ a hundredfold in length, so tokens are the measure of queued work.
        self._token_rate = 0.0
        self._tokens_per_text = 0.0

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return bool(self._threads) and not self._closed and all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for index in range(self._limits.workers):
            thread = threading.Thread(
                target=self._serve, args=(index,), name=f"inference_{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    async def stop(self) -> None:
        """Fail what is still queued and let the threads end; the caller drained first.

        The threads are not joined: one stuck in a hung forward pass must not hold up exit.
        """
        with self._work:
            self._closed = True
            pending, self._pending = self._pending, []
            self._work.notify_all()
        for item in pending:
            if not item.future.done():
                item.future.set_exception(Draining("the service is shutting down", retry_after=1))
        self._metrics.queue_depth.set(0)

    def retry_after(self, extra: int = 0) -> int:
        """Seconds until the queued tokens, plus `extra` texts of the recent mean length,
        should have run at the recent token rate (1 text/s before anything was measured)."""
        if self._token_rate <= 0:
            return max(1, min(60, self.queued + extra))
        queued = sum(len(item.ids) for item in self._pending)
        work = queued + extra * self._tokens_per_text
        return max(1, min(60, math.ceil(work / self._token_rate)))

    def check_capacity(self, count: int) -> None:
        if self._closed:
            raise Draining("the service is shutting down", retry_after=1)
        if self.queued + count > self._limits.max_queue:
            with self._work:
                self._pending = [item for item in self._pending if not item.future.done()]
        if self.queued + count > self._limits.max_queue:
            self._metrics.rejections.labels("queue_full").inc(count)
            raise Overloaded(
                f"the queue is full ({self.queued} texts waiting, limit "
                f"{self._limits.max_queue}); retry later",
                retry_after=self.retry_after(count),
            )

    async def submit(self, rows: Sequence[list[int]]) -> list[FloatArray]:
        """Queue token rows and wait for their scores, in order. Cancel to withdraw them."""
        self.check_capacity(len(rows))
        loop = asyncio.get_running_loop()
        items = [_Item(ids=row, future=loop.create_future()) for row in rows]
        with self._work:
            self._pending.extend(items)
            depth = len(self._pending)
            # Every idle thread looks: one takes the texts, the others go back to waiting.
            self._work.notify_all()
        self._metrics.queue_depth.set(depth)
        try:
            if len(items) == 1:  # most requests: no gather and the task it would create
                return [await items[0].future]
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:
                if not item.future.done():
                    item.future.cancel()

    # ---- inference threads ---------------------------------------------------------------

    def _serve(self, index: int) -> None:
        """One inference thread: take a batch, run it, hand the results to the event loop."""
        while True:
            try:
                taken = self._take_batch(index)
                if taken is None:
                    return
                batch, alone = taken
                try:
                    outcome = self._forward_batch(batch, alone)
                finally:
                    with self._work:
                        self._busy -= 1
                        if index == 0:
                            self._primary_busy = False
                        self._last_rows = len(batch)
                        self._last_end = time.perf_counter()
                self._deliver(outcome)
            except Exception:  # a bug here must not take the thread down
                logger.exception("inference thread error")

    def _deliver(self, outcome: _Outcome) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is exiting
            self._loop.call_soon_threadsafe(self._finish, outcome)

    def _take_batch(self, index: int) -> tuple[list[_Item], bool] | None:
        """Block until there is work, then plan from the oldest text and claim that batch.

        Thread 0 takes work whenever there is some; the others only while thread 0 is busy.
        So a quiet server runs every pass on thread 0, which alone may spread a pass over
        all cores: when no other pass runs and nothing is left queued (a lone request).
        Only one thread ever runs such passes: OpenMP gives up spinning and sleeps at every
        barrier as soon as its threads outnumber the cores, which made a lone pass on two
        cores slower (11 ms) than on one (8 ms) when both inference threads ran them.
        """
        with self._work:
            waited = False
            while True:
                if self._closed:
                    return None
                self._pending = [item for item in self._pending if not item.future.done()]
                if self._pending and (index == 0 or self._primary_busy):
                    if not waited:
                        break
                    # Gathering releases the lock: another thread may have taken every text
                    # (or the batcher closed) meanwhile; then wait again.
                    self._gather_more()
                    waited = False
                    if self._pending:
                        break
                    continue
                if not self._pending:
                    self._metrics.queue_depth.set(0)
                self._work.wait()
                waited = True
            # Leave the idle threads their share: one pass of all the texts on two cores ran
            # at about two thirds of the speed of two one-core passes of half of them each.
            idle = max(1, self._limits.workers - self._busy)
            rows = min(self._limits.max_rows, -(-len(self._pending) // idle))
            window = self._pending[: self._limits.max_rows * 2]
            batch = self._plan(window, rows)
            chosen = set(map(id, batch))
            self._pending = [item for item in self._pending if id(item) not in chosen]
            self._metrics.queue_depth.set(len(self._pending))
            alone = index == 0 and self._busy == 0 and not self._pending
            self._busy += 1
            if index == 0:
                self._primary_busy = True
                if self._pending:  # what thread 0 left is for the others now
                    self._work.notify_all()
            return batch, alone

    def _gather_more(self) -> None:
        """While busy, wait briefly for as many texts as the last batch had; never when idle.

        Called holding the condition; waiting releases it, so texts keep arriving.
        """
        target = min(self._last_rows, self._limits.max_rows)
        if target <= 1 or self._limits.max_wait_s <= 0:
            return
        if time.perf_counter() - self._last_end > _IDLE_GAP_S:
            return
        deadline = time.perf_counter() + self._limits.max_wait_s
        while len(self._pending) < target and not self._closed:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._work.wait(remaining)

    def _plan(self, window: list[_Item], max_rows: int) -> list[_Item]:
        """The cheapest split of the window; the batch that holds the oldest text runs now."""
        if self._limits.padding_free:
            return self._oldest_first(window, max_rows)
        plan = plan_batches(
            [len(item.ids) for item in window],
            max_rows=max_rows,
            max_tokens=self._limits.max_tokens,
            cost=self._cost,
            pad_multiple=self._limits.pad_multiple,
        )
        return [window[i] for i in next(b for b in plan if 0 in b)]

    def _oldest_first(self, window: list[_Item], max_rows: int) -> list[_Item]:
        """Without padding cost, the fullest batch is the cheapest: take texts in arrival
        order up to the row limit and the token limit (rows x longest bounds the attention
        buffers; a single text always fits)."""
        batch: list[_Item] = []
        longest = 0
        for item in window:
            width = max(longest, len(item.ids))
            if batch and (
                len(batch) >= max_rows or (len(batch) + 1) * width > self._limits.max_tokens
            ):
                break
            batch.append(item)
            longest = width
        return batch

    def _forward_batch(self, items: list[_Item], alone: bool = False) -> _Outcome:
        """In an inference thread. A model bug fails its batch, never the worker."""
        live = [item for item in items if not item.future.done()]
        if not live:
            return _Outcome(items=items, scores=[None] * len(items), seconds=0.0, width=0)
        width = self._width(live)
        start = time.perf_counter()
        try:
            scores, oom = self._forward_splitting(live, width, alone)
        except Exception as exc:
            return _Outcome(live, [None] * len(live), 0.0, width, error=exc)
        seconds = time.perf_counter() - start
        return _Outcome(live, scores, seconds, width, out_of_memory=oom, started=start)

    def _forward_splitting(
        self, items: list[_Item], width: int, alone: bool
    ) -> tuple[list[FloatArray | None], bool]:
        """Forward pass; on device out-of-memory retry in halves, failing only single rows."""
        try:
            result = list(self._model.forward([item.ids for item in items], width, alone))
            if len(result) != len(items):  # fail the batch now, not at each request's deadline
                raise RuntimeError(f"the model returned {len(result)} rows for {len(items)} texts")
            return result, False
        except torch.OutOfMemoryError:
            pass  # retry outside the handler: its traceback holds the failed pass's tensors
        self._model.release_cached_memory()
        if len(items) == 1:
            return [None], True
        half = len(items) // 2
        # Each half pads only to its own longest text.
        left, _ = self._forward_splitting(items[:half], self._width(items[:half]), alone)
        right, _ = self._forward_splitting(items[half:], self._width(items[half:]), alone)
        return left + right, True

    def _width(self, items: Sequence[_Item]) -> int:
        longest = max(len(item.ids) for item in items)
        width = padded_width(longest, self._limits.pad_multiple)
        limit = self._limits.max_width
        return width if limit is None else max(longest, min(width, limit))

    def _finish(self, outcome: _Outcome) -> None:
        """Back on the event loop: hand each text its scores or its error."""
        started = outcome.started
        if outcome.error is not None:
            logger.error("inference failed", exc_info=outcome.error)
        real = count = 0
        for item, score in zip(outcome.items, outcome.scores, strict=True):
            if item.future.done():
                continue
            if outcome.error is not None:
                item.future.set_exception(InferenceFailed("inference failed; the error was logged"))
            elif score is None:
                item.future.set_exception(
                    ResourceExhausted(
                        "the device ran out of memory for this input; retry later", retry_after=1
                    )
                )
            else:
                item.future.set_result(score)
                real += len(item.ids)
                count += 1
                self._metrics.queue_wait.observe(max(0.0, started - item.enqueued))
        if count:
            self._record_batch(count, outcome.width, real, outcome.seconds)
        if outcome.out_of_memory:
            logger.warning("device out of memory: batch split and retried")

    def _record_batch(self, rows: int, width: int, real_tokens: int, seconds: float) -> None:
        padded = real_tokens if self._limits.padding_free else rows * width
        m = self._metrics
        m.batch_size.observe(rows)
        m.batch_tokens.observe(padded)
        m.padding_efficiency.observe(real_tokens / padded if padded else 1.0)
        m.inference.observe(seconds)
        if seconds > 0:
            rate = real_tokens / seconds * self._limits.workers  # passes overlap
            self._token_rate = _smooth(self._token_rate, rate)
            self._tokens_per_text = _smooth(self._tokens_per_text, real_tokens / rows)

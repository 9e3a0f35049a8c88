"""Dynamic batching: one worker task merges queued texts into length-aware forward passes."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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


class BatchModel(Protocol):
    def forward(self, rows: Sequence[Sequence[int]], width: int) -> FloatArray: ...

    def release_cached_memory(self) -> None: ...


@dataclass(frozen=True)
class BatchLimits:
    max_rows: int
    max_tokens: int
    max_wait_s: float
    max_queue: int
    pad_multiple: int = 1
    workers: int = 1


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


class Batcher:
    """Bounded queue of texts plus the one task that feeds the model.

    Admission is checked per text (a 40-text request counts 40), so the queue bound is a
    bound on work, and a full queue answers at once instead of letting latency grow.
    """

    def __init__(
        self, model: BatchModel, limits: BatchLimits, metrics: Metrics, cost: CostModel
    ) -> None:
        self._model = model
        self._limits = limits
        self._metrics = metrics
        self._cost = cost
        self._pending: list[_Item] = []
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=limits.workers, thread_name_prefix="inference"
        )
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_rows = 0
        self._last_end = 0.0
        self._rate = 0.0  # texts per second of model time, smoothed

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Fail what is still queued and stop the worker; the caller drained first."""
        self._closed = True
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(Draining("the service is shutting down", retry_after=1))
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def retry_after(self, extra: int = 0) -> int:
        """Seconds until the queue, plus `extra` texts, should have drained at the recent rate."""
        rate = self._rate if self._rate > 0 else 1.0
        return max(1, min(60, math.ceil((self.queued + extra) / rate)))

    def check_capacity(self, count: int) -> None:
        if self._closed:
            raise Draining("the service is shutting down", retry_after=1)
        if self.queued + count > self._limits.max_queue:
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
        self._pending.extend(items)
        self._metrics.queue_depth.set(len(self._pending))
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:
                if not item.future.done():
                    item.future.cancel()

    async def _run(self) -> None:
        """Keep up to `workers` forward passes going; plan each one from the oldest text."""
        slots = asyncio.Semaphore(self._limits.workers)
        running: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        try:
            while True:
                await slots.acquire()
                batch = await self._next_batch(loop)
                task = asyncio.create_task(self._execute(loop, batch, slots))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                await self._gather_more(loop)
            self._pending = [item for item in self._pending if not item.future.done()]
            if self._pending:
                batch = self._plan(self._pending[: self._limits.max_rows * 2])
                chosen = set(map(id, batch))
                self._pending = [item for item in self._pending if id(item) not in chosen]
                self._metrics.queue_depth.set(len(self._pending))
                return batch
            self._metrics.queue_depth.set(0)

    def _plan(self, window: list[_Item]) -> list[_Item]:
        """The cheapest split of the window; the batch that holds the oldest text runs now."""
        plan = plan_batches(
            [len(item.ids) for item in window],
            max_rows=self._limits.max_rows,
            max_tokens=self._limits.max_tokens,
            cost=self._cost,
            pad_multiple=self._limits.pad_multiple,
        )
        return [window[i] for i in next(b for b in plan if 0 in b)]

    async def _execute(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Item], slots: asyncio.Semaphore
    ) -> None:
        try:
            outcome = await loop.run_in_executor(self._executor, self._forward_batch, batch)
            self._finish(outcome)
        finally:
            slots.release()

    async def _gather_more(self, loop: asyncio.AbstractEventLoop) -> None:
        """While busy, wait briefly for as many texts as the last batch had; never when idle."""
        target = min(self._last_rows, self._limits.max_rows)
        if target <= 1 or self._limits.max_wait_s <= 0:
            return
        if time.perf_counter() - self._last_end > _IDLE_GAP_S:
            return
        deadline = loop.time() + self._limits.max_wait_s
        while len(self._pending) < target:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _forward_batch(self, items: list[_Item]) -> _Outcome:
        """In an inference thread. A model bug fails its batch, never the worker."""
        live = [item for item in items if not item.future.done()]
        if not live:
            return _Outcome(items=items, scores=[None] * len(items), seconds=0.0, width=0)
        width = padded_width(max(len(item.ids) for item in live), self._limits.pad_multiple)
        start = time.perf_counter()
        try:
            scores, oom = self._forward_splitting(live, width)
        except Exception as exc:
            return _Outcome(live, [None] * len(live), 0.0, width, error=exc)
        return _Outcome(live, scores, time.perf_counter() - start, width, out_of_memory=oom)

    def _forward_splitting(
        self, items: list[_Item], width: int
    ) -> tuple[list[FloatArray | None], bool]:
        """Forward pass; on device out-of-memory retry in halves, failing only single rows."""
        try:
            result = self._model.forward([item.ids for item in items], width)
            return list(result), False
        except torch.OutOfMemoryError:
            self._model.release_cached_memory()
            if len(items) == 1:
                return [None], True
            half = len(items) // 2
            left, _ = self._forward_splitting(items[:half], width)
            right, _ = self._forward_splitting(items[half:], width)
            return left + right, True

    def _finish(self, outcome: _Outcome) -> None:
        """Back on the event loop: hand each text its scores or its error."""
        now = time.perf_counter()
        started = now - outcome.seconds
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
        self._last_rows = count
        self._last_end = now

    def _record_batch(self, rows: int, width: int, real_tokens: int, seconds: float) -> None:
        padded = rows * width
        m = self._metrics
        m.batch_size.observe(rows)
        m.batch_tokens.observe(padded)
        m.padding_efficiency.observe(real_tokens / padded if padded else 1.0)
        m.inference.observe(seconds)
        if seconds > 0:
            rate = rows / seconds * self._limits.workers  # passes overlap
            self._rate = rate if self._rate == 0 else (
                (1 - _RATE_SMOOTHING) * self._rate + _RATE_SMOOTHING * rate
            )  # fmt: skip

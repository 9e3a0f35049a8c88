"""Dynamic batching: inference threads merge queued texts into forward passes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.core.errors import Draining, InferenceFailed, Overloaded, ResourceExhausted
from app.core.passes import TokenRate, batch_width, forward_splitting
from app.core.planning import CostModel, oldest_first, plan_batches
from app.engine.base import Classifier, FloatArray
from app.metrics import Metrics

logger = logging.getLogger(__name__)

_IDLE_GAP_S = 0.05  # after this long without a batch, the next text runs at once


@dataclass(frozen=True)
class BatchLimits:
    max_rows: int
    max_tokens: int
    max_wait_s: float
    max_queue: int


@dataclass(eq=False)
class _Item:
    ids: list[int]
    future: asyncio.Future[FloatArray]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Outcome:
    """What an inference thread did with one batch."""

    items: list[_Item]
    scores: list[FloatArray | None]  # None: out of memory even alone
    seconds: float = 0.0
    width: int = 0
    started: float = 0.0
    out_of_memory: bool = False
    error: BaseException | None = None


class Batcher:
    """A bounded queue of texts and the inference threads that drain it.

    Admission counts texts, so a full queue answers 503 at once instead of letting latency
    grow. Each thread takes its own next batch the moment its pass ends (dispatching from the
    event loop left threads idle behind the loop's other work)."""

    def __init__(
        self, model: Classifier, limits: BatchLimits, metrics: Metrics, cost: CostModel
    ) -> None:
        self._model = model
        self._limits = limits
        self._metrics = metrics
        self._cost = cost
        self._work = threading.Condition()  # guards the fields below; threads wait on it
        self._pending: list[_Item] = []
        self._closed = False
        self._busy = 0
        self._last_rows = 0
        self._last_end = 0.0
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rate = TokenRate()
        metrics.queue_depth.set_function(lambda: len(self._pending))

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return bool(self._threads) and not self._closed and all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for index in range(self._model.workers):
            thread = threading.Thread(target=self._serve, name=f"inference_{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def stop(self) -> None:
        """Fail what is still queued and let the threads end (a hung one is not joined)."""
        with self._work:
            self._closed = True
            pending, self._pending = self._pending, []
            self._work.notify_all()
        for item in pending:
            if not item.future.done():
                item.future.set_exception(Draining("the service is shutting down", retry_after=1))

    def retry_after(self, extra: int = 0) -> int:
        """Seconds until the queue, plus `extra` texts, should have run (1 to 60)."""
        queued = [len(item.ids) for item in self._pending]
        return self._rate.seconds_for(queued, extra)

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
            self._work.notify_all()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:
                if not item.future.done():
                    item.future.cancel()

    # ---- inference threads ---------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                batch = self._take_batch()
                if batch is None:
                    return
                try:
                    outcome = self._forward_batch(batch)
                finally:
                    with self._work:
                        self._busy -= 1
                        self._last_rows = len(batch)
                        self._last_end = time.perf_counter()
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):  # the loop closed: the process exits
                    self._loop.call_soon_threadsafe(self._finish, outcome)
            except Exception:  # a bug here must not take the thread down
                logger.exception("inference thread error")

    def _take_batch(self) -> list[_Item] | None:
        """Block until there is work, then claim the batch that holds the oldest text."""
        with self._work:
            waited = False  # a thread that found the queue empty may gather a fuller batch
            while True:
                if self._closed:
                    return None
                self._pending = [item for item in self._pending if not item.future.done()]
                if self._pending and not waited:
                    break
                if self._pending:
                    self._gather_more()  # releases the lock: others may take every text
                    waited = False
                    continue
                self._work.wait()
                waited = True
            # Leave idle threads their share: two one-core passes of half the texts beat one
            # two-core pass of all of them.
            idle = max(1, self._model.workers - self._busy)
            rows = min(self._limits.max_rows, -(-len(self._pending) // idle))
            batch = self._plan(self._pending[: self._limits.max_rows * 2], rows)
            chosen = set(map(id, batch))
            self._pending = [item for item in self._pending if id(item) not in chosen]
            self._busy += 1
            if self._pending:
                self._work.notify_all()
            return batch

    def _gather_more(self) -> None:
        """While busy, wait briefly for as many texts as the last batch had; never when idle.
        Holding the condition; waiting releases it, so texts keep arriving."""
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
        lengths = [len(item.ids) for item in window]
        if self._model.padding_free:
            count = oldest_first(lengths, max_rows=max_rows, max_tokens=self._limits.max_tokens)
            return window[:count]
        plan = plan_batches(
            lengths,
            max_rows=max_rows,
            max_tokens=self._limits.max_tokens,
            cost=self._cost,
            pad_multiple=self._model.pad_multiple,
        )
        return [window[i] for i in next(b for b in plan if 0 in b)]

    def _forward_batch(self, items: list[_Item]) -> _Outcome:
        """A model bug fails its batch, never the thread."""
        live = [item for item in items if not item.future.done()]
        if not live:
            return _Outcome(items=[], scores=[])
        rows = [item.ids for item in live]
        width = batch_width(self._model, rows)
        start = time.perf_counter()
        try:
            scores, oom = forward_splitting(self._model, rows)
        except Exception as exc:
            return _Outcome(live, [None] * len(live), width=width, error=exc)
        return _Outcome(live, scores, time.perf_counter() - start, width, start, oom)

    def _finish(self, outcome: _Outcome) -> None:
        """Back on the event loop: hand each text its scores or its error."""
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
                self._metrics.queue_wait.observe(max(0.0, outcome.started - item.enqueued))
        if count:
            self._record_batch(count, outcome.width, real, outcome.seconds)
        if outcome.out_of_memory:
            logger.warning("device out of memory: batch split and retried")

    def _record_batch(self, rows: int, width: int, real_tokens: int, seconds: float) -> None:
        padded = real_tokens if self._model.padding_free else rows * width
        m = self._metrics
        m.batch_size.observe(rows)
        m.batch_tokens.observe(padded)
        m.padding_efficiency.observe(real_tokens / padded if padded else 1.0)
        m.inference.observe(seconds)
        self._rate.observe(real_tokens, rows, seconds, self._model.workers)

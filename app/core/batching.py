"""Dynamic batching: inference threads merge queued texts into forward passes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.core.errors import Draining, InferenceFailed, ResourceExhausted
from app.core.passes import Admission, TokenRate, batch_width, forward_splitting
from app.core.planning import CostModel, Work, oldest_first, plan_batches
from app.engine.base import Classifier, FloatArray
from app.metrics import Metrics

logger = logging.getLogger(__name__)

_IDLE_GAP_S = 0.05  # after this long without a batch, the next text runs at once


@dataclass(frozen=True)
class BatchLimits:
    max_rows: int
    max_tokens: int
    max_wait_s: float
    max_queue_tokens: int
    timeout_s: float  # the request deadline: what admission must fit work into


@dataclass(eq=False)
class _Item:
    ids: list[int]
    future: asyncio.Future[FloatArray]
    deadline: float  # perf_counter time after which running it is wasted
    enqueued: float = field(default_factory=time.perf_counter)


def _runnable(now: float) -> Callable[[_Item], bool]:
    return lambda item: item.deadline > now and not item.future.done()


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
    """A queue bounded in tokens and in time, and the inference threads that drain it.

    Work is admitted only if it can end within its deadline: overload gets 503 at once, not
    504 later. Each thread takes its own next batch the moment its pass ends (dispatching
    from the event loop left threads idle behind the loop's other work)."""

    def __init__(
        self, model: Classifier, limits: BatchLimits, metrics: Metrics, cost: CostModel
    ) -> None:
        self._model = model
        self._limits = limits
        self._metrics = metrics
        self._cost = cost
        self._work = threading.Condition()  # guards the fields below; threads wait on it
        self._pending: list[_Item] = []
        self._queued = Work()  # what `_pending` holds
        self._running = Work()  # what the threads' passes hold now
        self._closed = False
        self._busy = 0
        self._last_rows = 0
        self._last_end = 0.0
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rate = TokenRate(
            cost, workers=model.workers, max_rows=limits.max_rows, max_tokens=limits.max_tokens
        )
        self._admission = Admission(self._rate, metrics, limits.max_queue_tokens, limits.timeout_s)
        metrics.queue_depth.set_function(lambda: len(self._pending))
        metrics.queue_tokens.set_function(lambda: self._queued.tokens)

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def queued_tokens(self) -> int:
        return self._queued.tokens

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
            self._queued = Work()
            self._work.notify_all()
        for item in pending:
            if not item.future.done():
                item.future.set_exception(Draining("the service is shutting down", retry_after=1))

    def retry_after(self, lengths: Sequence[int] = ()) -> int:
        """Seconds until the work ahead, plus texts of these token counts, would fit within
        a whole deadline (1 to 60)."""
        return self._admission.retry_after(self._queued + self._running + Work.of(lengths))

    def check_capacity(
        self, lengths: Sequence[int], deadline: float | None = None, *, exact: bool = True
    ) -> None:
        """Refuse work that cannot end in time (core/passes.py Admission). `lengths` are token
        counts; `exact=False`: upper bounds taken before tokenizing."""
        if self._closed:
            raise Draining("the service is shutting down", retry_after=1)
        left = (deadline if deadline is not None else self._deadline()) - time.perf_counter()
        self._admission.check(Work.of(lengths), self._queued, self._running, left, exact=exact)

    def _deadline(self) -> float:
        return time.perf_counter() + self._limits.timeout_s

    async def submit(
        self, rows: Sequence[list[int]], deadline: float | None = None
    ) -> list[FloatArray]:
        """Queue token rows and wait for their scores, in order, by `deadline` (perf_counter
        time; default one request timeout from now). Cancel to withdraw them."""
        deadline = deadline if deadline is not None else self._deadline()
        self.check_capacity([len(row) for row in rows], deadline)
        loop = asyncio.get_running_loop()
        items = [_Item(ids=row, future=loop.create_future(), deadline=deadline) for row in rows]
        with self._work:
            self._pending.extend(items)
            self._queued += Work.of(len(row) for row in rows)
            self._work.notify_all()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            # gather cancels the futures when the request is cancelled: those go too
            withdrawn = [i for i in items if not i.future.done() or i.future.cancelled()]
            for item in withdrawn:
                item.future.cancel()
            if withdrawn:  # out of the queue now, not when a thread looks
                gone = set(map(id, withdrawn))
                with self._work:
                    self._keep_pending(lambda item: id(item) not in gone)

    def _keep_pending(self, keep: Callable[[_Item], bool]) -> None:
        """Holding the condition: drop the queued texts `keep` refuses, and recount."""
        kept = [item for item in self._pending if keep(item)]
        if len(kept) != len(self._pending):
            self._pending = kept
            self._queued = Work.of(len(item.ids) for item in kept)

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
                        self._running -= Work.of(len(item.ids) for item in batch)
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
                self._keep_pending(_runnable(time.perf_counter()))  # none past its deadline
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
            taken = Work.of(len(item.ids) for item in batch)
            self._pending = [item for item in self._pending if id(item) not in chosen]
            self._queued -= taken
            self._running += taken
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
        now = time.perf_counter()
        live = [item for item in items if item.deadline > now and not item.future.done()]
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
        count = 0
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
                count += 1
                self._metrics.queue_wait.observe(max(0.0, outcome.started - item.enqueued))
        if count:
            self._record_batch([len(item.ids) for item in outcome.items], outcome)
        if outcome.out_of_memory:
            logger.warning("device out of memory: batch split and retried")

    def _record_batch(self, lengths: list[int], outcome: _Outcome) -> None:
        """Every text of the pass, answered or withdrawn meanwhile: all of them took its time."""
        real = sum(lengths)
        padded = real if self._model.padding_free else len(lengths) * outcome.width
        m = self._metrics
        m.batch_size.observe(len(lengths))
        m.batch_tokens.observe(padded)
        m.padding_efficiency.observe(real / padded if padded else 1.0)
        m.inference.observe(outcome.seconds)
        self._rate.observe(lengths, outcome.seconds)

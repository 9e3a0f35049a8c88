"""Thread logic driven directly with fakes: races between the inference threads
taking work, the out-of-memory retry, a model load cancelled by shutdown (faults a real
model cannot be made to show)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from app.batching import Batcher, BatchLimits, _Item
from app.metrics import Metrics
from app.planning import CostModel
from app.scoring import FloatArray


class OutOfMemoryAboveTwoRows:
    """Fails every pass of more than two rows the way CUDA does, from a frame that holds a
    tensor (the failed pass's activations); records what each call saw."""

    def __init__(self) -> None:
        self.failed_tensors: list[weakref.ref[torch.Tensor]] = []
        self.calls: list[tuple[int, int, int]] = []  # rows, width, failed tensors still alive

    def _run(self, rows: Sequence[Sequence[int]]) -> None:
        activations = torch.empty(1000)
        self.failed_tensors.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory")

    def forward(self, rows: Sequence[Sequence[int]], width: int, alone: bool = False) -> FloatArray:
        gc.collect()
        alive = sum(ref() is not None for ref in self.failed_tensors)
        self.calls.append((len(rows), width, alive))
        if len(rows) > 2:
            self._run(rows)
        return np.zeros((len(rows), 3), dtype=np.float32)

    def release_cached_memory(self) -> None:
        pass


def test_out_of_memory_retry_frees_the_failed_pass_and_pads_halves_to_their_own_width() -> None:
    model = OutOfMemoryAboveTwoRows()
    limits = BatchLimits(max_rows=8, max_tokens=1000, max_wait_s=0, max_queue=100, pad_multiple=8)
    batcher = Batcher(model, limits, Metrics(), CostModel())

    async def run() -> list[FloatArray | None]:
        loop = asyncio.get_running_loop()
        items = [_Item(ids=[1] * n, future=loop.create_future()) for n in (3, 3, 10, 10)]
        scores, out_of_memory = batcher._forward_splitting(items, 16, False)
        assert out_of_memory
        return scores

    scores = asyncio.run(run())
    assert all(s is not None for s in scores)
    # The halves ran at widths 8 and 16, and no failed pass's tensors were alive by then.
    assert model.calls == [(4, 16, 0), (2, 8, 0), (2, 16, 0)]


class Instant:
    def forward(self, rows: Sequence[Sequence[int]], width: int, alone: bool = False) -> FloatArray:
        return np.zeros((len(rows), 3), dtype=np.float32)

    def release_cached_memory(self) -> None:
        pass


@pytest.mark.parametrize("padding_free", [False, True])
def test_a_thread_that_lost_the_gathered_texts_waits_again(padding_free: bool) -> None:
    """Two secondary threads wake for one text and both gather; the one that finds the queue
    empty afterwards must go back to waiting, not plan an empty batch (which raised
    StopIteration in the padded planner and ran an empty pass in the padding-free one)."""
    limits = BatchLimits(
        max_rows=8, max_tokens=1000, max_wait_s=0.02, max_queue=100, workers=3,
        padding_free=padding_free,
    )  # fmt: skip
    batcher = Batcher(Instant(), limits, Metrics(), CostModel())
    taken: dict[int, object] = {}

    async def run() -> None:
        loop = asyncio.get_running_loop()
        # A busy server: thread 0 is mid-pass and the last pass had 4 rows.
        batcher._primary_busy, batcher._busy, batcher._last_rows = True, 1, 4

        def take(index: int) -> None:
            try:
                got = batcher._take_batch(index)
                taken[index] = None if got is None else len(got[0])
            except BaseException as exc:  # whatever it was, the assertions show it
                taken[index] = repr(exc)

        threads = [threading.Thread(target=take, args=(i,)) for i in (1, 2)]
        for t in threads:
            t.start()
        await asyncio.sleep(0.05)  # both wait for work
        with batcher._work:
            batcher._last_end = time.perf_counter()  # a pass just ended: the woken gather
            batcher._pending.append(_Item(ids=[1, 2, 3], future=loop.create_future()))
            batcher._work.notify_all()
        await asyncio.sleep(0.2)  # one took the text; the other must be waiting again
        assert sorted(map(str, taken.values())) == ["1"]
        await batcher.stop()  # closing wakes the waiting one, which takes nothing
        for t in threads:
            t.join(5)
        assert sorted(map(str, taken.values())) == ["1", "None"]

    asyncio.run(run())


def test_a_load_cancelled_by_shutdown_ends_its_thread_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.startup import in_daemon_thread

    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    finished = threading.Event()

    def slow_load() -> str:
        time.sleep(0.2)
        finished.set()
        return "loaded"

    async def run() -> None:
        task = asyncio.create_task(in_daemon_thread(slow_load))
        await asyncio.sleep(0.05)
        task.cancel()  # what a shutdown during the model load does
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert finished.wait(5)
    time.sleep(0.1)  # let the thread hand over its result
    assert errors == []


class Recording(Instant):
    def __init__(self, rows_back: int | None = None) -> None:
        self.widths: list[int] = []
        self.rows_back = rows_back

    def forward(self, rows: Sequence[Sequence[int]], width: int, alone: bool = False) -> FloatArray:
        self.widths.append(width)
        n = len(rows) if self.rows_back is None else self.rows_back
        return np.zeros((n, 3), dtype=np.float32)


def _items(loop: asyncio.AbstractEventLoop, *lengths: int) -> list[_Item]:
    return [_Item(ids=[1] * n, future=loop.create_future()) for n in lengths]


def test_padding_to_a_multiple_stops_at_the_model_limit() -> None:
    """A position table of 514 (not a multiple of 8): a 514-token text runs at width 514,
    not 520, which would index past the table."""
    model = Recording()
    limits = BatchLimits(
        max_rows=8, max_tokens=10_000, max_wait_s=0, max_queue=100, pad_multiple=8,
        max_width=514,
    )  # fmt: skip
    batcher = Batcher(model, limits, Metrics(), CostModel())

    async def run() -> None:
        loop = asyncio.get_running_loop()
        batcher._forward_batch(_items(loop, 514, 3))
        batcher._forward_batch(_items(loop, 500))

    asyncio.run(run())
    assert model.widths == [514, 504]


def test_a_model_returning_the_wrong_number_of_rows_fails_its_batch_at_once() -> None:
    limits = BatchLimits(max_rows=8, max_tokens=1000, max_wait_s=0, max_queue=100)
    batcher = Batcher(Recording(rows_back=1), limits, Metrics(), CostModel())

    async def run() -> None:
        outcome = batcher._forward_batch(_items(asyncio.get_running_loop(), 3, 4))
        assert outcome.error is not None and "1 rows for 2 texts" in str(outcome.error)

    asyncio.run(run())


def test_retry_after_counts_the_queued_tokens_not_the_texts() -> None:
    """Recent passes ran short texts (100 tokens each, 400 tokens/s); eight 500-token texts
    queued take ten seconds, not the two that a texts-per-second rate would promise."""
    limits = BatchLimits(max_rows=8, max_tokens=10_000, max_wait_s=0, max_queue=100)
    batcher = Batcher(Instant(), limits, Metrics(), CostModel())
    assert batcher.retry_after(3) == 3  # nothing measured yet: one text a second
    batcher._record_batch(rows=4, width=100, real_tokens=400, seconds=1.0)

    async def run() -> None:
        batcher._pending.extend(_items(asyncio.get_running_loop(), *[500] * 8))
        assert batcher.retry_after() == 10
        assert batcher.retry_after(4) == 11  # plus four texts of the recent mean length

    asyncio.run(run())

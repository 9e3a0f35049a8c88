"""The batcher's thread logic driven directly with the fake classifier: races between the
inference threads taking work, the out-of-memory retry, the padded width, Retry-After, and a
model load cancelled by shutdown (faults a real model cannot be made to show)."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import pytest

from app.core import batching
from app.core.batching import Batcher, BatchLimits
from app.core.bringup import in_daemon_thread
from app.core.errors import InferenceFailed
from app.core.passes import batch_width, forward_splitting
from app.core.planning import CostModel
from app.engine.base import DeviceOutOfMemory, FloatArray
from app.metrics import Metrics
from tests.conftest import until
from tests.fakes import FakeClassifier

pytestmark = pytest.mark.anyio


def _limits(max_wait_s: float = 0.0, timeout_s: float = 10.0) -> BatchLimits:
    return BatchLimits(
        max_rows=8,
        max_tokens=10_000,
        max_wait_s=max_wait_s,
        max_queue_tokens=100_000,
        timeout_s=timeout_s,
    )


class _Activations:
    """Stands in for the tensors of a pass that ran out of memory."""


def test_out_of_memory_retry_frees_the_failed_pass_and_pads_halves_to_their_own_width() -> None:
    fake = FakeClassifier(padding_free=False)
    fake.pad_multiple = 8
    failed: list[weakref.ref[_Activations]] = []
    alive_at_each_pass: list[int] = []

    def on_pass(rows: Sequence[Sequence[int]]) -> None:
        if failed:
            gc.collect()
        alive_at_each_pass.append(sum(ref() is not None for ref in failed))
        if len(rows) > 2:
            activations = _Activations()  # held by this frame, so by the traceback
            failed.append(weakref.ref(activations))
            raise DeviceOutOfMemory("fake: CUDA out of memory")

    fake.on_pass = on_pass
    rows = [[1] * n for n in (3, 3, 10, 10)]
    scores, out_of_memory = forward_splitting(fake, rows)
    assert out_of_memory and len(failed) == 1
    # The halves ran at widths 8 and 16, and the failed pass's objects were gone by then.
    assert fake.batches == [(4, 16), (2, 8), (2, 16)]
    assert alive_at_each_pass == [0, 0, 0]
    assert fake.released == 1
    fake.on_pass = None
    for row, score in zip(rows, scores, strict=True):  # each row's own scores, in order
        assert score is not None
        np.testing.assert_array_equal(score, fake.forward([row], len(row))[0])


def test_a_row_out_of_memory_alone_gets_none_and_the_others_their_scores() -> None:
    fake = FakeClassifier()

    def no_memory_for_long_rows(rows: Sequence[Sequence[int]]) -> None:
        if any(len(row) > 5 for row in rows):
            raise DeviceOutOfMemory("fake")

    fake.on_pass = no_memory_for_long_rows
    scores, out_of_memory = forward_splitting(fake, [[1] * 3, [1] * 9, [1] * 4])
    assert out_of_memory
    assert [s is None for s in scores] == [False, True, False]


@pytest.mark.parametrize("padding_free", [False, True])
async def test_a_thread_that_lost_the_gathered_texts_waits_again(
    padding_free: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two idle threads of a busy server wake for one text and both gather; the one that finds
    the queue empty afterwards must go back to waiting, not plan an empty batch (which raised
    StopIteration in the padded planner and ran an empty pass in the padding-free one)."""
    monkeypatch.setattr(batching, "_IDLE_GAP_S", 10.0)  # a slow machine still counts as busy
    caplog.set_level(logging.ERROR)
    hold_id, pair_id = 7, 8
    hold, pair = threading.Event(), threading.Event()

    def on_pass(rows: Sequence[Sequence[int]]) -> None:
        if rows[0][0] == hold_id:
            hold.wait(10)
        elif rows[0][0] == pair_id:
            pair.wait(10)

    fake = FakeClassifier(workers=3, padding_free=padding_free)
    fake.on_pass = on_pass
    batcher = Batcher(fake, _limits(max_wait_s=0.05), Metrics(), CostModel())
    batcher.start()
    try:
        held = asyncio.ensure_future(batcher.submit([[hold_id]]))  # one thread stays busy
        await until(lambda: len(fake.batches) == 1)
        both = asyncio.ensure_future(batcher.submit([[pair_id, 1]] * 4))
        await until(lambda: len(fake.batches) == 3)
        assert [count for count, _ in fake.batches] == [1, 2, 2]
        pair.set()
        await asyncio.wait_for(both, 5)  # both threads just ended a two-text pass
        await asyncio.sleep(0.05)  # ...and are back waiting (nothing signals that)
        # One text: both wake and gather for two, then one takes it and one waits again.
        lone = await asyncio.wait_for(batcher.submit([[9, 9, 9]]), 5)
        assert len(lone) == 1
        assert [count for count, _ in fake.batches] == [1, 2, 2, 1]
        assert batcher.alive
        assert await asyncio.wait_for(batcher.submit([[9, 9]]), 5)  # still served
        hold.set()
        await asyncio.wait_for(held, 5)
    finally:
        hold.set()
        pair.set()
        await batcher.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert 0 not in [count for count, _ in fake.batches]


async def test_a_load_cancelled_by_shutdown_ends_its_thread_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    started, proceed = threading.Event(), threading.Event()
    loaders: list[threading.Thread] = []

    def slow_load() -> str:
        loaders.append(threading.current_thread())
        started.set()
        proceed.wait(10)
        return "loaded"

    task = asyncio.ensure_future(in_daemon_thread(slow_load))
    await until(started.is_set)
    task.cancel()  # what a shutdown during the model load does
    with pytest.raises(asyncio.CancelledError):
        await task
    proceed.set()  # the load ends after all and hands over its result
    loaders[0].join(5)
    assert not loaders[0].is_alive()
    assert errors == []


def test_padding_to_a_multiple_stops_at_the_model_limit() -> None:
    """A position table of 514 (not a multiple of 8): a 514-token text runs at width 514,
    not 520, which would index past the table."""
    fake = FakeClassifier(padding_free=False, max_length=514)
    fake.pad_multiple = 8
    assert batch_width(fake, [[1] * 514, [1] * 3]) == 514
    assert batch_width(fake, [[1] * 500]) == 504
    forward_splitting(fake, [[1] * 514, [1] * 3])
    forward_splitting(fake, [[1] * 500])
    assert fake.batches == [(2, 514), (1, 504)]


class _OneRowShort(FakeClassifier):
    def forward(self, rows: Sequence[Sequence[int]], width: int) -> FloatArray:
        return super().forward(rows[:-1], width)


async def test_a_model_returning_the_wrong_number_of_rows_fails_its_batch_at_once() -> None:
    fake = _OneRowShort()
    with pytest.raises(RuntimeError, match="1 rows for 2 texts"):
        forward_splitting(fake, [[1] * 3, [1] * 4])
    batcher = Batcher(fake, _limits(), Metrics(), CostModel())
    batcher.start()
    try:
        # InferenceFailed (500) now, not a wait for the request's deadline.
        with pytest.raises(InferenceFailed):
            await asyncio.wait_for(batcher.submit([[1] * 3, [1] * 4]), 5)
        assert batcher.alive
    finally:
        await batcher.stop()


async def test_retry_after_is_the_time_the_work_ahead_needs_beyond_the_deadline() -> None:
    """The cost model prices tokens, recent passes scale it, and what runs or waits ahead
    counts: Retry-After is when the work would fit in 70 % of the 4 s deadline (2.8 s)."""
    fake = FakeClassifier(max_length=512, pass_seconds=0.41)
    metrics = Metrics()
    cost = CostModel(per_batch_s=0.01, per_token_s=0.001)  # one pass of 8 rows at most
    batcher = Batcher(fake, _limits(timeout_s=4.0), metrics, cost)
    # Nothing measured yet: the model alone. 8 x 500 tokens: 0.01 + 4 s.
    assert batcher.retry_after([500] * 8) == math.ceil(4.01 - 2.8) == 2
    assert batcher.retry_after([100] * 8) == 1  # 0.81 s fits already
    batcher.start()
    fake.gate = threading.Event()
    fake.gate.set()
    held = queued = None
    try:
        await asyncio.wait_for(batcher.submit([[1] * 100] * 4), 5)
        seconds = metrics.registry.get_sample_value("textclf_inference_seconds_sum")
        assert seconds is not None and seconds >= 0.41
        slowdown = seconds / (0.01 + 0.4)  # measured over the model's 0.41 s for that pass
        assert batcher.retry_after([500] * 8) == math.ceil(4.01 * slowdown - 2.8)
        fake.pass_seconds = 0
        fake.gate.clear()
        held = asyncio.ensure_future(batcher.submit([[1] * 10]))
        await until(lambda: len(fake.batches) == 2)
        queued = asyncio.ensure_future(batcher.submit([[1] * 500] * 4))
        await until(lambda: batcher.queued == 4)
        assert batcher.queued_tokens == 2000
        # The held pass, the queue and four more texts: 9 rows, two passes.
        ahead = 2 * 0.01 + 0.001 * (10 + 2000 + 2000)
        assert batcher.retry_after([500] * 4) == math.ceil(ahead * slowdown - 2.8) >= 2
    finally:
        fake.gate.set()
        for waiting in (held, queued):
            if waiting is not None:
                await asyncio.wait_for(waiting, 5)
        await batcher.stop()

"""Faults a real model cannot be made to show, injected through the engine protocol."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from tests.fakes import FakeClassifier

pytestmark = pytest.mark.anyio

_HANG = "this text hangs the model"


async def test_a_hung_forward_pass_ends_in_504_while_other_requests_flow(
    start_app, fake_settings, fake: FakeClassifier
) -> None:
    """One inference thread stuck in a pass that never returns: its request gets 504 at the
    deadline, the other thread keeps serving, and liveness stays up (the process is not
    broken, one pass is slow)."""
    release = threading.Event()
    hang_ids = fake.tokenize([_HANG], truncate=True)[0].ids

    def hang(rows: Sequence[Sequence[int]]) -> None:
        if any(list(row) == hang_ids for row in rows):
            release.wait(30)

    fake.workers = 2
    fake.on_pass = hang
    api = await start_app(
        fake_settings(request_timeout_s=1.0, max_batch_size=1), factory=fake.factory
    )
    try:
        stuck = asyncio.ensure_future(api.client.post("/predict", json={"text": _HANG}))
        await asyncio.sleep(0.1)  # the hung pass has started on one thread
        loop = asyncio.get_running_loop()
        started = loop.time()
        flowing = [await api.client.post("/predict", json={"text": f"fine {i}"}) for i in range(20)]
        assert [r.status_code for r in flowing] == [200] * 20
        assert loop.time() - started < 1.0  # served beside the hung pass, not after it
        answer = await stuck
        assert answer.status_code == 504 and answer.json()["error_type"] == "timeout"
        assert _HANG not in answer.text
        assert (await api.client.get("/health")).status_code == 200
        assert api.metric("textclf_rejections_total", {"reason": "deadline"}) == 1
    finally:
        release.set()


async def test_memory_is_released_once_after_work_and_never_while_busy(
    start_app, fake_settings, fake: FakeClassifier
) -> None:
    """glibc keeps the pages large passes freed (RSS stayed near 1 GB after floods): the engine
    is told to give them back once the service has gone quiet after serving, not before."""
    from app.core.idle import release_memory_when_idle

    api = await start_app(fake_settings(), factory=fake.factory)
    lifecycle = api.app.state.lifecycle
    housekeeping = asyncio.ensure_future(release_memory_when_idle(lifecycle, check_s=0.05))
    try:
        await asyncio.sleep(0.2)
        assert fake.released == 0  # nothing served yet: nothing to give back
        release = threading.Event()
        fake.gate = release
        busy = asyncio.ensure_future(api.client.post("/predict", json={"text": "held"}))
        await asyncio.sleep(0.3)
        assert fake.released == 0  # a request in flight for several intervals
        release.set()
        assert (await busy).status_code == 200
        await asyncio.sleep(0.3)
        assert fake.released == 1
        await asyncio.sleep(0.2)
        assert fake.released == 1  # once per quiet spell
    finally:
        housekeeping.cancel()

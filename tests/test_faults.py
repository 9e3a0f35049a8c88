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

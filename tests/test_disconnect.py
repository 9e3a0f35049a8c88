"""A client hanging up: the route's guard drops the work (anything else passes through), and
through the whole app a hang-up is a 499 whose texts never run."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from app.core.errors import ClientGone
from app.http.predict_route import unless_disconnected
from tests.conftest import done_within, predict_scope, until

pytestmark = pytest.mark.anyio


class _Client:
    """Stands in for a Starlette request: receive() reports a disconnect once told to, and
    says when the guard stopped listening."""

    def __init__(self) -> None:
        self.hang_up = asyncio.Event()
        self.stopped_listening = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        try:
            await self.hang_up.wait()
        except asyncio.CancelledError:
            self.stopped_listening.set()
            raise
        return {"type": "http.disconnect"}


async def test_a_hang_up_cancels_the_work_and_raises_client_gone() -> None:
    client = _Client()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def handler() -> tuple[int, int]:
        with pytest.raises(ClientGone) as gone:
            await unless_disconnected(client, work(), texts=3)  # type: ignore[arg-type]
        task = asyncio.current_task()
        assert task is not None
        return gone.value.texts, task.cancelling()  # our own cancellation is off the books

    running = asyncio.ensure_future(handler())
    await started.wait()
    client.hang_up.set()
    assert await done_within(running) == (3, 0)
    assert cancelled.is_set()


async def test_finished_work_returns_and_stops_the_watcher() -> None:
    client = _Client()

    async def work() -> str:
        await asyncio.sleep(0)
        return "scores"

    result = await unless_disconnected(client, work(), texts=1)  # type: ignore[arg-type]
    assert result == "scores"
    await asyncio.wait_for(client.stopped_listening.wait(), 5)


async def test_an_error_of_the_work_passes_through() -> None:
    client = _Client()

    async def work() -> str:
        await asyncio.sleep(0)  # the watcher starts listening
        raise ValueError("the work's own error")

    with pytest.raises(ValueError, match="own error"):
        await unless_disconnected(client, work(), texts=1)  # type: ignore[arg-type]
    await asyncio.wait_for(client.stopped_listening.wait(), 5)


async def test_a_cancellation_from_outside_is_not_taken_for_a_hang_up() -> None:
    client = _Client()
    started = asyncio.Event()

    async def work() -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    running = asyncio.ensure_future(
        unless_disconnected(client, work(), texts=1)  # type: ignore[arg-type]
    )
    await started.wait()
    running.cancel()  # e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_client_that_hangs_up_while_queued_gets_499_and_its_texts_never_run(
    start_app, fake_settings, fake
) -> None:
    fake.gate = threading.Event()
    ran: list[list[int]] = []

    def record(rows: Sequence[Sequence[int]]) -> None:
        ran.extend(list(row) for row in rows)

    fake.on_pass = record
    api = await start_app(fake_settings(), factory=fake.factory)
    batcher = api.app.state.lifecycle.service.batcher
    blocker = asyncio.create_task(api.client.post("/predict", json={"text": "good"}))
    await until(lambda: len(fake.batches) == 1)  # the only thread is held in a pass

    body = b'{"texts": ["bad film", "not bad at all"]}'
    hang_up = asyncio.Event()
    delivered = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    request = asyncio.create_task(api.app(predict_scope(len(body)), receive, send))
    await until(lambda: batcher.queued == 2)
    hang_up.set()
    await done_within(request)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert api.metric("textclf_rejections_total", {"reason": "client_gone"}) == 2
    assert api.metric("textclf_requests_total", {"route": "/predict", "status": "499"}) == 1

    fake.gate.set()
    assert (await blocker).status_code == 200
    assert (await api.client.post("/predict", json={"text": "fine"})).status_code == 200
    texts_run = [fake.tokenize([t], truncate=True)[0].ids for t in ("good", "fine")]
    assert ran == texts_run

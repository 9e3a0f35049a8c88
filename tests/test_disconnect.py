"""The route's disconnect guard: a hang-up drops the work, anything else passes through."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.errors import ClientGone
from app.routes import _unless_disconnected

pytestmark = pytest.mark.anyio


class _Client:
    """Stands in for a Starlette request: receive() reports a disconnect once told to."""

    def __init__(self) -> None:
        self.hang_up = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.hang_up.wait()
        return {"type": "http.disconnect"}


async def test_a_hang_up_cancels_the_work_and_raises_client_gone() -> None:
    client = _Client()
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def handler() -> int:
        with pytest.raises(ClientGone):
            await _unless_disconnected(client, work())  # type: ignore[arg-type]
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()  # our own cancellation must not stay on the books

    running = asyncio.ensure_future(handler())
    await asyncio.sleep(0.01)
    client.hang_up.set()
    assert await running == 0
    assert cancelled.is_set()


async def test_finished_work_returns_and_stops_the_watcher() -> None:
    client = _Client()

    async def work() -> str:
        await asyncio.sleep(0)
        return "scores"

    assert await _unless_disconnected(client, work()) == "scores"  # type: ignore[arg-type]
    client.hang_up.set()  # a hang-up after the answer must not cancel anything now
    await asyncio.sleep(0.01)


async def test_a_cancellation_from_outside_is_not_taken_for_a_hang_up() -> None:
    client = _Client()
    started = asyncio.Event()

    async def work() -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    running = asyncio.ensure_future(_unless_disconnected(client, work()))  # type: ignore[arg-type]
    await started.wait()
    running.cancel()  # e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await running

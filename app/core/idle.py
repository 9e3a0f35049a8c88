"""Housekeeping while no request runs."""

from __future__ import annotations

import asyncio

from app.core.lifecycle import Lifecycle

IDLE_CHECK_S = 2.0


async def release_memory_when_idle(lifecycle: Lifecycle, check_s: float = IDLE_CHECK_S) -> None:
    """Once requests were served and then none ran for a whole check interval, let the engine
    give back the memory their passes freed (never while one runs: the next pass would have
    to fault it in again)."""
    released_at = finished = lifecycle.finished
    while True:
        await asyncio.sleep(check_s)
        quiet = lifecycle.in_flight == 0 and lifecycle.finished == finished
        finished = lifecycle.finished
        service = lifecycle.service
        if quiet and finished != released_at and service is not None:
            released_at = finished
            await asyncio.to_thread(service.classifier.release_cached_memory)

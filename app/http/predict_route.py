"""The route class of /predict: what must happen before FastAPI reads and validates the body."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from app.core.errors import ClientGone, UnsupportedMediaType
from app.core.lifecycle import Lifecycle

T = TypeVar("T")


class _JSONRequest(Request):
    """Bodies parsed with orjson: strict UTF-8, and its errors are `JSONDecodeError`s, which
    FastAPI answers as a 422."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class PredictRoute(APIRoute):
    """Counts the request as in flight from its first byte (a drain waits for every request
    that arrived before it), refuses non-JSON bodies with 415, and turns a client hanging up
    mid-upload into a 499 instead of a 400 (FastAPI's answer to an unreadable body)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def admit(request: Request) -> Response:
            lifecycle: Lifecycle = request.app.state.lifecycle
            with lifecycle.track() as admitted:
                request.state.admitted_before_drain = admitted
                content_type = request.headers.get("content-type", "").split(";")[0].strip()
                if content_type and not content_type.lower().endswith(("/json", "+json")):
                    raise UnsupportedMediaType(
                        "send the body as JSON with Content-Type: application/json"
                    )
                json_request = _JSONRequest(request.scope, request.receive)
                try:
                    await json_request.body()
                except ClientDisconnect:
                    raise ClientGone(texts=1) from None
                return await handler(json_request)

        return admit


async def unless_disconnected(request: Request, work: Awaitable[T], texts: int) -> T:
    """Await `work` in this task, but give it up as soon as the client hangs up (one watcher
    task cancels this one; `uncancel` keeps the cancellation from leaking outside)."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientGone(texts) from None
    finally:
        watcher.cancel()

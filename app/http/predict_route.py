"""The route class of /predict: what must happen before FastAPI reads and validates the body."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from app.config import Settings
from app.core.errors import ClientGone, InvalidInput, UnsupportedMediaType
from app.core.lifecycle import Lifecycle
from app.core.service import check_limits
from app.http.security import key_check

T = TypeVar("T")


_FIELDS = frozenset(("text", "texts", "top_k", "truncate"))
_SCALARS = (str, int, float, bool, type(None))


class _Repeated(Exception):
    pass


def _pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise _Repeated
    return dict(pairs)


def _repeats_a_field(body: bytes, data: dict[str, Any]) -> bool:
    """Whether a key appears twice in the body (orjson keeps the last silently). Checked
    only for a body pydantic would otherwise accept (known fields, flat values): anything
    else is refused anyway. The standard library's parser reports every key; it costs about
    as much as orjson's parse again (microseconds for a usual body, under a millisecond for
    the largest), less than scanning the raw bytes for each field name."""
    for key, value in data.items():
        if key not in _FIELDS:
            return False
        items = value if key == "texts" and isinstance(value, list) else [value]
        if not all(isinstance(item, _SCALARS) for item in items):
            return False
    try:
        json.loads(body, object_pairs_hook=_pairs_once)
    except _Repeated:
        return True
    return False


class _JSONRequest(Request):
    """Bodies parsed with orjson (strict UTF-8; its errors are `JSONDecodeError`s, which
    FastAPI answers as a 422), then held to the item and character limits and to one value
    per field before pydantic looks at any item: a megabyte of tiny items would otherwise be
    validated one by one on the event loop. `PredictRoute` reads the body before FastAPI's
    handler, so these refusals are domain errors with their own status and message."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            body = await super().body()
            if body:
                try:
                    self._json = orjson.loads(body)
                except orjson.JSONDecodeError:
                    pass  # json() raises it again, inside FastAPI's handler: its usual 422
                else:
                    self._check(body, self._json)
        return self._body

    def texts(self) -> list[str]:
        """The body's texts once `body()` has parsed it (empty when it is not a request)."""
        data = getattr(self, "_json", None)
        if not isinstance(data, dict):
            return []
        text, texts = data.get("text"), data.get("texts")
        if isinstance(text, str):
            return [text]
        return [t for t in texts if isinstance(t, str)] if isinstance(texts, list) else []

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json

    def _check(self, body: bytes, data: Any) -> None:
        if not isinstance(data, dict):
            return  # one validation error, whatever the size
        settings: Settings = self.app.state.settings
        texts, text = data.get("texts"), data.get("text")
        if isinstance(texts, list):
            check_limits(texts, settings, field="texts")
        if isinstance(text, str):
            check_limits([text], settings, field="text")
        if _repeats_a_field(body, data):
            raise InvalidInput("a field appears more than once in the body; give each once")


class PredictRoute(APIRoute):
    """Counts the request as in flight from its first byte (a drain waits for every request
    that arrived before it), refuses non-JSON bodies with 415, and turns a client hanging up
    mid-upload into a 499 instead of a 400 (FastAPI's answer to an unreadable body)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def admit(request: Request) -> Response:
            key_check(request).check(request)  # before a byte of a stranger's body is read
            lifecycle: Lifecycle = request.app.state.lifecycle
            with lifecycle.track() as admitted:
                request.state.admitted_before_drain = admitted
                content_type = request.headers.get("content-type", "").split(";")[0].strip()
                if content_type and not content_type.lower().endswith(("/json", "+json")):
                    raise UnsupportedMediaType(
                        "send the body as JSON with Content-Type: application/json"
                    )
                # With keys or CORS on, a body without a type could be a browser's cross-site
                # "simple" request (no preflight): refuse it instead of reading it as JSON.
                if not content_type and request.app.state.content_type_required:
                    raise UnsupportedMediaType(
                        "a Content-Type: application/json header is required"
                    )
                json_request = _JSONRequest(request.scope, request.receive)
                try:
                    await json_request.body()
                except ClientDisconnect:
                    raise ClientGone(texts=1) from None
                service, texts = lifecycle.service, json_request.texts()
                if service is not None and texts:
                    # The service's own check before tokenizing, made before FastAPI validates
                    # the body: under a 4x overload validation is much of what a refusal costs.
                    service.batcher.check_capacity(service.token_bounds(texts), exact=False)
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

"""Pure ASGI middleware: request ids, per-request metrics and logs, and the body-size limit."""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import PayloadTooLarge
from app.http.handlers import service_error_response
from app.metrics import Metrics

logger = logging.getLogger("app.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _new_request_id() -> str:
    """32 random hex digits: a log correlation id needs no cryptographic source (uuid4's
    os.urandom call is a visible share of the event loop's time under load)."""
    return f"{random.getrandbits(128):032x}"


class RequestContextMiddleware:
    """Echo or create X-Request-ID, count and time every request, log one line (no content)."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, known_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.metrics = metrics
        # A request refused before routing (413) still counts under its route when the path
        # is one of the app's; anything else is "unmatched", so the label set stays bounded.
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.fullmatch(given) else _new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in self.known_paths else "unmatched"
            )
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.request_duration.labels(path).observe(elapsed)
            if path not in _QUIET_ROUTES or status >= 400:
                logger.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    path,
                    status,
                    elapsed * 1000,
                    extra={"request_id": request_id, "status": status, "route": path},
                )


class BodyLimitMiddleware:
    """413 for bodies over the limit, declared or streamed, before any of it is parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # No length given (chunked): read it all, within the limit, then replay it.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]
        await self.app(scope, _replay(replay, receive), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = scope.get("state", {}).get("request_id")
        error = PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
        response = service_error_response(error, request_id)
        response.headers["connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    queue: list[Any] = list(messages)

    async def receive() -> Message:
        if queue:
            message: Message = queue.pop(0)
            return message
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive

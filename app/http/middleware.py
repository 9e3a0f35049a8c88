"""Pure ASGI middleware: request ids, security headers, per-request metrics and logs, and
the body-size limit."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import PayloadTooLarge
from app.http.handlers import SECURITY_HEADERS, service_error_response
from app.metrics import Metrics

logger = logging.getLogger("app.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
# Added unless the route set its own (the /docs page its CSP, its assets their caching).
_API_DEFAULTS = (
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)
_SECURITY_HEADERS = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS]


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
        self.error_lines = ErrorLineThrottle()

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
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [item for item in _API_DEFAULTS if item[0] not in present]
                headers += _SECURITY_HEADERS
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
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
            self.error_lines.flush()
            if self.error_lines.admit(path, status) if status >= 400 else path not in _QUIET_ROUTES:
                logger.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    path,
                    status,
                    elapsed * 1000,
                    extra={"request_id": request_id, "status": status, "route": path},
                )


class ErrorLineThrottle:
    """At most one access-log line per (route, status) of an error answer per `interval_s`.

    A flood of 404s or 503s would otherwise write a line each; the lines held back are
    counted and reported as one "N similar lines suppressed" line per interval (metrics still
    count every request). Routes and statuses are bounded sets, so are these dicts."""

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._logged_at: dict[tuple[str, int], float] = {}
        self._held: dict[tuple[str, int], int] = {}

    def admit(self, route: str, status: int) -> bool:
        """Whether this error answer gets its own line now."""
        key = (route, status)
        now = self._clock()
        last = self._logged_at.get(key)
        if last is None or now - last >= self.interval_s:
            self._logged_at[key] = now
            return True
        self._held[key] = self._held.get(key, 0) + 1
        return False

    def flush(self) -> None:
        """Report the lines held back for a full interval (a dict check when there are none)."""
        if not self._held:
            return
        now = self._clock()
        for key, count in list(self._held.items()):
            if now - self._logged_at[key] >= self.interval_s:
                del self._held[key]
                route, status = key
                logger.info(
                    "%d similar lines suppressed: %s %d within %.0f s",
                    count,
                    route,
                    status,
                    self.interval_s,
                    extra={"route": route, "status": status, "suppressed": count},
                )


class BodyLimitMiddleware:
    """413 for bodies over the limit: a declared one before any of it is read, a streamed
    (chunked) one as soon as the bytes read pass it. Nothing here reads a body itself, so a
    request refused before its body (a missing API key) never costs the upload."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
            response = service_error_response(error, scope.get("state", {}).get("request_id"))
            response.headers["connection"] = "close"  # the body is never read
            await response(scope, receive, send)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        read = 0
        over = False

        async def counted() -> Message:
            nonlocal read, over
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:
                    over = True  # the reader's 413 (handlers.py) then closes the connection
                    raise PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
            return message

        async def send_closing(message: Message) -> None:
            if over and message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, counted, send_closing)

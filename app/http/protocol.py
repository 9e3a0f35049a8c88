"""The HTTP/1.1 connection: uvicorn's httptools protocol plus what a port facing clients
needs (header and body deadlines, header limits, a connection cap), JSON answers for what
never reaches the app, and a drain that closes keep-alive connections without resets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections import Counter
from collections.abc import Iterable
from typing import ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE as STATUS
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.config import Settings
from app.http.handlers import error_body

logger = logging.getLogger("app.access")

# How long a refused connection's input is still read (and dropped) before the close: closing
# with unread input sends a TCP reset, which can destroy the answer before the client reads it.
LINGER_S = 1.0
# When uvicorn stops, how long a connection that has sent nothing may still send a request
# (answered 503 draining): it may be on its way already.
LAST_CALL_S = 0.5
RETRY_AFTER_S = 1
DRAINING = "the service is shutting down; retry on another replica"


class ConnectionGuard:
    """What the connections of one server share: its limits, and whether it is draining."""

    def __init__(self, settings: Settings) -> None:
        self.max_connections = settings.max_connections
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.too_large = f"headers over {self.max_header_bytes} bytes or {self.max_headers} fields"
        self.draining = False

    def protocol_class(self) -> type[GuardedHttpProtocol]:
        """The class to pass to `uvicorn.Config(http=...)`, bound to this guard."""
        return type("BoundGuardedHttpProtocol", (GuardedHttpProtocol,), {"guard": self})

    def begin_drain(self, connections: Iterable[object]) -> None:
        """From now on every response closes its connection; idle ones close at once."""
        self.draining = True
        states = Counter(c.drain() for c in list(connections) if isinstance(c, GuardedHttpProtocol))
        logger.info("drain: connections %s", dict(states))

    def end_grace(self, connections: Iterable[object]) -> None:
        """The grace period is over: uploads still arriving are answered 503 and closed."""
        for connection in list(connections):
            if isinstance(connection, GuardedHttpProtocol):
                connection.abort_upload()


class _HeadTooLarge(Exception):
    """Raised in a parser callback; httptools re-raises it as the context of its own error."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """One client connection. Timers are `call_later` handles, armed only while a request's
    head or body is incomplete after a read; a request that arrives in one read arms none."""

    guard: ClassVar[ConnectionGuard]

    _in_head = False  # a request has begun and its headers are incomplete
    _in_body = False  # headers done, body incomplete
    _discarding = False  # refused or upgraded: input is dropped until the close
    _completed_in_read = False  # a request ended in the current read (pipelining)
    _head_bytes = 0  # received in earlier reads of the head in progress
    _read_size = 0
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _close_timer: asyncio.TimerHandle | None = None
    _after_response: bytes | None = None  # a refusal waiting for the response in progress

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.guard.max_connections:
            self._refuse(503, "too many open connections; retry shortly", "overloaded", True)
        else:
            self._watch_head(self.guard.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._unset_keepalive_if_required()
        self._completed_in_read = False
        self._read_size = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No upgrade is served: the app got it as plain HTTP; the connection ends after it.
            self._discarding = True
            self.cycle.keep_alive = False
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(431, self.guard.too_large, "headers_too_large")
            else:
                self._refuse(400, "malformed HTTP request", "bad_request")
            return
        if self._in_head:
            if not self._completed_in_read:  # else part of this read was an earlier request
                self._head_bytes += len(data)
            if self._head_bytes > self.guard.max_header_bytes:
                self._refuse(431, self.guard.too_large, "headers_too_large")
                return
        if self._in_body:
            self._watch_body()
        elif self._head_timer is None and (self._in_head or self._idle()):
            # Stray bytes on an idle connection cancelled its keep-alive timer: bound it again.
            self._watch_head(self.guard.header_timeout_s)

    # Parser callbacks: a few attribute updates per request on top of uvicorn's own.

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        if len(self.headers) > self.guard.max_headers:
            raise _HeadTooLarge
        # The reads of this head bound its size: most come in one read under it, never summed.
        if self._head_bytes + self._read_size > self.guard.max_header_bytes:
            size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
            if size > self.guard.max_header_bytes:
                raise _HeadTooLarge
        self._in_head, self._in_body = False, True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if self.guard.draining:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._in_body, self._completed_in_read = False, True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._after_response is not None and not self.pipeline:
            self.server_state.total_requests += 1
            self._answer_and_close(self._after_response)
            return
        super().on_response_complete()
        self._watch_body()  # a pipelined request's turn came: its body may arrive now

    # Drain

    def drain(self) -> str:
        """Close now when idle, else after the response in progress or about to be made."""
        if self._discarding:
            return "closing"
        for queued, _ in self.pipeline:
            queued.keep_alive = False
        cycle: RequestResponseCycle | None = self.cycle  # None until a first request
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
            return "busy"
        if self._in_body:  # answered early, the rest of the body still arriving
            self._linger()
            return "closing"
        if self._in_head:
            return "busy"
        if cycle is None:
            return "new"
        return "closed" if self._close_if_quiet() else "busy"

    def shutdown(self) -> None:
        """uvicorn stops: a connection with nothing sent yet gets a moment for its request."""
        if self.drain() == "new":
            self._cancel_timers()
            self._watch_head(LAST_CALL_S)

    def abort_upload(self) -> None:
        if self._in_body and not self.cycle.response_started:
            self._refuse(503, DRAINING, "draining", True)

    def _close_if_quiet(self) -> bool:
        """Close unless a request waits unread (a close would reset it). The FIN goes out now:
        uvloop's close sends it later in the loop's turn, while clients may still send."""
        with contextlib.suppress(AttributeError, OSError):
            sock = socket.socket(fileno=os.dup(self.transport.get_extra_info("socket").fileno()))
            with sock, contextlib.suppress(OSError):
                try:
                    if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                        return False
                except BlockingIOError:  # nothing waiting
                    sock.shutdown(socket.SHUT_WR)
        self.transport.close()
        return True

    # Deadlines and refusals

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _watch_head(self, delay_s: float) -> None:
        self._head_timer = self.loop.call_later(delay_s, self._head_timeout)

    def _watch_body(self) -> None:
        if self._in_body and self._body_timer is None and not self.pipeline:
            self._body_timer = self.loop.call_later(self.guard.body_timeout_s, self._body_late)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._late("headers", self.guard.header_timeout_s)
        elif self._idle() and not self.transport.is_closing():
            self.transport.close()

    def _body_late(self) -> None:
        self._body_timer = None
        self._late("body", self.guard.body_timeout_s)

    def _late(self, part: str, seconds: float) -> None:
        self._refuse(408, f"request {part} not received within {seconds:g} s", "request_timeout")

    def _refuse(self, status: int, message: str, error_type: str, retry: bool = False) -> None:
        """Answer `status` and close; a request whose body was arriving sees a disconnect."""
        if self._discarding:
            return
        self._discarding = True
        self._cancel_timers()
        cycle: RequestResponseCycle | None = self.cycle
        request_id = None
        busy = cycle is not None and not cycle.response_complete  # an earlier response first
        if self._in_body and cycle is not None:  # the refusal is about this request
            request_id = cycle.scope.get("state", {}).get("request_id")
            if self.pipeline and self.pipeline[0][0] is cycle:
                self.pipeline.popleft()  # queued behind another response: never started
            else:
                busy = False
                cycle.disconnected = True  # its receive() says http.disconnect; send() no-op
                cycle.message_event.set()
                if cycle.response_started:
                    self._linger()
                    return
        if not isinstance(request_id, str):
            request_id = f"{random.getrandbits(128):032x}"
        log = {"request_id": request_id, "status": status}
        logger.info("%d %s: %s", status, error_type, message, extra=log)
        answer = self._render(status, error_body(message, error_type, request_id), retry)
        if busy:  # the response in progress goes first, then this one
            self._after_response = answer
            self.flow.pause_reading()
        else:
            self._answer_and_close(answer)

    def _render(self, status: int, error: dict[str, object], retry: bool) -> bytes:
        body = orjson.dumps(error)
        head = [STATUS[status]]
        head += [b"%s: %s\r\n" % header for header in self.server_state.default_headers]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
            b"x-request-id: %s\r\n" % (len(body), str(error["request_id"]).encode())
        )
        if retry:
            head.append(b"retry-after: %d\r\n" % RETRY_AFTER_S)
        return b"".join(head) + b"\r\n" + body

    def _answer_and_close(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
            self._linger()

    def _linger(self) -> None:
        """Half-close; drop the client's input until its EOF (uvicorn then closes) or LINGER_S."""
        self._discarding = True
        self._cancel_timers()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._close_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._close_timer = None
        self._unset_keepalive_if_required()

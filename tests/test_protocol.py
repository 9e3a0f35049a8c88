"""The connection protocol over raw sockets: the real uvicorn server of `python -m app`
(build_server) on a loopback port, serving a fake engine, in a thread of this process."""

from __future__ import annotations

import io
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.__main__ import DrainingServer, build_server
from app.config import Settings
from app.main import create_app
from app.metrics import Metrics
from tests.fakes import FakeClassifier
from tests.raw_http import Answer, Client

PREDICT_BODY = b'{"text": "a fine day"}'


@dataclass
class Running:
    server: DrainingServer
    thread: threading.Thread
    port: int
    metrics: Metrics

    def connect(self) -> Client:
        return Client(socket.create_connection(("127.0.0.1", self.port), timeout=5))

    def in_flight(self) -> int:
        return int(self.server.lifecycle.in_flight)

    def drain(self) -> None:
        """What SIGTERM does (the handler only runs in the main thread of `python -m app`)."""
        self.server.handle_exit(signal.SIGTERM, None)


@pytest.fixture
def serve(
    fake_settings: Callable[..., Settings], fake: FakeClassifier
) -> Iterator[Callable[..., Running]]:
    """`serve(**settings)` -> a ready server; stopped (and its thread joined) at the end."""
    started: list[Running] = []

    def start(**overrides: Any) -> Running:
        settings = fake_settings(**({"host": "127.0.0.1"} | overrides))
        app = create_app(settings, factory=fake.factory)
        server = build_server(settings, app)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
        thread.start()
        running = Running(server, thread, listener.getsockname()[1], app.state.metrics)
        started.append(running)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{running.port}/ready", timeout=2).is_success:
                    return running
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        pytest.fail("the server did not become ready")

    yield start
    if fake.gate is not None:
        fake.gate.set()
    for running in started:
        running.server.should_exit = True
        running.thread.join(15)
        assert not running.thread.is_alive()


def wait_until(done: Callable[[], object], within_s: float) -> None:
    """Poll until `done()` is true or `within_s` has passed; the caller asserts what it needs."""
    deadline = time.monotonic() + within_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def assert_json_error(answer: Answer, status: int, error_type: str) -> dict[str, Any]:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    body: dict[str, Any] = answer.json()
    assert set(body) == {"error", "error_type", "request_id"}
    assert body["error_type"] == error_type
    assert body["request_id"] == answer.headers["x-request-id"]
    return body


def predict_request(body: bytes = PREDICT_BODY, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (size, body)
    )


HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"


def test_slow_headers_are_cut_while_idle_keep_alive_is_not(serve: Callable[..., Running]) -> None:
    running = serve(header_timeout_s=1, keep_alive_s=5)
    silent, partial, kept = running.connect(), running.connect(), running.connect()
    started = time.monotonic()
    partial.send(b"POST /predict HTTP/1.1\r\nHost: t\r\n")
    kept.send(HEALTH)
    assert kept.answer().status == 200

    answer = partial.answer()
    waited = time.monotonic() - started
    assert_json_error(answer, 408, "request_timeout")
    assert 0.9 <= waited < 3, waited
    assert partial.closed_by_server()
    assert silent.closed_by_server(), "a connection that sends nothing is closed"
    assert time.monotonic() - started < 3

    time.sleep(max(0.0, 1.5 - (time.monotonic() - started)))  # idle past the header timeout
    kept.send(HEALTH)
    assert kept.answer().status == 200, "idle keep-alive is governed by keep_alive_s"


@pytest.mark.parametrize(
    "head",
    [
        b"".join(b"X-F%d: v\r\n" % i for i in range(21)),
        b"X-Big: " + b"a" * 3000 + b"\r\n",
    ],
    ids=["too-many-fields", "too-many-bytes"],
)
def test_headers_over_the_limits_get_431(serve: Callable[..., Running], head: bytes) -> None:
    running = serve(max_headers=20, max_header_bytes=2048)
    with running.connect() as sock:
        sock.send(b"GET /health HTTP/1.1\r\nHost: t\r\n" + head + b"\r\n")
        assert_json_error(sock.answer(), 431, "headers_too_large")
        assert sock.closed_by_server()


@pytest.mark.parametrize(
    "piece", [b"a" * 1024, b"X-F: v\r\n" * 128], ids=["one-long-value", "many-fields"]
)
def test_an_endless_head_is_refused_before_it_is_all_sent(
    serve: Callable[..., Running], piece: bytes
) -> None:
    running = serve(max_header_bytes=2048)
    with running.connect() as sock:
        sock.send(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ")
        sent = 0
        while sent < 1_000_000 and not select.select([sock.sock], [], [], 0.01)[0]:
            sock.send(piece)
            sent += len(piece)
        assert_json_error(sock.answer(), 431, "headers_too_large")
        assert sent <= 32 * 1024, f"{sent} bytes of header went in before the answer"


def test_a_head_within_the_limits_may_come_in_pieces(serve: Callable[..., Running]) -> None:
    running = serve(max_headers=20, max_header_bytes=2048)
    head = b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"".join(
        b"X-F%d: %s\r\n" % (i, b"v" * 80) for i in range(18)
    )
    with running.connect() as sock:
        for start in range(0, len(head), 500):
            sock.send(head[start : start + 500])
            time.sleep(0.02)
        sock.send(b"\r\n")
        assert sock.answer().status == 200


def test_a_slow_body_gets_408_and_the_app_sees_a_hang_up(
    serve: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    running = serve(body_timeout_s=1)
    caplog.set_level(logging.INFO, logger="app.access")
    gone_before = running.metrics.registry.get_sample_value(
        "textclf_rejections_total", {"reason": "client_gone"}
    )
    with running.connect() as sock:
        sock.send(predict_request(PREDICT_BODY[:5], length=len(PREDICT_BODY)))
        started = time.monotonic()
        answer = sock.answer()
        assert 0.9 <= time.monotonic() - started < 3
        body = assert_json_error(answer, 408, "request_timeout")
        assert "body" in body["error"]
        assert sock.closed_by_server()
    wait_until(lambda: running.in_flight() == 0, within_s=3)
    assert running.in_flight() == 0
    gone = running.metrics.registry.get_sample_value(
        "textclf_rejections_total", {"reason": "client_gone"}
    )
    assert (gone or 0) == (gone_before or 0) + 1

    # The answer carries the request's own id: the app's log line of the request has it too
    # (written by the outermost middleware, after the metrics above: wait for it).
    def app_lines() -> list[object]:
        lines = [r for r in caplog.records if getattr(r, "status", None) == 499]
        return [getattr(r, "request_id", None) for r in lines]

    wait_until(app_lines, within_s=3)
    assert app_lines() == [body["request_id"]]


def test_a_connection_beyond_the_cap_gets_503(serve: Callable[..., Running]) -> None:
    running = serve(max_connections=2)
    first, second = running.connect(), running.connect()
    with running.connect() as third:
        answer = third.answer()  # nothing sent: refused on arrival
        assert_json_error(answer, 503, "overloaded")
        assert answer.headers["retry-after"] == "1"
        assert third.closed_by_server()
    second.send(HEALTH)
    assert second.answer().status == 200
    first.close()
    time.sleep(0.2)
    with running.connect() as fourth:
        fourth.send(HEALTH)
        assert fourth.answer().status == 200
    second.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x00\x01\x02 garbage\r\n\r\n",
        b"BREW /predict HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n4\r\n{"te\r\nZZ\r\n',
    ],
    ids=["garbage", "unknown-method", "space-in-name", "length-and-chunked", "bad-chunk"],
)
def test_malformed_framing_gets_a_json_400(
    serve: Callable[..., Running], request_bytes: bytes
) -> None:
    running = serve()
    with running.connect() as sock:
        sock.send(request_bytes)
        body = assert_json_error(sock.answer(), 400, "bad_request")
        assert body["error"] == "malformed HTTP request"
        assert sock.closed_by_server()


def test_pipelined_requests_are_answered_in_order(serve: Callable[..., Running]) -> None:
    running = serve()
    with running.connect() as sock:
        sock.send(HEALTH + predict_request() + b"\x00garbage\r\n\r\n")
        assert sock.answer().status == 200
        assert sock.answer().status == 200
        assert_json_error(sock.answer(), 400, "bad_request")


def test_the_drain_closes_every_connection_after_its_response(
    serve: Callable[..., Running], fake: FakeClassifier
) -> None:
    running = serve()
    idle = running.connect()
    idle.send(HEALTH)
    assert "connection" not in idle.answer().headers
    fake.gate = threading.Event()
    busy = running.connect()
    busy.send(predict_request())
    wait_until(running.in_flight, within_s=5)

    running.drain()
    assert idle.closed_by_server(within_s=1), "an idle keep-alive connection closes at once"
    with running.connect() as late:
        late.send(predict_request())
        assert_json_error(late.answer(), 503, "draining")
        assert late.closed_by_server()
    fake.gate.set()
    answer = busy.answer()
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert busy.closed_by_server()
    running.thread.join(10)
    assert not running.thread.is_alive()


def test_the_signal_handler_only_sets_flags_and_the_loop_drains(
    serve: Callable[..., Running],
) -> None:
    """A signal handler runs between any two bytecodes of the main thread, even inside a log
    call: one that logged there raised "reentrant call" on stderr and the drain never began.
    Here the log handler is busy (its lock held by another thread) when the signal comes."""
    running = serve()
    handler = logging.StreamHandler(io.StringIO())
    app_logger = logging.getLogger("app")
    level = app_logger.level
    app_logger.setLevel(logging.INFO)
    app_logger.addHandler(handler)
    handler.acquire()
    try:
        signalled = threading.Thread(target=running.drain, daemon=True)
        signalled.start()
        signalled.join(2)
        assert not signalled.is_alive(), "the handler waited for a log handler"
    finally:
        handler.release()
    try:
        running.thread.join(10)
        assert not running.thread.is_alive(), "the drain did not run"
        assert "signal 15: draining" in handler.stream.getvalue()
        assert running.server.lifecycle.phase.name == "DRAINING"
    finally:
        app_logger.removeHandler(handler)
        app_logger.setLevel(level)


def test_a_slow_upload_ends_with_503_when_the_grace_period_ends(
    serve: Callable[..., Running],
) -> None:
    running = serve(graceful_timeout_s=1, body_timeout_s=30)
    with running.connect() as sock:
        sock.send(predict_request(PREDICT_BODY[:5], length=len(PREDICT_BODY)))
        wait_until(running.in_flight, within_s=5)
        started = time.monotonic()
        running.drain()
        sock.send(PREDICT_BODY[5:8])  # still uploading
        answer = sock.answer()
        assert time.monotonic() - started < 2.5
        assert_json_error(answer, 503, "draining")
        assert answer.headers["retry-after"] == "1"
    running.thread.join(5)
    assert not running.thread.is_alive()

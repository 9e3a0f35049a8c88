"""The open-loop load generator and the reliability criteria, without the app: HTTP parsing,
the error contract, arrivals that do not wait for answers, and the Nginx override."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bench.openloop import (
    Outcome,
    Stream,
    failure_kind,
    judge,
    parse_head,
    read_response,
    retry_after_ok,
    run_load,
    summarize,
    texts,
)
from bench.reliability import NGINX_CONF, nginx_conf_for_load, recovery_s


def _read(raw: bytes) -> Any:
    async def go() -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await read_response(reader)

    return asyncio.run(go())


def test_a_response_is_read_by_length_by_chunks_or_to_the_end() -> None:
    by_length = _read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra")
    assert (by_length.status, by_length.body, by_length.close) == (200, b"{}", False)
    chunked = _read(
        b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
        b'4\r\n{"er\r\n3\r\nr":\r\n4\r\n1}  \r\n0\r\n\r\n'
    )
    assert chunked.body == b'{"err":1}  ' and chunked.headers["retry-after"] == "3"
    to_end = _read(b"HTTP/1.0 200 OK\r\n\r\nbody")
    assert (to_end.body, to_end.close) == (b"body", True)
    assert parse_head(b"HTTP/1.1 429 Too Many\r\nConnection: close\r\n\r\n")[2] is True
    with pytest.raises(asyncio.IncompleteReadError):
        _read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    with pytest.raises(ValueError):
        parse_head(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_error_answers_are_judged_by_the_contract() -> None:
    ok = Outcome("main", 0.0)
    body = b'{"error":"busy","error_type":"overloaded"}'
    judge(
        ok,
        _read(
            b"HTTP/1.1 503 X\r\nRetry-After: 2\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        ),
    )
    assert (ok.retry_after_ok, ok.json_error, ok.error_type) == (True, True, "overloaded")
    html = Outcome("main", 0.0)
    judge(html, _read(b"HTTP/1.1 429 X\r\nContent-Length: 6\r\n\r\n<html>"))
    assert (html.retry_after_ok, html.json_error) == (False, False)
    assert [retry_after_ok(v) for v in ("1", "60", "0", "61", "1.5", "soon", None)] == [
        True, True, False, False, False, False, False,
    ]  # fmt: skip
    assert failure_kind(TimeoutError()) == "timeout"
    assert failure_kind(asyncio.IncompleteReadError(b"", 10)) == "eof"
    assert failure_kind(ConnectionResetError()) == "reset"


def test_summary_counts_statuses_failures_goodput_and_contract_breaches() -> None:
    outcomes = [Outcome("main", i / 10, latency_s=0.01 * (i + 1), status=200) for i in range(10)]
    outcomes += [
        Outcome("main", 1.0, latency_s=0.002, status=503, retry_after_ok=True, json_error=True),
        Outcome("main", 1.1, latency_s=0.003, status=429, retry_after_ok=False, json_error=True),
        Outcome("main", 1.2, latency_s=10.0, status=504, json_error=False),
        Outcome("main", 1.3, failure="reset"),
        Outcome("main", 1.4, failure="timeout"),
    ]
    s = summarize(outcomes, seconds=2.0)
    assert s["statuses"] == {"200": 10, "429": 1, "503": 1, "504": 1}
    assert s["failures"] == {"reset": 1, "timeout": 1} and s["lost"] == 2
    assert s["non_2xx"] == 3 and s["goodput_rps"] == 5.0
    assert s["retry_after_missing"] == 1 and s["error_not_json"] == 1
    assert s["ok_p99_ms"] == pytest.approx(99.1) and s["reject_p99_ms"] == pytest.approx(
        3.0, abs=0.05
    )


def test_arrivals_follow_the_rate_segments_and_long_texts_are_long() -> None:
    stream = Stream("s", [(0.0, 2.0), (4.0, 1.0), (2.0, 1.0)], [b"{}"])
    assert list(stream.arrivals()) == [2.0, 2.25, 2.5, 2.75, 3.0, 3.5]
    assert stream.seconds == 4.0
    long_words = [len(t.split()) for t in texts("long")]
    assert min(long_words) >= 335 and max(long_words) < 420
    assert max(len(t.split()) for t in texts("short")) <= 60


@pytest.fixture
def slow_server() -> Iterator[int]:
    """An HTTP/1.1 server that answers every request after 0.4 s, on its own thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []
    stop: list[asyncio.Event] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                length = head.partition(b"content-length:")[2].split(b"\r\n")[0]
                await reader.readexactly(int(length or 0))
                await asyncio.sleep(0.4)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        writer.close()

    async def serve() -> None:
        stop.append(asyncio.Event())
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        await stop[0].wait()
        server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port[0]
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(10)
    loop.close()


def test_requests_leave_on_schedule_whatever_the_server_does(slow_server: int) -> None:
    """40 requests/s for 1 s against 0.4-s answers: all 40 leave on time (a closed loop on one
    connection would send 3), over a pool that grew to hold them, and latency includes the wait."""
    run = run_load(
        f"http://127.0.0.1:{slow_server}", [Stream("main", [(40.0, 1.0)], [b"{}"])], timeout_s=5.0
    )
    assert len(run.outcomes) == 40 and all(o.status == 200 for o in run.outcomes)
    assert run.send_lag_p99_ms < 150
    assert run.peak_connections >= 10
    assert min(o.latency_s or 0 for o in run.outcomes) >= 0.39
    assert len(run.health) == 10 and all(o.status == 200 for o in run.health)


def test_the_nginx_override_raises_only_the_per_client_limits() -> None:
    shipped = NGINX_CONF.read_text(encoding="utf-8")
    raised = nginx_conf_for_load(shipped, 100000, 8192)
    changed = [
        (a, b) for a, b in zip(shipped.splitlines(), raised.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1 + shipped.count("limit_conn conn_per_client 64;")
    assert "rate=100000r/s" in changed[0][1]
    assert all("limit_conn conn_per_client 8192;" in after for _, after in changed[1:])
    with pytest.raises(ValueError):
        nginx_conf_for_load("http { }", 100, 100)


def test_recovery_is_the_start_of_the_last_good_stretch() -> None:
    fast = [Outcome("probe", t / 4, latency_s=0.01, status=200) for t in range(0, 80)]
    slow = [o for o in fast if 10 <= o.at_s < 14]
    for o in slow:
        o.latency_s = 2.0
    assert recovery_s(fast, 10.0, 20.0, limit_ms=50) == 4.0
    assert recovery_s(fast, 14.0, 20.0, limit_ms=50) == 0.0
    for o in fast[-4:]:
        o.status = 503
    assert recovery_s(fast, 10.0, 20.0, limit_ms=50) is None

"""`docker-compose stop` under load: requests in flight finish with 200.

Runs last (e2e.sh passes this file after the others): it stops the stack.
Compose stops Nginx first (SIGQUIT: it closes its listener and finishes the
requests it has), then the app (SIGTERM: its drain), each well inside
stop_grace_period, so nothing is killed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import REPO_ROOT, run

pytestmark = pytest.mark.e2e

WORKERS = 4
TEXTS_PER_REQUEST = 24  # WORKERS x this stays well under the app's TEXTCLF_MAX_QUEUE_TOKENS
MIN_INTERVAL_S = 0.25  # per worker: 4 workers stay under nginx's 20 requests/s
LOAD_BEFORE_STOP_S = 1.5
LOAD_DEADLINE_S = 60.0
STOP_TIMEOUT_S = 60.0
GRACE_S = 20.0  # stop_grace_period in docker-compose.yml

SENTENCES = (
    "The delivery was quick and the support team answered every question.",
    "I waited two weeks and the package never arrived, awful experience.",
    "Average product, does what it says, nothing more and nothing less.",
    "Absolutely love the new update, the app feels so much faster now.",
)


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: transport error (no HTTP response)
    error: str = ""


def _payload(worker: int) -> dict[str, list[str]]:
    return {"texts": [SENTENCES[(worker + i) % len(SENTENCES)] for i in range(TEXTS_PER_REQUEST)]}


def _load(base_url: str, worker: int, stop_load: threading.Event, out: list[Outcome]) -> None:
    deadline = time.monotonic() + LOAD_DEADLINE_S
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for _ in range(2000):  # bounded in count and in time
            if stop_load.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                response = http.post("/predict", json=_payload(worker))
                out.append(Outcome(started, time.monotonic(), response.status_code))
            except httpx.HTTPError as exc:
                out.append(Outcome(started, time.monotonic(), None, repr(exc)))
                return  # Nginx is gone: this worker is done
            time.sleep(max(0.0, MIN_INTERVAL_S - (time.monotonic() - started)))


def _read_http_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        decoded, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        body = decoded
    return status, headers, body


def _listener_closed(base_url: str) -> bool:
    """True once a fresh connection gets no HTTP answer (Nginx closed its listener)."""
    try:
        with httpx.Client(base_url=base_url, timeout=3) as http:
            http.get("/health", headers={"Connection": "close"})
        return False
    except httpx.HTTPError:
        return True


def test_stop_during_load_lets_in_flight_requests_finish(
    base_url: str, app_container: str, nginx_container: str
) -> None:
    url = httpx.URL(base_url)
    port = url.port or 80

    # A request that is certainly in flight when Nginx gets SIGQUIT: its body is
    # half sent now and finished only after Nginx has stopped accepting.
    body = json.dumps({"texts": list(SENTENCES)}).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {url.host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "X-Request-ID: e2e-slow-upload\r\nConnection: close\r\n\r\n"
    ).encode()
    slow = socket.create_connection(("127.0.0.1", port), timeout=30)
    slow.sendall(head + body[: len(body) // 2])

    outcomes: list[list[Outcome]] = [[] for _ in range(WORKERS)]
    stop_load = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(base_url, i, stop_load, outcomes[i]), daemon=True)
        for i in range(WORKERS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(LOAD_BEFORE_STOP_S)

    stop_issued = time.monotonic()
    stop = subprocess.Popen(
        ["docker-compose", "stop"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Bounded: Nginx gets SIGQUIT within seconds of `stop`.
        for _ in range(60):
            if _listener_closed(base_url):
                break
            time.sleep(0.25)
        else:
            pytest.fail("Nginx still accepted new connections 15 s after docker-compose stop")
        slow.sendall(body[len(body) // 2 :])
        status, headers, raw = _read_http_response(slow)
        slow.close()

        stop_load.set()
        for thread in threads:
            thread.join(timeout=LOAD_DEADLINE_S)
        output, _ = stop.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        if stop.poll() is None:
            stop.kill()
    stop_s = time.monotonic() - stop_issued

    # The request in flight across SIGQUIT completed normally.
    assert status == 200, raw[:500]
    assert headers["x-request-id"] == "e2e-slow-upload"
    assert len(json.loads(raw)["predictions"]) == len(SENTENCES)

    assert stop.returncode == 0, output
    all_outcomes = [o for worker in outcomes for o in worker]
    before = [o for o in all_outcomes if o.started < stop_issued]
    across = [o for o in before if o.ended > stop_issued]
    after = [o for o in all_outcomes if o.started >= stop_issued]
    assert before, "no load was sent before the stop"
    # Everything sent before `stop` got its answer, including those still in flight then.
    assert [o.status for o in before] == [200] * len(before), [(o.status, o.error) for o in before]
    # Later requests either made it (before Nginx closed) or found no listener;
    # none got an error page or a half answer.
    assert all(o.status in (200, None) for o in after), [(o.status, o.error) for o in after]
    print(  # noqa: T201
        f"stop took {stop_s:.1f} s; {len(before)} requests before it "
        f"({len(across)} in flight at the time), {len(after)} after"
    )

    # Both exited on their own, inside the grace period (137 would mean SIGKILL).
    assert stop_s < GRACE_S + 5
    for container in (nginx_container, app_container):
        state = run(
            ["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", container]
        ).stdout.split()
        assert state == ["exited", "0"], (container, state)

"""SIGTERM under keep-alive load, on the real default model: every request that reached the
server is answered (200, or the JSON 503 of the drain), none is reset or lost, and an upload
still arriving ends with a JSON error inside the grace period."""

from __future__ import annotations

import json
import logging
import random
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.server import ServerProcess
from tests.raw_http import Answer, Client, ClosedEarly

logger = logging.getLogger(__name__)

CLIENTS = 24
LOAD_BEFORE_SIGTERM_S = 1.5
GRACE_S = 8.0
BODY_TIMEOUT_S = 3.0
CLIENT_DEADLINE_S = 30.0
PAUSE_S = 0.03  # the longest pause of a client between an answer and its next request
# A drain closes idle keep-alive connections; a client that checked one just before the close
# and sends on it right after sees it closed with no answer. Clients of an idempotent API retry
# exactly this (RFC 9112 9.3.1; POST /predict is documented idempotent): so do these, and count.
# At most this many per test: the close and the send must fall within microseconds.
MAX_CLOSED_BEFORE_ANSWER = 2
# A response read later than this after SIGTERM was written after it: it must say close.
SIGNAL_DELIVERY_S = 0.25
TEXTS = (
    "The delivery was quick and the support team answered every question.",
    "I waited two weeks and the package never arrived, awful experience.",
    "Average product, does what it says, nothing more and nothing less.",
)


def predict_request(text: str) -> bytes:
    body = json.dumps({"text": text}).encode()
    return (
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def read_answer(sock: socket.socket) -> Answer:
    """One response; ClosedEarly when the request was sent and none came back (lost)."""
    return Client(sock).answer()


def closed_while_idle(sock: socket.socket) -> bool:
    """What a connection pool checks before reusing a connection: has the server closed it?"""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


class LoadClient:
    """One keep-alive client sending /predict until the server is gone, with a short pause
    after each answer (so some connections are idle when SIGTERM comes). After a 503 it waits
    Retry-After, as a client or balancer would, before trying again."""

    def __init__(self, port: int, index: int, sigterm_at: list[float]) -> None:
        self.port = port
        self.index = index
        self.sigterm_at = sigterm_at
        self.outcomes: Counter[str] = Counter()
        self.problems: list[str] = []
        self.pauses = random.Random(index)

    def run(self) -> None:
        sock: socket.socket | None = None
        reused = False  # an answer was read on this connection: a pool would reuse it
        deadline = time.monotonic() + CLIENT_DEADLINE_S
        sent = 0
        while time.monotonic() < deadline:
            if sock is not None and closed_while_idle(sock):
                self.outcomes["idle connection closed by the server"] += 1
                sock.close()
                sock = None
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=20)
                except ConnectionRefusedError:
                    self.outcomes["refused (listener closed)"] += 1
                    return
                reused = False
            reader = Client(sock)
            try:
                sock.sendall(predict_request(TEXTS[(self.index + sent) % len(TEXTS)]))
                answer = reader.answer()
            except (ClosedEarly, ConnectionError) as exc:
                if reused and self.sigterm_at and not reader.buffer:
                    self.outcomes["closed before an answer, retried"] += 1
                else:
                    self.outcomes["lost"] += 1
                    self.problems.append(repr(exc))
                sock.close()
                sock = None
                continue
            sent += 1
            reused = True
            self._count(answer)
            if answer.headers.get("connection") == "close":
                sock.close()
                sock = None
            if answer.status == 503:
                time.sleep(int(answer.headers.get("retry-after", "1")))
            else:
                time.sleep(self.pauses.uniform(0, PAUSE_S))
        if sock is not None:
            sock.close()

    def _count(self, answer: Answer) -> None:
        kind = str(answer.status)
        if answer.status != 200:
            kind = f"{answer.status} {answer.json().get('error_type')}"
        self.outcomes[kind] += 1
        signalled = self.sigterm_at[0] if self.sigterm_at else None
        late = signalled is not None and time.monotonic() - signalled > SIGNAL_DELIVERY_S
        if late and answer.headers.get("connection") != "close":
            self.outcomes["kept alive after the drain began"] += 1


def slow_upload(port: int, result: dict[str, Any]) -> None:
    """Headers and a little of the body, then a byte now and then: slower than the deadline."""
    body = json.dumps({"text": TEXTS[0]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = predict_request(TEXTS[0])[: -len(body)]
        sock.sendall(head + body[:5])
        started = time.monotonic()
        for byte in body[5:-1]:
            if select.select([sock], [], [], 0.5)[0]:
                break
            sock.sendall(bytes([byte]))
        try:
            result["answer"] = read_answer(sock)
        except ClosedEarly as exc:
            result["lost"] = repr(exc)
        result["after_s"] = time.monotonic() - started


def test_sigterm_under_keep_alive_load_answers_every_request(
    model_path: Path,
    spawn: Callable[..., ServerProcess],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    server = spawn(
        model_path,
        TEXTCLF_GRACEFUL_TIMEOUT_S=str(GRACE_S),
        TEXTCLF_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        TEXTCLF_FORWARD="padded",  # every model has it; skips timing the forward passes
    )
    server.wait_ready()
    sigterm_at: list[float] = []
    clients = [LoadClient(server.port, i, sigterm_at) for i in range(CLIENTS)]
    threads = [threading.Thread(target=client.run, daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    upload: dict[str, Any] = {}
    uploader = threading.Thread(target=slow_upload, args=(server.port, upload), daemon=True)
    time.sleep(LOAD_BEFORE_SIGTERM_S / 2)
    uploader.start()
    time.sleep(LOAD_BEFORE_SIGTERM_S / 2)

    server.terminate()
    sigterm_at.append(time.monotonic())
    exit_code = server.process.wait(GRACE_S + 5)
    stopped_after_s = time.monotonic() - sigterm_at[0]
    for thread in [*threads, uploader]:
        thread.join(CLIENT_DEADLINE_S)
        assert not thread.is_alive()

    outcomes = sum((client.outcomes for client in clients), Counter())
    problems = [problem for client in clients for problem in client.problems]
    logger.info("outcomes %s; stopped %.1f s after SIGTERM", dict(outcomes), stopped_after_s)
    record_property("outcomes", json.dumps(dict(outcomes)))
    assert exit_code == 0
    assert stopped_after_s < GRACE_S + 1
    assert outcomes["lost"] == 0, problems[:5]
    assert outcomes["closed before an answer, retried"] <= MAX_CLOSED_BEFORE_ANSWER, outcomes
    assert outcomes["200"] > 0 and outcomes["503 draining"] > 0, outcomes
    answered = {"200", "503 draining"}
    assert {kind for kind in outcomes if kind[0].isdigit()} <= answered, outcomes
    assert outcomes["kept alive after the drain began"] == 0, outcomes

    assert "answer" in upload, upload
    answer: Answer = upload["answer"]
    assert (answer.status, answer.json()["error_type"]) == (408, "request_timeout")
    assert answer.headers["connection"] == "close"
    assert upload["after_s"] < BODY_TIMEOUT_S + 1
    log = (tmp_path / "server-0.log").read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log

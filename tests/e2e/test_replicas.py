"""Two replicas of the app behind Nginx, on the real engine: both serve, a killed one costs
at most the requests it had in flight, a rolling replacement costs none.

The stack of deploy/ci/e2e.sh is scaled with the documented procedure
(deploy/compose/replicas.sh) and brought back to one replica afterwards. If the stack
was stopped (after test_shutdown.py), it is started first and stopped again at the end.
These tests replace the app container: a file after this one must look the container up
again rather than reuse an id found before.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import backend_address, requests_total, run, running_containers

pytestmark = pytest.mark.e2e

REPLICAS = "deploy/compose/replicas.sh"
WORKERS = 4  # concurrent clients; at most this many requests are in flight at once
# One client address for all: together under nginx's 20 requests/s per client.
STEADY_INTERVAL_S = 0.25  # 16 requests/s
ROLL_INTERVAL_S = 0.5  # 8 requests/s over the minute a replacement of two replicas takes
PROCEDURE_TIMEOUT_S = 420
TEXTS = (
    "The delivery was quick and the support team answered every question.",
    "I waited two weeks and the package never arrived, awful experience.",
    "Average product, does what it says, nothing more and nothing less.",
)


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer
    detail: str = ""


# httpx's error for a reused keep-alive connection that the server closed as the request went
# out: an Nginx reload closes its idle client connections at once. Clients of an idempotent API
# retry exactly this (RFC 9110 9.2.2; POST /predict is documented idempotent): so do these,
# once, and count it.
CLOSED_BEFORE_ANSWER = "Server disconnected without sending a response."
# At most this many such closes per test: a handful of reloads, each racing one client at most.
MAX_CLOSED_BEFORE_ANSWER = 2


class SteadyLoad:
    """WORKERS clients, each one request per interval, bounded in count and time."""

    def __init__(
        self, base_url: str, interval_s: float, limit_s: float, texts_per_request: int = 1
    ) -> None:
        self.base_url = base_url
        self.texts_per_request = texts_per_request
        self.interval_s = interval_s
        self.limit_s = limit_s
        self.outcomes: list[Outcome] = []
        self.closed_before_answer = 0  # retried once each (CLOSED_BEFORE_ANSWER)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(WORKERS)
        ]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, worker: int) -> None:
        deadline = time.monotonic() + self.limit_s
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            for n in range(int(self.limit_s / self.interval_s) + 1):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                started = time.monotonic()
                first = worker + n
                texts = [TEXTS[(first + i) % len(TEXTS)] for i in range(self.texts_per_request)]
                try:
                    response = self._post(http, texts)
                    detail = "" if response.status_code == 200 else response.text[:200]
                    outcome = Outcome(started, time.monotonic(), response.status_code, detail)
                except httpx.HTTPError as exc:
                    outcome = Outcome(started, time.monotonic(), None, repr(exc))
                with self._lock:
                    self.outcomes.append(outcome)
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _post(self, http: httpx.Client, texts: list[str]) -> httpx.Response:
        try:
            return http.post("/predict", json={"texts": texts})
        except httpx.RemoteProtocolError as exc:
            if str(exc) != CLOSED_BEFORE_ANSWER:
                raise
            with self._lock:
                self.closed_before_answer += 1
            return http.post("/predict", json={"texts": texts})

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def summary(self) -> str:
        statuses = Counter(str(o.status) for o in self.outcomes)
        slowest = max((o.ended - o.started for o in self.outcomes), default=0.0)
        return (
            f"{len(self.outcomes)} requests, {len(self.failed())} failed, "
            f"statuses {dict(statuses)}, slowest {slowest:.2f} s, "
            f"{self.closed_before_answer} retried after a reload closed the connection"
        )

    def check_closes(self) -> None:
        assert self.closed_before_answer <= MAX_CLOSED_BEFORE_ANSWER, self.summary()


def _replicas(*args: str) -> None:
    run(["bash", REPLICAS, *args], timeout=PROCEDURE_TIMEOUT_S)


def _ready(base_url: str) -> None:
    for _ in range(60):  # bounded: 30 s
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{base_url}/ready never answered 200")


def _predict_counts(containers: list[str]) -> dict[str, float]:
    return {c: requests_total(c, "/predict") for c in containers}


@pytest.fixture(scope="module")
def two_replicas(base_url: str) -> Iterator[str]:
    was_stopped = not running_containers("nginx")
    if was_stopped:
        run(["docker-compose", "up", "-d", "--no-recreate"], timeout=PROCEDURE_TIMEOUT_S)
    try:
        _replicas("scale", "2")
        _ready(base_url)
        yield base_url
    finally:
        _replicas("scale", "1")
        assert len(running_containers("app")) == 1
        _ready(base_url)
        if was_stopped:
            run(["docker-compose", "stop"], timeout=120)


def test_both_replicas_serve(two_replicas: str) -> None:
    containers = running_containers("app")
    assert len(containers) == 2
    before = _predict_counts(containers)
    with SteadyLoad(two_replicas, STEADY_INTERVAL_S, limit_s=10) as load:
        time.sleep(10)
    after = _predict_counts(containers)
    served = {c[:12]: after[c] - before[c] for c in containers}
    print(f"\n[e2e replicas] steady load: {load.summary()}; per replica {served}")  # noqa: T201
    assert not load.failed(), [(o.status, o.detail) for o in load.failed()]
    load.check_closes()
    assert sum(served.values()) == len(load.outcomes)  # a closed connection reached no app
    # Round robin over two: each gets a fair share, not a trickle.
    assert min(served.values()) >= 0.3 * len(load.outcomes), served


def test_killed_replica_loses_at_most_its_requests_in_flight(two_replicas: str) -> None:
    """`docker kill`: no restart (a manual stop), no answer from its address. Nginx retries
    what it had in flight elsewhere; the upstream loop drops the address within seconds."""
    containers = running_containers("app")
    assert len(containers) == 2
    victim = containers[-1]
    # Batches of 16 (~0.1 s each here): the victim has requests in flight when it dies.
    with SteadyLoad(two_replicas, STEADY_INTERVAL_S, limit_s=16, texts_per_request=16) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        run(["docker", "kill", victim])
        # Past nginx's fail_timeout (10 s): had the address stayed, it would be tried again.
        time.sleep(12)
    before = [o for o in load.outcomes if o.started < killed_at]
    after = [o for o in load.outcomes if o.started >= killed_at]
    in_flight = [o for o in before if o.ended > killed_at]
    failed_in_flight = [o for o in in_flight if o.status != 200]
    failed_after = [o for o in after if o.status != 200]
    slowest_after = max(o.ended - o.started for o in after)
    print(  # noqa: T201
        f"\n[e2e replicas] docker kill under load: {load.summary()}; {len(in_flight)} in flight "
        f"at the kill ({len(failed_in_flight)} failed), {len(after)} sent after it "
        f"({len(failed_after)} failed, slowest {slowest_after:.2f} s)"
    )
    assert after and before
    assert not failed_after, [(o.status, o.detail) for o in failed_after]
    load.check_closes()
    assert not [o for o in before if o.status != 200 and o not in in_flight]
    assert len(failed_in_flight) <= WORKERS
    # The procedure brings the replica back (Compose starts the killed container).
    _replicas("scale", "2")
    assert victim in running_containers("app")


def test_rolling_replacement_fails_no_request(two_replicas: str) -> None:
    old = set(running_containers("app"))
    assert len(old) == 2
    started = time.monotonic()
    with SteadyLoad(two_replicas, ROLL_INTERVAL_S, limit_s=PROCEDURE_TIMEOUT_S) as load:
        time.sleep(2)
        roll = subprocess.run(
            ["bash", REPLICAS, "roll"],
            capture_output=True,
            text=True,
            timeout=PROCEDURE_TIMEOUT_S,
            check=False,
        )
        time.sleep(2)
    took = time.monotonic() - started
    new = running_containers("app")
    print(  # noqa: T201
        f"\n[e2e replicas] rolling replacement of 2 replicas in {took:.0f} s: {load.summary()}"
    )
    assert roll.returncode == 0, roll.stderr[-3000:]
    assert len(new) == 2 and not old & set(new), (old, new)
    assert not load.failed(), json.dumps([(o.status, o.detail) for o in load.failed()])
    load.check_closes()
    assert len(load.outcomes) >= 100
    # Both new replicas serve.
    before = _predict_counts(new)
    with httpx.Client(base_url=two_replicas, timeout=30) as http:
        for _ in range(20):
            assert http.post("/predict", json={"text": TEXTS[0]}).status_code == 200
            time.sleep(0.06)
    after = _predict_counts(new)
    assert all(after[c] > before[c] for c in new), (before, after)


def test_a_replica_restarted_elsewhere_gets_traffic_again(two_replicas: str) -> None:
    """SIGKILL from the host (as the OOM killer would): the restart policy brings the replica
    back, at another address when a lower one is free (after the rolling replacement above,
    usually). Nginx alone would keep the old address forever; the upstream loop follows it,
    and sends it traffic only once it is ready."""
    containers = running_containers("app")
    assert len(containers) == 2
    # The highest address: the one likely to move (Docker hands out the lowest free one).
    victim = max(containers, key=lambda c: ipaddress.ip_address(backend_address(c)))
    old_address = backend_address(victim)
    restarts = int(run(["docker", "inspect", "-f", "{{.RestartCount}}", victim]).stdout)
    pid = int(run(["docker", "inspect", "-f", "{{.State.Pid}}", victim]).stdout)
    with SteadyLoad(two_replicas, STEADY_INTERVAL_S, limit_s=90) as load:
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 80
        served_again = False
        while time.monotonic() < deadline and not served_again:
            time.sleep(2)
            restarted = run(["docker", "inspect", "-f", "{{.RestartCount}}", victim]).stdout
            if int(restarted) > restarts and victim in running_containers("app"):
                served_again = requests_total(victim, "/predict") > 0
    new_address = backend_address(victim)
    print(  # noqa: T201
        f"\n[e2e replicas] SIGKILL, restarted at {old_address} -> {new_address}: {load.summary()}"
    )
    assert served_again, "the restarted replica got no request within 80 s"
    # What Nginx had sent to it before the loop saw it go (polled every 0.5 s) may fail:
    # its in-flight requests (502), or a connect that reached it loading (503). Nothing later.
    late = [o for o in load.failed() if o.started > killed_at + 1.5]
    assert not late, [(o.started - killed_at, o.status, o.detail) for o in late]
    assert len(load.failed()) <= WORKERS, [(o.status, o.detail) for o in load.failed()]
    load.check_closes()

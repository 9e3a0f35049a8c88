"""Prometheus beside the stack (Compose profile `monitoring`), through its HTTP API on loopback.

deploy/ci/e2e.sh starts the profile and exports E2E_PROMETHEUS_URL. Prometheus finds the
app replicas by Docker DNS on the internal network and scrapes them; these tests check
that every app container is an up target, that /predict requests sent through Nginx show
up in Prometheus' copy of textclf_requests_total, that the alert rules are loaded and
evaluate without error, and that every dashboard expression evaluates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from tests.e2e.conftest import backend_address, requests_total, require, run, running_containers
from tests.test_monitoring import ALERTS, as_promql, dashboard_exprs, load_dashboard

pytestmark = pytest.mark.e2e

T = TypeVar("T")
# Scrapes and rule evaluations every 5 s (deploy/monitoring/prometheus.yml): a few rounds.
SETTLE_S = 60.0


def poll(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """`probe()` until it returns a value; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s:.0f} s")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def prometheus(base_url: str) -> Iterator[httpx.Client]:
    url = os.environ.get("E2E_PROMETHEUS_URL", "")
    require(bool(url), "E2E_PROMETHEUS_URL unset: deploy/ci/e2e.sh starts the monitoring profile")
    assert httpx.URL(url).host == "127.0.0.1", f"Prometheus must be on loopback, got {url}"
    with httpx.Client(base_url=url, timeout=10) as client:

        def ready() -> bool | None:
            try:
                return client.get("/-/ready").status_code == 200 or None
            except httpx.TransportError:
                return None

        poll(ready, SETTLE_S, "Prometheus not ready")
        yield client


def api(client: httpx.Client, path: str, **params: str) -> Any:
    response = client.get(f"/api/v1/{path}", params=params)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (path, params, body)
    return body["data"]


def test_published_on_loopback_only(prometheus: httpx.Client) -> None:
    out = run(["docker-compose", "port", "prometheus", "9090"], timeout=60).stdout.strip()
    assert out.startswith("127.0.0.1:"), out
    assert out.split(":")[1] == str(httpx.URL(str(prometheus.base_url)).port)


def test_every_app_replica_is_an_up_target(prometheus: httpx.Client) -> None:
    """Docker DNS gives Prometheus every app container; each is scraped on app:8000."""
    expected = {f"{backend_address(c)}:8000" for c in running_containers("app")}

    def targets_up() -> set[str] | None:
        active = api(prometheus, "targets", state="active")["activeTargets"]
        up = {
            t["labels"]["instance"]
            for t in active
            if t["labels"]["job"] == "textclf" and t["health"] == "up"
        }
        return up if up == expected else None

    assert poll(targets_up, SETTLE_S, f"app targets not up: want {sorted(expected)}") == expected
    result = api(prometheus, "query", query='textclf_ready{job="textclf"}')["result"]
    assert {r["metric"]["instance"]: r["value"][1] for r in result} == dict.fromkeys(expected, "1")


def test_request_counter_increases_in_prometheus(
    prometheus: httpx.Client, client: httpx.Client
) -> None:
    """/predict through Nginx: Prometheus' textclf_requests_total catches up with the apps'
    own count twice, and the second value exceeds the first by at least the requests sent."""
    containers = running_containers("app")
    assert containers, "no app container"
    query = 'sum(textclf_requests_total{job="textclf", route="/predict"})'

    def predict(count: int) -> float:
        """Send `count` requests; the apps' own /predict count afterwards."""
        for i in range(count):
            response = client.post("/predict", json={"text": f"monitoring check {i}: great"})
            assert response.status_code == 200, response.text
        return sum(requests_total(c, "/predict") for c in containers)

    def scraped(at_least: float) -> float:
        def probe() -> float | None:
            result = api(prometheus, "query", query=query)["result"]
            value = float(result[0]["value"][1]) if result else 0.0
            return value if value >= at_least else None

        return poll(probe, SETTLE_S, f"Prometheus never counted {at_least:.0f} /predict requests")

    # One request first: the series exists in Prometheus before the ones that count.
    before = scraped(predict(1))
    sent = 12
    after = scraped(predict(sent))
    assert after - before >= sent, (before, after)

    def increase() -> float | None:
        window = 'sum(increase(textclf_requests_total{job="textclf", route="/predict"}[1m]))'
        result = api(prometheus, "query", query=window)["result"]
        return float(result[0]["value"][1]) if result and float(result[0]["value"][1]) > 0 else None

    assert poll(increase, SETTLE_S, "increase() of the counter stayed 0") > 0


def test_alert_rules_loaded_and_evaluated_without_error(prometheus: httpx.Client) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = api(prometheus, "rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = all(rule["health"] != "unknown" for rule in rules)
        return rules if rules and done else None

    rules = poll(evaluated, SETTLE_S, "alert rules not evaluated")
    assert {rule["name"] for rule in rules if rule["type"] == "alerting"} == ALERTS
    errors = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not errors, errors
    # A healthy stack: nothing fires.
    firing = [a for a in api(prometheus, "alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, firing


def test_every_dashboard_expression_evaluates(prometheus: httpx.Client) -> None:
    exprs = dashboard_exprs(load_dashboard())
    assert exprs
    empty = []
    for expr in exprs:
        query = as_promql(expr)
        if not api(prometheus, "query", query=query)["result"]:
            empty.append(query)
    # Evaluated without error (api() checks) and, for the core views, with data.
    core = [e for e in exprs if "textclf_requests_total" in e and "status=" not in e]
    core += [e for e in exprs if "textclf_ready" in e or "process_resident_memory_bytes" in e]
    assert core
    assert not [as_promql(e) for e in core if as_promql(e) in empty], empty

"""TEXTCLF_METRICS_PORT: /metrics on a port of its own (Kubernetes' network policy lets only the
monitoring namespace reach it), and the process series a dashboard needs."""

from __future__ import annotations

import socket

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import ValidationError

from app.core.lifecycle import Phase
from app.main import create_app
from tests.conftest import until

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_metrics_on_their_own_port(start_app, fake_settings, fake) -> None:
    port = _free_port()
    settings = fake_settings(host="127.0.0.1", metrics_port=port, metrics_access="off")
    api = await start_app(settings, factory=fake.factory)
    assert (await api.client.post("/predict", json={"text": "good"})).status_code == 200
    assert (await api.client.get("/metrics")).status_code == 404  # not on the API port
    async with httpx.AsyncClient(timeout=10) as scraper:
        page = await scraper.get(f"http://127.0.0.1:{port}/metrics")
    assert page.status_code == 200
    assert 'textclf_requests_total{route="/predict",status="200"} 1.0' in page.text
    assert "textclf_ready 1.0" in page.text
    assert f"textclf_queue_tokens_limit {float(settings.max_queue_tokens)}" in page.text
    assert f"textclf_request_timeout_seconds {settings.request_timeout_s}" in page.text
    # The dashboard's CPU and memory panels read these.
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert f"\n{name} " in page.text, name


async def test_the_port_closes_with_the_app(fake_settings, fake) -> None:
    port = _free_port()
    app = create_app(fake_settings(host="127.0.0.1", metrics_port=port), factory=fake.factory)
    async with (
        LifespanManager(app, startup_timeout=30, shutdown_timeout=30),
        httpx.AsyncClient(timeout=10) as scraper,
    ):
        assert (await scraper.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
    with pytest.raises(httpx.ConnectError):  # the lifespan's end is what uvicorn runs at exit
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


async def test_a_taken_port_fails_the_start_in_one_line(start_app, fake_settings, fake) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = fake_settings(host="127.0.0.1", metrics_port=port)
        api = await start_app(settings, factory=fake.factory, ready=False)
        lifecycle = api.app.state.lifecycle
        await until(lambda: lifecycle.phase is Phase.FAILED)
        assert lifecycle.failure.startswith(f"cannot serve /metrics on TEXTCLF_METRICS_PORT={port}")
        assert (await api.client.get("/ready")).status_code == 503


async def test_the_metrics_port_must_differ_from_the_api_port(fake_settings) -> None:
    with pytest.raises(ValidationError, match="TEXTCLF_METRICS_PORT must differ"):
        fake_settings(port=9000, metrics_port=9000)

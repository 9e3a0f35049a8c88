"""Shared fixtures: tiny random models built once per session, and in-process apps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.fakes import FakeClassifier
from tests.sharp_model import sharpened_copy
from tests.tiny_model import build_tiny_model

T = TypeVar("T")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "single")


@pytest.fixture(scope="session")
def tiny_multilabel_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "multi",
        labels=("toxic", "insult", "threat", "spam"),
        problem_type="multi_label_classification",
        seed=1,
    )


@pytest.fixture(scope="session")
def tiny_single_logit_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "logit", labels=("LABEL_0",), problem_type=None, seed=2
    )


@pytest.fixture(scope="session")
def sharp_models(
    tiny_model: Path,
    tiny_multilabel_model: Path,
    tiny_single_logit_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """The three tiny models with weights whose scores differ between texts (parity tests)."""
    root = tmp_path_factory.mktemp("sharp")
    sources = {
        "single": tiny_model,
        "multi": tiny_multilabel_model,
        "logit": tiny_single_logit_model,
    }
    return {name: sharpened_copy(path, root / name, seed=3) for name, path in sources.items()}


@pytest.fixture(scope="session")
def sharp_model(sharp_models: dict[str, Path]) -> Path:
    return sharp_models["single"]


def one_thread_settings(path: Path, **overrides: Any) -> Settings:
    """One intra-op thread unless asked: these models are tiny and the test machine shared."""
    return make_settings(path, **({"torch_threads": 1} | overrides))


def make_settings(model_path: Path, **overrides: Any) -> Settings:
    # One inference worker unless a test asks for more: fault-injection tests count passes.
    values: dict[str, Any] = {
        "model_path": model_path,
        "warmup": False,
        "inference_workers": 1,
    } | overrides
    return Settings(_env_file=None, **values)


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def settings_for(tiny_model: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return make_settings(overrides.pop("model_path", tiny_model), **overrides)

    return build


@pytest.fixture(scope="session")
def stub_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that passes the settings' checks, for apps that serve a fake classifier."""
    path = tmp_path_factory.mktemp("stub")
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def fake_settings(stub_model: Path) -> Callable[..., Settings]:
    """Like `settings_for`, without building the tiny model: for apps on the fake."""

    def build(**overrides: Any) -> Settings:
        return make_settings(overrides.pop("model_path", stub_model), **overrides)

    return build


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 30.0) -> None:
    with anyio.fail_after(timeout_s):
        while (await client.get("/ready")).status_code != 200:
            await anyio.sleep(0.02)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `condition` (state another thread changes) until it holds; fail after `timeout_s`."""
    with anyio.fail_after(timeout_s):
        while not condition():
            await anyio.sleep(0.005)


async def done_within(task: asyncio.Future[T], timeout_s: float = 5.0) -> T:
    """The task's result once it ends by itself. Unlike `wait_for`, a timeout is never
    delivered into the task as a cancellation (which code under test could turn into the
    very outcome a test expects): the test fails, then the task is cancelled."""
    await asyncio.wait({task}, timeout=timeout_s)
    if not task.done():
        task.cancel()
        pytest.fail(f"not done within {timeout_s} s")
    return task.result()


@pytest.fixture
def fake() -> Iterator[FakeClassifier]:
    """A fake classifier (tests/fakes.py); a gate a test left closed is opened at the end, so
    no inference thread stays blocked behind it."""
    classifier = FakeClassifier()
    yield classifier
    if classifier.gate is not None:
        classifier.gate.set()


class AppClient:
    """An app with its lifespan running, and an httpx client talking to it in process."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.app.state.metrics.registry.get_sample_value(name, labels or {})
        return float(value or 0.0)


@pytest.fixture
async def start_app() -> AsyncIterator[Callable[..., Any]]:
    """`await start_app(settings, ready=True, **create_app_kwargs)` -> AppClient."""
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def start(settings: Settings, *, ready: bool = True, **kwargs: Any) -> AppClient:
        app = create_app(settings, **kwargs)
        manager = LifespanManager(app, startup_timeout=60, shutdown_timeout=30)
        await manager.__aenter__()
        managers.append(manager)
        transport = httpx.ASGITransport(app=manager.app)
        client = httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60)
        clients.append(client)
        if ready:
            await wait_ready(client)
        return AppClient(app, client)

    yield start
    for client in clients:
        await client.aclose()
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


def predict_scope(body_length: int) -> dict[str, Any]:
    """The ASGI scope of a POST /predict, for tests that drive the app's ASGI calls by hand."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(body_length).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }

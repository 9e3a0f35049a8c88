from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.server import ROOT, ServerProcess


def default_model_path() -> Path:
    """The model the integration tests serve: MODEL_PATH, else the built default model."""
    path = Path(os.environ.get("MODEL_PATH", ROOT / "model" / "default"))
    if not (path / "config.json").is_file():
        raise RuntimeError(f"no model at {path}: run `make model` first (make test does)")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`spawn(model_path, **env)` starts a server; all are stopped at the end of the test."""
    servers: list[ServerProcess] = []

    def start(model: Path, **env: str) -> ServerProcess:
        log = (tmp_path / f"server-{len(servers)}.log").open("wb")
        server = ServerProcess(model, log, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One default-model server shared by a module's read-only tests."""
    log = (tmp_path_factory.mktemp("server") / "server.log").open("wb")
    process = ServerProcess(model_path, log)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()

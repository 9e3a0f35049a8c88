"""Fixtures for the container-stack tests (driven by deploy/ci/e2e.sh).

e2e.sh starts the stack with `docker-compose up -d --build` and exports:
  E2E_BASE_URL          Nginx on loopback, e.g. http://127.0.0.1:18080
  COMPOSE_PROJECT_NAME  / COMPOSE_FILE  so a bare `docker-compose` finds the stack
  WHEELHOUSE_PORT       the local wheel index the image build reads
  E2E_REQUIRED=1        a missing prerequisite fails instead of skipping
Every subprocess has a timeout; all traffic goes to 127.0.0.1 or our containers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def require(condition: bool, reason: str) -> None:
    """Skip when run outside e2e.sh; fail inside it (E2E_REQUIRED=1)."""
    if condition:
        return
    if os.environ.get("E2E_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def run(
    args: Sequence[str],
    *,
    timeout: float = 60,
    check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, bounded in time, output captured."""
    result = subprocess.run(
        list(args),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_text,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return run(["docker", "info"], timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def docker() -> None:
    require(docker_available(), "no Docker engine (deploy/ci/ensure-docker.sh starts one)")


@pytest.fixture(scope="session")
def base_url(docker: None) -> str:
    url = os.environ.get("E2E_BASE_URL", "")
    require(bool(url), "E2E_BASE_URL unset: the stack tests run under `make e2e`")
    host = httpx.URL(url).host
    assert host in {"127.0.0.1", "localhost"}, f"E2E_BASE_URL must be loopback, got {url}"
    return url


@pytest.fixture()
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http


def compose_container_id(service: str) -> str:
    out = run(["docker-compose", "ps", "-q", service], timeout=60).stdout.strip()
    assert out, f"no container for service {service!r} (is the stack up?)"
    return out.splitlines()[0]


def running_containers(service: str) -> list[str]:
    """The running containers of a Compose service (several with `--scale`)."""
    ids = run(["docker-compose", "ps", "-q", service], timeout=60).stdout.split()
    if not ids:
        return []
    template = "{{.State.Running}} {{.Id}}"
    states = run(["docker", "inspect", "-f", template, *ids], timeout=60).stdout.split("\n")
    return [line.split()[1] for line in states if line.startswith("true ")]


def backend_address(container: str) -> str:
    """The container's address on the Compose `backend` network."""
    template = (
        "{{range $name, $net := .NetworkSettings.Networks}}{{$name}}={{$net.IPAddress}} {{end}}"
    )
    entries = run(["docker", "inspect", "-f", template, container], timeout=30).stdout.split()
    (address,) = [
        value for name, value in (e.split("=") for e in entries) if name.endswith("_backend")
    ]
    return address


@pytest.fixture()
def app_container(base_url: str) -> str:
    return compose_container_id("app")  # looked up per test: test_replicas.py replaces it


@pytest.fixture(scope="session")
def nginx_container(base_url: str) -> str:
    return compose_container_id("nginx")


# The app's /metrics is read from inside its container (Nginx refuses it).
_FETCH_METRICS = (
    "import urllib.request;"
    "print(urllib.request.urlopen('http://127.0.0.1:8000/metrics', timeout=10).read().decode())"
)
_SAMPLE = re.compile(r"^textclf_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")


def app_metrics(container: str) -> str:
    return run(["docker", "exec", container, "python", "-c", _FETCH_METRICS], timeout=30).stdout


def requests_total(container: str, route: str) -> float:
    """Sum of textclf_requests_total over every status for one route, as the app counts."""
    total = 0.0
    for line in app_metrics(container).splitlines():
        match = _SAMPLE.match(line)
        if match and f'route="{route}"' in match.group("labels"):
            total += float(match.group("value"))
    return total

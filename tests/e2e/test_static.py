"""Checks of the container files that need no running stack.

Unmarked (run by `make test`): hadolint on every Dockerfile, shellcheck on the
deploy scripts, the Compose files' structure. Marked e2e (need the engine
and images, run by deploy/ci/e2e.sh before the stack starts or beside it):
`nginx -t` on the real nginx.conf, its JSON 502/504 pages, the build
context that .dockerignore leaves, the GPU override as the engine sees it,
and the CUDA build guard.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import REPO_ROOT, require, run

DOCKERFILES = [
    REPO_ROOT / "Dockerfile",
    REPO_ROOT / "deploy/standin/python.Dockerfile",
    REPO_ROOT / "deploy/standin/nginx.Dockerfile",
]
SCRIPTS = sorted((REPO_ROOT / "deploy").rglob("*.sh"))
NGINX_IMAGE = os.environ.get("NGINX_IMAGE", "nginx:1.28-bookworm")
PYTHON_IMAGE = os.environ.get("PYTHON_IMAGE", "python:3.11-slim-bookworm")


def tool(name: str) -> str:
    """A linter from the virtualenv (requirements-dev.txt) or PATH; required in CI."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        message = f"{name} not installed (pip install -r requirements-dev.txt)"
        if os.environ.get("CI") == "true" or os.environ.get("E2E_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


# --------------------------------------------------------------- no engine ---


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    result = run([tool("hadolint"), "--no-color", str(dockerfile)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck() -> None:
    assert SCRIPTS, "no deploy scripts found"
    result = run([tool("shellcheck"), *map(str, SCRIPTS)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _compose(path: str) -> dict[str, object]:
    loaded = yaml.safe_load((REPO_ROOT / path).read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_file_contract() -> None:
    """The properties the issue asks of docker-compose.yml, read from the file itself."""
    services = _compose("docker-compose.yml")["services"]
    assert isinstance(services, dict)
    app, nginx = services["app"], services["nginx"]
    assert "ports" not in app, "only Nginx publishes a port"
    assert nginx["ports"] and nginx["depends_on"] == {"app": {"condition": "service_healthy"}}
    for service in (app, nginx):
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["restart"] == "unless-stopped"
        assert {"mem_limit", "cpus", "pids_limit", "tmpfs"} <= set(service)
    assert any(v.endswith(":/models/default:ro") for v in app["volumes"])
    assert any(v.endswith(":/etc/nginx/nginx.conf:ro") for v in nginx["volumes"])
    assert str(app["user"]).split(":")[0] != "0"
    # stop_grace_period > the app's drain time (GRACEFUL_TIMEOUT_S default 15).
    grace = int(str(app["stop_grace_period"]).split(":-")[1].rstrip("}").rstrip("s"))
    drain = float(app["environment"]["GRACEFUL_TIMEOUT_S"].split(":-")[1].rstrip("}"))
    assert grace > drain
    timeout = float(app["environment"]["REQUEST_TIMEOUT_S"].split(":-")[1].rstrip("}"))
    nginx_conf = (REPO_ROOT / "nginx.conf").read_text()
    assert f"proxy_read_timeout {int(timeout) + 5}s;" in nginx_conf
    assert "version" not in _compose("docker-compose.yml")


def test_compose_passes_every_app_setting() -> None:
    """What .env.example says: each app setting in .env reaches the container, except the
    ones the stack sets itself (and the host path SELFTEST_PATH)."""
    from app.config import Settings

    services = _compose("docker-compose.yml")["services"]
    assert isinstance(services, dict)
    environment = services["app"]["environment"]
    fixed = {"MODEL_PATH", "HOST", "PORT", "KEEP_ALIVE_S", "FORWARDED_ALLOW_IPS"}
    for name in (field.upper() for field in Settings.model_fields):
        if name == "SELFTEST_PATH":
            assert name not in environment
        elif name in fixed:
            assert name in environment and "${" not in str(environment[name])
        else:
            assert f"${{{name}:-" in str(environment.get(name)), f"{name} never reaches the app"


def test_ci_override_only_changes_the_build() -> None:
    ci = _compose("docker-compose.ci.yml")["services"]
    assert isinstance(ci, dict)
    assert set(ci) == {"app"} and set(ci["app"]) == {"build"}
    assert ci["app"]["build"]["network"] == "host"


def test_gpu_override_reserves_a_gpu() -> None:
    gpu = _compose("docker-compose.gpu.yml")["services"]
    assert isinstance(gpu, dict)
    app = gpu["app"]
    assert app["build"]["args"]["TORCH_VARIANT"] == "cuda"
    (device,) = app["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert app["environment"]["DEVICE"] == "cuda"


# ------------------------------------------------------------ with engine ---


@pytest.fixture(scope="module")
def engine() -> None:
    from tests.e2e.conftest import docker_available

    require(docker_available(), "no Docker engine (deploy/ci/ensure-docker.sh starts one)")
    require(shutil.which("docker-compose") is not None, "docker-compose not installed")


def _image_present(name: str) -> bool:
    return run(["docker", "image", "inspect", name], check=False, timeout=30).returncode == 0


@pytest.mark.e2e
@pytest.mark.parametrize(
    "files",
    [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]],
    ids=["cpu", "gpu"],
)
def test_compose_config_accepted_by_docker_compose(engine: None, files: list[str]) -> None:
    args = [arg for name in files for arg in ("-f", name)]
    env = {k: v for k, v in os.environ.items() if k != "COMPOSE_FILE"}
    result = subprocess.run(
        ["docker-compose", *args, "config", "-q"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _nginx_run(*extra: str, name: str, tmpfs: str = "128m") -> list[str]:
    """`docker run` for Nginx with the real nginx.conf, hardened as in Compose."""
    return [
        "docker",
        "run",
        "--name",
        name,
        "--user",
        "101:101",
        "--read-only",
        "--tmpfs",
        f"/tmp:size={tmpfs},mode=1777",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        "-v",
        f"{REPO_ROOT / 'nginx.conf'}:/etc/nginx/nginx.conf:ro",
        *extra,
    ]


@pytest.mark.e2e
def test_nginx_config_test_passes(engine: None) -> None:
    require(_image_present(NGINX_IMAGE), f"{NGINX_IMAGE} absent (deploy/ci/base-images.sh)")
    name = f"textclf-nginx-t-{uuid.uuid4().hex[:8]}"
    # The upstream name resolves as it would inside the Compose network.
    result = run(
        [*_nginx_run("--rm", "--add-host", "app:127.0.0.1", name=name), NGINX_IMAGE, "nginx", "-t"],
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def containers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        run(["docker", "rm", "-f", name], check=False, timeout=60)


def _wait_http(url: str) -> None:
    for _ in range(60):  # bounded: 15 s
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.25)
    pytest.fail(f"{url} never answered")


@pytest.mark.e2e
def test_nginx_json_502_and_504(engine: None, containers: list[str]) -> None:
    """nginx.conf's own error pages: app unreachable (502), body buffer full (500), app
    silent (504)."""
    require(_image_present(NGINX_IMAGE), f"{NGINX_IMAGE} absent")
    require(_image_present(PYTHON_IMAGE), f"{PYTHON_IMAGE} absent")
    # 502: nothing listens where "app" points.
    port = _free_port()
    name = f"textclf-nginx-502-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    run(
        [
            *_nginx_run(
                "-d", "--add-host", "app:127.0.0.1", "-p", f"127.0.0.1:{port}:8080", name=name
            ),
            NGINX_IMAGE,
        ]
    )
    _wait_http(f"http://127.0.0.1:{port}/metrics")
    response = httpx.post(
        f"http://127.0.0.1:{port}/predict",
        json={"text": "x"},
        headers={"X-Request-ID": "e2e-502"},
        timeout=10,
    )
    assert response.status_code == 502
    assert response.json() == {
        "error": "the service is not reachable",
        "error_type": "bad_gateway",
        "request_id": "e2e-502",
    }
    assert response.headers["x-request-id"] == "e2e-502"

    # 500: the body buffer's tmpfs is full (here: far too small for a 900 KB body).
    port = _free_port()
    name = f"textclf-nginx-500-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    run(
        [
            *_nginx_run(
                "-d", "--add-host", "app:127.0.0.1", "-p", f"127.0.0.1:{port}:8080",
                name=name, tmpfs="256k",
            ),
            NGINX_IMAGE,
        ]
    )  # fmt: skip
    _wait_http(f"http://127.0.0.1:{port}/metrics")
    response = httpx.post(
        f"http://127.0.0.1:{port}/predict",
        json={"text": "x" * 900_000},
        headers={"X-Request-ID": "e2e-500"},
        timeout=10,
    )
    assert response.status_code == 500
    assert response.json()["error_type"] == "internal"
    assert response.headers["x-request-id"] == "e2e-500"

    # 504: an upstream that accepts and never answers; Nginx gives up after
    # proxy_read_timeout (15 s, longer than the app's own 10 s deadline).
    port = _free_port()
    silent = f"textclf-silent-{uuid.uuid4().hex[:8]}"
    containers.append(silent)
    server = (
        "import socket, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', 8000)); s.listen(16); held = []\n"
        "deadline = time.monotonic() + 120\n"
        "while time.monotonic() < deadline:\n"
        "    held.append(s.accept()[0])\n"
    )
    # Nginx joins the silent server's network namespace (and so its /etc/hosts,
    # where "app" is 127.0.0.1); the port is published on that namespace.
    run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            silent,
            "--add-host",
            "app:127.0.0.1",
            "-p",
            f"127.0.0.1:{port}:8080",
            PYTHON_IMAGE,
            "python",
            "-c",
            server,
        ]
    )
    name = f"textclf-nginx-504-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    run([*_nginx_run("-d", "--network", f"container:{silent}", name=name), NGINX_IMAGE])
    _wait_http(f"http://127.0.0.1:{port}/metrics")
    started = time.monotonic()
    response = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": "x"}, timeout=40)
    waited = time.monotonic() - started
    assert response.status_code == 504
    body = response.json()
    assert (
        body["error_type"] == "timeout" and body["request_id"] == response.headers["x-request-id"]
    )
    assert 14 <= waited < 30, waited


@pytest.mark.e2e
def test_build_context_is_small(engine: None, containers: list[str]) -> None:
    """What .dockerignore lets through, as the engine receives it."""
    require(_image_present(PYTHON_IMAGE), f"{PYTHON_IMAGE} absent")
    tag = f"textclf-context-probe:{uuid.uuid4().hex[:8]}"
    probe = f"FROM {PYTHON_IMAGE}\nCOPY . /ctx/\n"
    try:
        run(["docker", "build", "-q", "-f", "-", "-t", tag, "."], input_text=probe, timeout=300)
        listing = run(
            ["docker", "run", "--rm", tag, "sh", "-c", "cd /ctx && find . -type f && du -sk ."]
        ).stdout.splitlines()
    finally:
        run(["docker", "rmi", "-f", tag], check=False)
    *files, size = listing
    assert int(size.split()[0]) < 2048, size  # KiB
    assert "./requirements.txt" in files and "./app/__main__.py" in files
    forbidden = (".venv/", ".git/", "model/", "__pycache__", ".pyc", ".safetensors", "bench/")
    leaked = [f for f in files if any(part in f for part in forbidden)]
    assert not leaked, leaked


@pytest.mark.e2e
def test_gpu_override_as_the_engine_sees_it(engine: None) -> None:
    """docker-compose 1.29 turns the GPU reservation into an engine device request."""
    image = os.environ.get("APP_IMAGE", "textclf:cpu")
    require(_image_present(image), f"{image} absent (build the stack first)")
    env = {k: v for k, v in os.environ.items() if k != "COMPOSE_FILE"}
    # The CUDA image cannot be built here: the container is only created (never
    # started, there is no GPU) from the CPU image under the GPU image's name.
    env |= {"APP_GPU_IMAGE": image, "COMPOSE_PROJECT_NAME": f"textclf-gpu-{uuid.uuid4().hex[:6]}"}
    compose = ["docker-compose", "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml"]

    def compose_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose, *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    try:
        created = compose_run("up", "--no-start", "--no-build", "app")
        assert created.returncode == 0, created.stderr
        container = compose_run("ps", "-q", "app").stdout.strip()
        inspect = run(["docker", "inspect", "-f", "{{json .HostConfig.DeviceRequests}}", container])
        env_out = run(["docker", "inspect", "-f", "{{json .Config.Env}}", container]).stdout
    finally:
        compose_run("down", "--remove-orphans", "--timeout", "5")
    (request,) = yaml.safe_load(inspect.stdout)
    assert request["Driver"] == "nvidia"
    assert request["Count"] == 1
    assert request["Capabilities"] == [["gpu"]]
    assert '"DEVICE=cuda"' in env_out


@pytest.mark.e2e
@pytest.mark.slow
def test_cuda_build_refuses_a_cpu_torch(engine: None) -> None:
    """TORCH_VARIANT=cuda with only CPU wheels at hand must fail the build, loudly.

    (The real CUDA image needs CUDA wheels this machine cannot download; this
    proves the variant argument reaches the build and is enforced.)
    """
    port = os.environ.get("WHEELHOUSE_PORT", "")
    require(bool(port), "WHEELHOUSE_PORT unset: run under deploy/ci/e2e.sh")
    args = {
        "PYTHON_IMAGE": PYTHON_IMAGE,
        "PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple",
        "PIP_TRUSTED_HOST": "127.0.0.1",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "TORCH_INDEX_URL": "",
        "STRIP_SYMBOLS": "1",
        "TORCH_VARIANT": "cuda",
    }
    build_args = [arg for k, v in args.items() for arg in ("--build-arg", f"{k}={v}")]
    command = ["docker", "build", "--force-rm", "--network", "host", "--target", "builder"]
    result = run(
        [*command, *build_args, "."],
        check=False,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "TORCH_VARIANT=cuda but torch" in output, output[-2000:]

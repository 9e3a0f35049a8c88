"""Checks of the container files that need no running stack.

Unmarked (run by `make test`): hadolint on every Dockerfile, shellcheck on the
deploy scripts, the Compose files' structure, the settings' names (every field
of app.config.Settings reaches the container as TEXTCLF_<NAME>; .env.example
lists them all; no unprefixed or removed name in a deployment file) and the
HEALTHCHECK's port lookup. Marked e2e (need the engine
and images, run by deploy/ci/e2e.sh before the stack starts or beside it):
`nginx -t` on the real nginx.conf, its JSON 502/504 pages, the build
context that .dockerignore leaves, the GPU override as the engine sees it,
the settings as the built image reads them, and the CUDA build guard.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import httpx
import pytest
import yaml

from bench.server import free_port
from tests.e2e.conftest import REPO_ROOT, require, run

DOCKERFILES = [
    REPO_ROOT / "Dockerfile",
    REPO_ROOT / "deploy/standin/python.Dockerfile",
    REPO_ROOT / "deploy/standin/nginx.Dockerfile",
    REPO_ROOT / "deploy/standin/prometheus.Dockerfile",
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
    # Besides Nginx, only the monitoring profiles' UIs, which have no authentication:
    # on the host's loopback, never on HTTP_BIND.
    for name, service in services.items():
        if name != "nginx":
            assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), name
    assert nginx["ports"] and nginx["depends_on"] == {"app": {"condition": "service_healthy"}}
    for service in (app, nginx):
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["restart"] == "unless-stopped"
        assert {"mem_limit", "cpus", "pids_limit", "tmpfs"} <= set(service)
    assert any(v.endswith(":/models/default:ro") for v in app["volumes"])
    assert any(v.endswith(":/etc/nginx/nginx.conf:ro") for v in nginx["volumes"])
    # Nginx runs under the loop that keeps its upstream on the ready replicas.
    assert nginx["command"] == ["bash", "/etc/nginx/textclf-upstream.sh"]
    loop = "./deploy/compose/nginx-upstream.sh:/etc/nginx/textclf-upstream.sh:ro"
    assert loop in nginx["volumes"]
    assert str(app["user"]).split(":")[0] != "0"
    # stop_grace_period > the app's drain time (TEXTCLF_GRACEFUL_TIMEOUT_S default 15).
    grace = int(str(app["stop_grace_period"]).split(":-")[1].rstrip("}").rstrip("s"))
    drain = float(app["environment"]["TEXTCLF_GRACEFUL_TIMEOUT_S"].split(":-")[1].rstrip("}"))
    assert grace > drain
    timeout = float(app["environment"]["TEXTCLF_REQUEST_TIMEOUT_S"].split(":-")[1].rstrip("}"))
    nginx_conf = (REPO_ROOT / "nginx.conf").read_text()
    assert f"proxy_read_timeout {int(timeout) + 5}s;" in nginx_conf
    assert "version" not in _compose("docker-compose.yml")


# Settings the stack fixes itself (docker-compose.yml), and the one it never passes
# (a host path: the container uses the mounted model's own selftest.json).
FIXED_IN_COMPOSE = {"model_path", "host", "port", "keep_alive_s", "forwarded_allow_ips"}
NOT_PASSED = {"selftest_path"}
# Settings of earlier versions, now FORWARD or internal constants: no file may name them.
REMOVED_SETTINGS = (
    "UNPADDED",
    "ONEDNN_LINEAR",
    "SCRIPTED",
    "ALONE_PASS_THREADS",
    "GIL_SWITCH_INTERVAL_MS",
    "MAX_QUEUE_SIZE",
    "DOCS_ENABLED",
)
# What docker-compose.ci.yml / deploy/ci/e2e.sh interpolate besides .env.example's names.
CI_ONLY_VARIABLES = {"WHEELHOUSE_PORT", "VCS_REF"}
DEPLOY_TEXT_FILES = [
    REPO_ROOT / ".env.example",
    REPO_ROOT / "Dockerfile",
    REPO_ROOT / "docker-compose.yml",
    REPO_ROOT / "docker-compose.gpu.yml",
    REPO_ROOT / "docker-compose.ci.yml",
    REPO_ROOT / "nginx.conf",
    *sorted(p for p in (REPO_ROOT / "deploy").rglob("*") if p.is_file()),
]


def _word(name: str) -> re.Pattern[str]:
    """`name` as a whole variable name (not part of a longer one such as TEXTCLF_name)."""
    return re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])")


def setting_env_names() -> dict[str, str]:
    """Each Settings field -> the environment variable the app reads it from."""
    from app.config import Settings

    prefix = Settings.model_config.get("env_prefix")
    assert prefix == "TEXTCLF_", f"the settings' prefix is {prefix!r}, not TEXTCLF_"
    return {field: f"{prefix}{field.upper()}" for field in Settings.model_fields}


def setting_aliases() -> dict[str, list[str]]:
    """Each Settings field with an alias -> its names, strongest first (from the class)."""
    from pydantic import AliasChoices

    from app.config import Settings

    aliases: dict[str, list[str]] = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            aliases[field] = [str(choice) for choice in alias.choices]
        elif isinstance(alias, str):
            aliases[field] = [alias]
    return aliases


def test_settings_names_are_prefixed_with_documented_aliases() -> None:
    """The contract the deployment files rely on: TEXTCLF_<NAME> for every setting, and
    exactly MODEL_PATH, HOST and PORT as weaker aliases."""
    names = setting_env_names()
    back = {name.removeprefix("TEXTCLF_") for name in names.values()} & set(REMOVED_SETTINGS)
    assert not back, f"removed settings are back: {sorted(back)}"
    aliases = setting_aliases()
    assert set(aliases) == {"model_path", "host", "port"}, aliases
    for field, choices in aliases.items():
        # The prefixed name first: it wins when both are set.
        assert choices == [names[field], field.upper()], (field, choices)


def test_settings_ignore_unprefixed_names_and_prefer_the_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program's WARMUP/DEVICE/... cannot stop the service, and the image's alias
    defaults (Dockerfile ENV MODEL_PATH/HOST/PORT) lose to TEXTCLF_ names."""
    from app.config import Settings

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for name in list(os.environ):
        if name.upper().startswith("TEXTCLF_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env here
    # Values the app would refuse, were it to read them (the aliases aside).
    for field in set(setting_env_names()) - set(setting_aliases()):
        monkeypatch.setenv(field.upper(), "-1.5e999 not a value")
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "no-such-folder"))
    monkeypatch.setenv("TEXTCLF_MODEL_PATH", str(model))
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("TEXTCLF_PORT", "9001")
    monkeypatch.setenv("TEXTCLF_WARMUP", "false")
    settings = Settings()
    assert settings.model_path == model and settings.port == 9001
    assert settings.warmup is False and settings.device == "auto" and settings.host == "0.0.0.0"
    assert settings.model_name is None  # a str setting would have taken the foreign value
    # The aliases alone still work.
    monkeypatch.delenv("TEXTCLF_PORT")
    monkeypatch.delenv("TEXTCLF_MODEL_PATH")
    monkeypatch.setenv("MODEL_PATH", str(model))
    monkeypatch.setenv("HOST", "127.0.0.1")
    settings = Settings()
    assert (settings.model_path, settings.port, settings.host) == (model, 9000, "127.0.0.1")


def test_compose_passes_every_app_setting() -> None:
    """What .env.example says: each TEXTCLF_ setting in .env reaches the container, except
    the ones the stack sets itself (and the host path TEXTCLF_SELFTEST_PATH)."""
    names = setting_env_names()
    services = _compose("docker-compose.yml")["services"]
    assert isinstance(services, dict)
    environment = services["app"]["environment"]
    for field, name in names.items():
        if field in NOT_PASSED:
            assert name not in environment
        elif field in FIXED_IN_COMPOSE:
            assert name in environment and "${" not in str(environment[name]), name
        else:
            # Interpolated from the same name, so a .env line reaches the app as written.
            assert f"${{{name}:-" in str(environment.get(name)), f"{name} never reaches the app"
    # Nothing else: no unprefixed name (it would be ignored), no removed setting.
    unknown = set(environment) - set(names.values())
    assert not unknown, f"not settings of the app: {sorted(unknown)}"


def test_env_example_lists_every_setting() -> None:
    """Each setting once, under its TEXTCLF_ name, with its one-line why above it; the
    compose block holds exactly the variables the Compose files interpolate."""
    names = setting_env_names()
    lines = (REPO_ROOT / ".env.example").read_text().splitlines()
    assignments: dict[str, int] = {}
    for number, line in enumerate(lines):
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=", line)
        if match:
            assert match.group(1) not in assignments, f"{match.group(1)} listed twice"
            assignments[match.group(1)] = number
    listed = {name for name in assignments if name.startswith("TEXTCLF_")}
    assert listed == set(names.values()), (
        f"missing: {sorted(set(names.values()) - listed)}, "
        f"not settings: {sorted(listed - set(names.values()))}"
    )
    for name in listed:
        above = lines[assignments[name] - 1]
        assert above.startswith("# ") and len(above) > 10, f"{name} has no comment above it"
    # No unprefixed setting lines: the app ignores them, or (the aliases) they would
    # only repeat a TEXTCLF_ line that wins over them anyway.
    unprefixed = {field.upper() for field in names} & set(assignments)
    assert not unprefixed, f"unprefixed settings in .env.example: {sorted(unprefixed)}"
    # The header explains the prefix and names every alias.
    header = "\n".join(lines[:12])
    assert "TEXTCLF_" in header
    for choices in setting_aliases().values():
        assert all(_word(alias).search(header) for alias in choices[1:]), choices
    # The compose block: what the Compose files read from .env, and nothing more.
    interpolated: set[str] = set()
    for path in ("docker-compose.yml", "docker-compose.gpu.yml", "docker-compose.ci.yml"):
        text = (REPO_ROOT / path).read_text()
        interpolated |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    compose_only = set(assignments) - listed
    assert interpolated - CI_ONLY_VARIABLES - set(names.values()) == compose_only


def test_no_deployment_file_names_a_removed_or_unprefixed_setting() -> None:
    """Removed settings are gone everywhere; the Compose files, .env.example and
    nginx.conf use the TEXTCLF_ names only (the Dockerfile may set the aliases)."""
    names = setting_env_names()
    for path in DEPLOY_TEXT_FILES:
        text = path.read_text(errors="replace")
        for removed in REMOVED_SETTINGS:
            for match in (_word(removed), _word(f"TEXTCLF_{removed}")):
                assert not match.search(text), f"{path.relative_to(REPO_ROOT)} names {removed}"
    strict = [".env.example", "docker-compose.yml", "docker-compose.gpu.yml", "nginx.conf"]
    aliases = {choice for choices in setting_aliases().values() for choice in choices}
    for relative in strict:
        text = (REPO_ROOT / relative).read_text()
        if relative == ".env.example":
            text = "\n".join(text.splitlines()[12:])  # past the header naming the aliases
        for field in names:
            bare = field.upper()
            if relative == ".env.example" and bare in aliases:
                # "(alias: PORT)" comments and the compose block's note name them on purpose.
                continue
            assert not _word(bare).search(text), f"{relative} uses {bare}, not TEXTCLF_{bare}"
    # The image's own defaults: only the aliases (weaker than TEXTCLF_, so both names
    # override them at `docker run`), and the model folder Compose mounts.
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    env_block = dockerfile[dockerfile.rindex("\nENV PATH=/opt/venv/bin") :].split("\n\n")[0]
    env_set = set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", env_block))
    assert not {name for name in env_set if name.startswith("TEXTCLF_")}, env_set
    assert {"MODEL_PATH", "HOST", "PORT"} <= env_set
    assert "MODEL_PATH=/models/default" in env_block
    assert not env_set & ({field.upper() for field in names} - aliases), env_set


def _load_healthcheck() -> object:
    spec = importlib.util.spec_from_file_location(
        "textclf_healthcheck", REPO_ROOT / "deploy/docker/healthcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_port_prefers_the_prefixed_name() -> None:
    app_port = _load_healthcheck().app_port  # type: ignore[attr-defined]
    assert app_port({}) == "8000"
    assert app_port({"PORT": "9000"}) == "9000"
    assert app_port({"TEXTCLF_PORT": "9001", "PORT": "9000"}) == "9001"
    # Empty counts as unset, as in the app (env_ignore_empty).
    assert app_port({"TEXTCLF_PORT": "", "PORT": "9000"}) == "9000"
    assert app_port({"TEXTCLF_PORT": " ", "PORT": ""}) == "8000"


def test_healthcheck_asks_ready_on_the_apps_port() -> None:
    """The script itself, against a /ready on loopback: 0 on 200, 1 on 503 or no answer."""
    status = {"code": 200}

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status["code"] if self.path == "/ready" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = str(server.server_address[1])
    closed = str(free_port())
    base = {k: v for k, v in os.environ.items() if k not in {"PORT", "TEXTCLF_PORT"}}

    def healthcheck(**env: str) -> int:
        return subprocess.run(
            [sys.executable, str(REPO_ROOT / "deploy/docker/healthcheck.py")],
            env={**base, "HEALTHCHECK_TIMEOUT_S": "2", **env},
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode

    try:
        assert healthcheck(TEXTCLF_PORT=port, PORT=closed) == 0
        assert healthcheck(PORT=port) == 0
        assert healthcheck(TEXTCLF_PORT="", PORT=port) == 0
        assert healthcheck(TEXTCLF_PORT=closed, PORT=port) == 1
        status["code"] = 503
        assert healthcheck(TEXTCLF_PORT=port) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


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
    assert app["environment"]["TEXTCLF_DEVICE"] == "cuda"
    assert all(name.startswith("TEXTCLF_") for name in app["environment"]), app["environment"]
    assert set(app["environment"]) <= set(setting_env_names().values())


def _per_gpu_override(gpus: int) -> str:
    return run(["bash", "deploy/gpu/per-gpu.sh", str(gpus)]).stdout


def test_per_gpu_override_pins_one_gpu_per_replica() -> None:
    """deploy/gpu/per-gpu.sh: replica i reserves GPU i, answers to `app`, and has the GPU
    settings of docker-compose.gpu.yml; Nginx starts after all of them."""
    services = yaml.safe_load(_per_gpu_override(3))["services"]
    gpu = _compose("docker-compose.gpu.yml")["services"]
    assert isinstance(gpu, dict)
    replicas = ["app", "app-gpu1", "app-gpu2"]
    assert set(services) == {*replicas, "nginx"}
    for index, name in enumerate(replicas):
        service = services[name]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "device_ids": [str(index)], "capabilities": ["gpu"]}
        for key in ("image", "environment", "mem_limit"):
            assert service[key] == gpu["app"][key], (name, key)
        assert service["build"]["args"] == gpu["app"]["build"]["args"]
        if name != "app":
            assert service["extends"] == {"file": "docker-compose.yml", "service": "app"}
            assert service["networks"] == {"backend": {"aliases": ["app"]}}
    healthy = {"condition": "service_healthy"}
    assert services["nginx"]["depends_on"] == {"app-gpu1": healthy, "app-gpu2": healthy}


def test_nginx_conf_spreads_over_replicas_and_retries_safely() -> None:
    """The upstream contract for replicas (deploy/compose/replicas.sh relies on it)."""
    conf = (REPO_ROOT / "nginx.conf").read_text()
    assert "server app:8000 max_fails=1 fail_timeout=10s;" in conf
    assert re.search(r"upstream textclf_app \{[^}]*keepalive 16;", conf)
    (retry,) = re.findall(r"^\s*proxy_next_upstream ([^;]*);", conf, re.MULTILINE)
    # Retried: connection errors and connect timeouts, POST included; never an HTTP status.
    assert retry.split() == ["error", "timeout", "non_idempotent"]
    assert "proxy_next_upstream_tries 3;" in conf and "proxy_next_upstream_timeout 5s;" in conf
    assert "proxy_connect_timeout 3s;" in conf
    # Every proxied location goes through the map whose default is textclf_app.
    assert re.findall(r"proxy_pass ([^;]*);", conf) == ["http://$textclf_upstream"] * 3
    assert re.search(r"map \$host \$textclf_upstream \{\s*default textclf_app;", conf)
    # The files deploy/compose/nginx-upstream.sh writes while replicas load or leave.
    for script in ("nginx-upstream.sh", "replicas.sh"):
        text = (REPO_ROOT / "deploy/compose" / script).read_text()
        assert "PIN_DIR=/tmp/textclf-upstream" in text, script
    assert "/tmp/textclf-upstream/*.map" in conf and "/tmp/textclf-upstream/*.conf" in conf


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
    # With the files deploy/compose/replicas.sh writes while a replica leaves.
    pinned = (
        "mkdir -p /tmp/textclf-upstream && printf 'upstream textclf_staying {\\n"
        "server 127.0.0.2:8000 max_fails=1 fail_timeout=10s;\\nkeepalive 16;\\n}\\n'"
        " >/tmp/textclf-upstream/staying.conf"
        " && echo '~^ textclf_staying;' >/tmp/textclf-upstream/route.map && nginx -t"
    )
    result = run(
        [
            *_nginx_run("--rm", "--add-host", "app:127.0.0.1", name=f"{name}-pin"),
            *(NGINX_IMAGE, "sh", "-c", pinned),
        ],
        check=False,
    )
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr


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
    port = free_port()
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
    port = free_port()
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
    port = free_port()
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
def test_nginx_cuts_off_junk_credentials(engine: None, containers: list[str]) -> None:
    """A client sending Authorization headers that are no `Bearer <key>` to a keyed path
    gets 429 from Nginx after a small burst; no header or a well-formed one is not limited
    by that zone (no app here: what passes Nginx is its 502)."""
    require(_image_present(NGINX_IMAGE), f"{NGINX_IMAGE} absent")
    port = free_port()
    name = f"textclf-nginx-auth-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    run(
        [
            *_nginx_run(
                "-d", "--add-host", "app:127.0.0.1", "-p", f"127.0.0.1:{port}:8080", name=name
            ),
            NGINX_IMAGE,
        ]
    )  # fmt: skip
    _wait_http(f"http://127.0.0.1:{port}/metrics")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

        def statuses(path: str, authorization: str | None) -> list[int]:
            headers = {"Authorization": authorization} if authorization is not None else {}
            return [client.get(path, headers=headers).status_code for _ in range(10)]

        assert statuses("/model", None) == [502] * 10
        assert statuses("/model", "Bearer " + "k" * 32) == [502] * 10
        assert statuses("/health", "Basic junk") == [502] * 10  # not a keyed path
        junk = statuses("/predict", "Basic junk")
        assert junk[:6] == [502] * 6 and junk.count(429) >= 3, junk  # burst 5, then 1 r/s
        refused = client.get("/model", headers={"Authorization": "Bearer"})
    assert refused.status_code == 429 and refused.json()["error_type"] == "rate_limited"


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


def _compose_runner(
    files: list[str], env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """docker-compose with these files and this environment: bounded, output captured, and a
    failure left to the caller (teardown must run whatever happened)."""

    def compose_run(*args: str) -> subprocess.CompletedProcess[str]:
        options = [part for name in files for part in ("-f", name)]
        return subprocess.run(
            ["docker-compose", *options, *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return compose_run


@pytest.mark.e2e
def test_gpu_override_as_the_engine_sees_it(engine: None) -> None:
    """docker-compose 1.29 turns the GPU reservation into an engine device request."""
    image = os.environ.get("APP_IMAGE", "textclf:cpu")
    require(_image_present(image), f"{image} absent (build the stack first)")
    env = {k: v for k, v in os.environ.items() if k != "COMPOSE_FILE"}
    # The CUDA image cannot be built here: the container is only created (never
    # started, there is no GPU) from the CPU image under the GPU image's name.
    env |= {"APP_GPU_IMAGE": image, "COMPOSE_PROJECT_NAME": f"textclf-gpu-{uuid.uuid4().hex[:6]}"}
    compose_run = _compose_runner(["docker-compose.yml", "docker-compose.gpu.yml"], env)

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
    assert '"TEXTCLF_DEVICE=cuda"' in env_out


@pytest.mark.e2e
def test_per_gpu_override_as_the_engine_sees_it(engine: None) -> None:
    """Each replica's container asks the engine for its own GPU, and answers to `app`."""
    image = os.environ.get("APP_IMAGE", "textclf:cpu")
    require(_image_present(image), f"{image} absent (build the stack first)")
    # Beside docker-compose.yml: the override's `extends` names it relative to itself.
    override = REPO_ROOT / f".docker-compose.gpus-{uuid.uuid4().hex[:6]}.yml"
    override.write_text(_per_gpu_override(2))
    env = {k: v for k, v in os.environ.items() if k != "COMPOSE_FILE"}
    env |= {"APP_GPU_IMAGE": image, "COMPOSE_PROJECT_NAME": f"textclf-gpus-{uuid.uuid4().hex[:6]}"}
    compose_run = _compose_runner(["docker-compose.yml", override.name], env)

    seen: dict[str, tuple[list[str], list[str]]] = {}
    try:
        created = compose_run("up", "--no-start", "--no-build", "app", "app-gpu1")
        assert created.returncode == 0, created.stderr
        for service in ("app", "app-gpu1"):
            container = compose_run("ps", "-q", service).stdout.strip()
            template = "{{json .HostConfig.DeviceRequests}}\n{{json .NetworkSettings.Networks}}"
            requests, networks = run(["docker", "inspect", "-f", template, container]).stdout.split(
                "\n", 1
            )
            (request,) = json.loads(requests)
            assert request["Driver"] == "nvidia" and request["Capabilities"] == [["gpu"]]
            (backend,) = [v for k, v in json.loads(networks).items() if k.endswith("_backend")]
            seen[service] = (request["DeviceIDs"], backend["Aliases"])
    finally:
        compose_run("down", "--remove-orphans", "--timeout", "5")
        override.unlink()
    assert seen["app"][0] == ["0"] and seen["app-gpu1"][0] == ["1"], seen
    assert "app" in seen["app-gpu1"][1], seen


# Runs inside the image: the settings exactly as the service would read them.
_SETTINGS_PROBE = (
    "import json; from app.config import Settings; s = Settings(); "
    "print(json.dumps({'model_path': str(s.model_path), 'host': s.host, 'port': s.port, "
    "'warmup': s.warmup, 'device': s.device, 'max_batch_size': s.max_batch_size}))"
)


@pytest.mark.e2e
def test_image_reads_only_prefixed_settings(engine: None) -> None:
    """In the built image: the defaults (aliases in the Dockerfile's ENV) lose to TEXTCLF_
    names, unprefixed variables of another program are not read at all, and a bad
    TEXTCLF_ value stops the service with exit code 2 naming the variable."""
    image = os.environ.get("APP_IMAGE", "textclf:cpu")
    require(_image_present(image), f"{image} absent (build the stack first)")
    model_dir = (REPO_ROOT / os.environ.get("MODEL_DIR", "model/default")).resolve()
    require((model_dir / "config.json").is_file(), f"no model at {model_dir} (make model)")
    hardened = [
        "docker", "run", "--rm", "--network", "none", "--read-only", "--user", "10001:10001",
        "--cap-drop", "ALL", "--tmpfs", "/tmp:size=16m,mode=1777",
        "-v", f"{model_dir}:/models/default:ro",
    ]  # fmt: skip

    def settings(**env: str) -> dict[str, object]:
        flags = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        out = run([*hardened, *flags, image, "python", "-c", _SETTINGS_PROBE], timeout=120)
        loaded = json.loads(out.stdout.strip().splitlines()[-1])
        assert isinstance(loaded, dict)
        return loaded

    defaults = settings()
    assert (defaults["model_path"], defaults["host"], defaults["port"]) == (
        "/models/default",
        "0.0.0.0",
        8000,
    )
    # Another program's variables, each a value the app would refuse; removed names too.
    foreign = {
        "WARMUP": "3",
        "DEVICE": "bogus",
        "MAX_BATCH_SIZE": "0",
        "FORWARD": "nope",
        "LOG_LEVEL": "loud",
        "UNPADDED": "maybe",
        "SCRIPTED": "maybe",
    }
    read = settings(
        **foreign,
        TEXTCLF_PORT="9001",
        PORT="9000",
        MODEL_PATH="/nonexistent",
        TEXTCLF_MODEL_PATH="/models/default",
        TEXTCLF_WARMUP="false",
    )
    assert (read["port"], read["model_path"], read["warmup"]) == (9001, "/models/default", False)
    assert (read["device"], read["max_batch_size"]) == (
        defaults["device"],
        defaults["max_batch_size"],
    )
    assert settings(PORT="9000")["port"] == 9000  # the alias alone still works

    bad = run(
        [*hardened, "-e", "TEXTCLF_MAX_BATCH_SIZE=0", image],  # the image's own CMD
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2, (bad.returncode, bad.stderr[-2000:])
    assert "TEXTCLF_MAX_BATCH_SIZE" in bad.stderr, bad.stderr[-2000:]


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

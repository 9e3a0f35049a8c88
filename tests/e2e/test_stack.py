"""The running Compose stack, through Nginx on loopback (started by deploy/ci/e2e.sh)."""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.conftest import app_metrics, requests_total, run

pytestmark = pytest.mark.e2e

# nginx.conf: rate=20r/s burst=40 per client; a full bucket refills in 2 s.
BUCKET_REFILL_S = 2.5
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def assert_error_shape(response: httpx.Response, status: int, error_type: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error_type"] == error_type
    assert isinstance(body["error"], str) and body["error"]
    assert body.get("request_id") == response.headers["x-request-id"]
    return dict(body)


def test_predict_single(client: httpx.Client) -> None:
    response = client.post("/predict", json={"text": "What a wonderful, helpful service."})
    assert response.status_code == 200, response.text
    body = response.json()
    labels = [score["label"] for score in body["scores"]]
    scores = [score["score"] for score in body["scores"]]
    assert body["label"] == labels[0]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert body["confidence"] == scores[0]
    assert body["num_tokens"] > 0
    assert body["model"]
    assert response.headers["server"] == "nginx"  # server_tokens off: no version
    assert HEX_ID.match(response.headers["x-request-id"])


def test_predict_batch_keeps_order(client: httpx.Client) -> None:
    texts = ["I love it, best purchase ever!", "Terrible. It broke after a day.", "ok"]
    single = [client.post("/predict", json={"text": text}).json()["label"] for text in texts]
    response = client.post("/predict", json={"texts": texts})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(texts)
    assert [p["label"] for p in predictions] == single


def test_request_id_passes_through_to_the_app(client: httpx.Client, app_container: str) -> None:
    request_id = f"e2e-{time.time_ns()}"
    response = client.post("/predict", json={"text": "hello"}, headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    assert response.headers.get_list("x-request-id") == [request_id]  # not duplicated
    logs = run(["docker", "logs", "--since", "2m", app_container], timeout=30)
    assert request_id in logs.stdout + logs.stderr, "the app did not log the client's request id"


def test_malformed_request_id_is_replaced(client: httpx.Client) -> None:
    response = client.get("/health", headers={"X-Request-ID": 'bad id "quoted"'})
    assert response.status_code == 200
    assert HEX_ID.match(response.headers["x-request-id"])


def test_app_validation_errors_pass_through(client: httpx.Client) -> None:
    response = client.post("/predict", json={"texts": []})
    assert_error_shape(response, 422, "validation")
    missing = client.get("/no/such/route")
    assert_error_shape(missing, 404, "not_found")


def test_body_over_limit_is_413_json_from_nginx(client: httpx.Client, app_container: str) -> None:
    before = requests_total(app_container, "/predict")
    payload = json.dumps({"text": "a" * (2 * 1024 * 1024)})
    response = client.post(
        "/predict", content=payload, headers={"content-type": "application/json"}
    )
    body = assert_error_shape(response, 413, "too_large")
    assert "a" * 100 not in json.dumps(body)
    assert requests_total(app_container, "/predict") == before


@pytest.mark.parametrize("path", ["/metrics", "/metrics/", "/metrics?format=text", "/%6Detrics"])
def test_metrics_refused_from_outside(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert_error_shape(response, 403, "forbidden")
    assert "textclf_" not in response.text


def test_metrics_served_inside_the_network(app_container: str) -> None:
    text = app_metrics(app_container)
    assert "textclf_requests_total" in text
    assert "textclf_model_info" in text


def test_docs_load(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "swagger" in docs.text.lower()
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    assert "/predict" in spec.json()["paths"]


def test_health_and_ready(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_burst_is_rate_limited_before_the_app(base_url: str, app_container: str) -> None:
    time.sleep(BUCKET_REFILL_S)  # start from a full bucket, whatever ran before
    before = requests_total(app_container, "/predict")
    total, workers = 150, 50  # limit_conn is 64 per client: limit_req does the rejecting

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            return http.post("/predict", json={"text": "burst"})

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        responses = list(pool.map(one, range(total)))
    elapsed = time.monotonic() - started

    statuses = [r.status_code for r in responses]
    accepted = statuses.count(200)
    limited = [r for r in responses if r.status_code == 429]
    assert accepted + len(limited) == total, sorted(set(statuses))
    # At most the burst plus what the rate refills during the burst (and one spare).
    assert 20 <= accepted <= 40 + 20 * elapsed + 2, (accepted, elapsed)
    assert len(limited) >= total - (40 + 20 * elapsed + 2)
    for response in limited:
        assert_error_shape(response, 429, "rate_limited")
        assert int(response.headers["retry-after"]) >= 1
    # The app saw exactly the accepted requests, none of the rejected ones.
    assert requests_total(app_container, "/predict") - before == accepted
    time.sleep(BUCKET_REFILL_S)


def _inspect(container: str, template: str) -> str:
    return run(["docker", "inspect", "-f", template, container], timeout=30).stdout.strip()


def test_app_container_gets_prefixed_settings(client: httpx.Client, app_container: str) -> None:
    """docker-compose.yml passes the app's settings as TEXTCLF_<NAME>, and the app uses them."""
    env = json.loads(_inspect(app_container, "{{json .Config.Env}}"))
    values = dict(item.split("=", 1) for item in env)
    assert values["TEXTCLF_MODEL_PATH"] == "/models/default"
    assert values["TEXTCLF_PORT"] == "8000"
    assert values["TEXTCLF_DEVICE"] == "cpu"
    assert values["TEXTCLF_FORWARDED_ALLOW_IPS"] == "*"
    # The removed settings are gone from the stack.
    removed = ("UNPADDED", "ONEDNN_LINEAR", "SCRIPTED", "ALONE_PASS_THREADS", "GIL_SWITCH")
    assert not [name for name in values if any(old in name for old in removed)], values
    model = client.get("/model")
    assert model.status_code == 200, model.text
    assert model.json()["device"] == "cpu"


def test_app_container_is_hardened(app_container: str) -> None:
    assert _inspect(app_container, "{{.State.Health.Status}}") == "healthy"
    uid = run(["docker", "exec", app_container, "id", "-u"], timeout=30).stdout.strip()
    assert uid != "0"
    status = run(["docker", "exec", app_container, "cat", "/proc/1/status"], timeout=30).stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    write = run(
        ["docker", "exec", app_container, "sh", "-c", "touch /srv/probe /probe"],
        timeout=30,
        check=False,
    )
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    # /tmp is the one writable place (a small tmpfs).
    run(["docker", "exec", app_container, "sh", "-c", "touch /tmp/probe && rm /tmp/probe"])
    model = run(
        ["docker", "exec", app_container, "sh", "-c", "touch /models/default/probe"],
        timeout=30,
        check=False,
    )
    assert model.returncode != 0, "the model folder must be mounted read-only"
    assert _inspect(app_container, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert _inspect(app_container, "{{.HostConfig.Memory}}") != "0"
    assert _inspect(app_container, "{{.HostConfig.NanoCpus}}") != "0"
    assert int(_inspect(app_container, "{{.HostConfig.PidsLimit}}")) > 0
    assert _inspect(app_container, "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped"


def test_nginx_container_is_hardened(nginx_container: str) -> None:
    status = run(["docker", "exec", nginx_container, "cat", "/proc/1/status"], timeout=30).stdout
    assert "CapEff:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status
    assert run(["docker", "exec", nginx_container, "id", "-u"]).stdout.strip() != "0"
    assert _inspect(nginx_container, "{{.HostConfig.ReadonlyRootfs}}") == "true"


def test_only_nginx_publishes_a_port(app_container: str, nginx_container: str) -> None:
    assert _inspect(app_container, "{{json .HostConfig.PortBindings}}") in {"{}", "null"}
    app_ports = json.loads(_inspect(app_container, "{{json .NetworkSettings.Ports}}")) or {}
    assert all(not bindings for bindings in app_ports.values())
    nginx_ports = json.loads(_inspect(nginx_container, "{{json .NetworkSettings.Ports}}"))
    host_ips = {b["HostIp"] for bindings in nginx_ports.values() if bindings for b in bindings}
    assert host_ips == {"127.0.0.1"}


def test_app_network_is_internal(app_container: str) -> None:
    networks = json.loads(_inspect(app_container, "{{json .NetworkSettings.Networks}}"))
    assert len(networks) == 1
    (name,) = networks
    internal = run(["docker", "network", "inspect", "-f", "{{.Internal}}", name]).stdout.strip()
    assert internal == "true"


def test_image_size_and_labels(app_container: str) -> None:
    image = _inspect(app_container, "{{.Image}}")
    labels = json.loads(
        run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image]).stdout
    )
    assert labels["org.opencontainers.image.title"] == "textclf"
    assert labels["org.textclf.torch-variant"] == "cpu"
    config = json.loads(run(["docker", "image", "inspect", "-f", "{{json .Config}}", image]).stdout)
    assert config["Cmd"] == ["python", "-m", "app"]
    assert config["User"] not in {"", "0", "root"}
    assert "healthcheck.py" in " ".join(config["Healthcheck"]["Test"])
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image]).stdout)
    base = int(
        run(["docker", "image", "inspect", "-f", "{{.Size}}", "python:3.11-slim-bookworm"]).stdout
    )
    added_mb = (size - base) / 1e6
    print(f"image {size / 1e6:.0f} MB = base {base / 1e6:.0f} MB + {added_mb:.0f} MB")  # noqa: T201
    assert added_mb <= 700


def test_runtime_has_no_build_tools(app_container: str) -> None:
    tools = ("gcc", "cc", "c++", "g++", "make", "as", "ld", "strip", "apt-get")
    probe = f"import json, shutil; print(json.dumps([t for t in {tools!r} if shutil.which(t)]))"
    found = json.loads(run(["docker", "exec", app_container, "python", "-c", probe]).stdout)
    # apt-get is the base image's own; compilers and binutils must be absent.
    assert set(found) <= {"apt-get"}, found
    venv_pip = run(["docker", "exec", app_container, "ls", "/opt/venv/bin"]).stdout.split()
    assert not [name for name in venv_pip if name.startswith("pip")]


def test_nginx_started_after_the_app_was_healthy(app_container: str, nginx_container: str) -> None:
    """depends_on: condition: service_healthy, as the engine recorded it."""
    since = os.environ.get("E2E_UP_SINCE")
    if not since:
        pytest.skip("E2E_UP_SINCE unset (set by deploy/ci/e2e.sh)")
    events = run(
        [
            "docker",
            "events",
            "--since",
            since,
            "--until",
            str(int(time.time()) + 1),
            "--filter",
            f"container={app_container}",
            "--filter",
            f"container={nginx_container}",
            "--format",
            "{{json .}}",
        ],
        timeout=60,
    ).stdout.splitlines()
    parsed = [json.loads(line) for line in events if line.strip()]
    healthy = [
        e["timeNano"]
        for e in parsed
        if e.get("id") == app_container and e.get("status") == "health_status: healthy"
    ]
    started = [
        e["timeNano"]
        for e in parsed
        if e.get("id") == nginx_container and e.get("status") == "start"
    ]
    assert healthy, "no health_status: healthy event for the app"
    assert started, "no start event for nginx"
    assert min(started) > min(healthy)

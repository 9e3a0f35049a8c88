"""The app process dies under Compose: Docker restarts it, Nginx answers JSON meanwhile."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.e2e.conftest import run

pytestmark = pytest.mark.e2e


def _inspect(container: str, template: str) -> str:
    return run(["docker", "inspect", "-f", template, container], timeout=30).stdout.strip()


def test_a_killed_app_is_restarted_and_nginx_answers_json_meanwhile(
    base_url: str, app_container: str
) -> None:
    """SIGKILL to the app's process from the host, as the kernel's OOM killer would send it
    (`docker kill` would count as a manual stop, which the restart policy ignores)."""
    restarts = int(_inspect(app_container, "{{.RestartCount}}"))
    pid = int(_inspect(app_container, "{{.State.Pid}}"))
    assert pid > 1
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.post("/predict", json={"text": "fine"}).status_code == 200
        os.kill(pid, signal.SIGKILL)
        statuses: dict[int, int] = {}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            response = client.post("/predict", json={"text": "are you back?"})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                break
            assert response.headers["content-type"].startswith("application/json")
            if response.status_code == 504:
                # A connect to the old address in the seconds before Nginx follows the
                # restarted container to its new one (deploy/compose/nginx-upstream.sh).
                assert response.json()["error_type"] == "timeout", response.text
            else:
                assert response.status_code in (502, 503), response.text
                assert response.json()["error_type"] in ("bad_gateway", "not_ready", "unavailable")
                assert "retry-after" in response.headers
            time.sleep(0.25)
        assert statuses.get(200) == 1, f"not back within 180 s: {statuses}"
        assert statuses.get(504, 0) <= 2, statuses
        assert sum(statuses.values()) > 1, "the outage was never seen: was the process killed?"
        print(f"\n[e2e] after SIGKILL: {statuses}")  # noqa: T201
    assert int(_inspect(app_container, "{{.RestartCount}}")) == restarts + 1
    assert _inspect(app_container, "{{.State.Health.Status}}") in ("healthy", "starting")

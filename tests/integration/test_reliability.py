"""The reliability harness, short (`make reliability` runs the full scenarios): overload at 4R
straight to the app on the real default model, and a one-minute soak on the fake engine
behind the real server, where a leaking fake must fail the memory check and a clean one pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.server import ROOT, free_port, http_status


def _bench(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "reliability", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str], result: Path) -> tuple[int, dict[str, Any]]:
    output, _ = process.communicate(timeout=240)
    assert result.is_file(), output[-4000:]
    return process.returncode, json.loads(result.read_text(encoding="utf-8"))


def _checks(result: dict[str, Any]) -> dict[str, bool]:
    return {c["name"]: c["ok"] for c in result["checks"]}


def test_overload_at_4r_is_answered_without_loss_or_timeouts(
    model_path: Path, tmp_path: Path
) -> None:
    """4R for 10 s: every request 200/429/503 in time, 0 lost, 0 x 504, and every 429/503
    with Retry-After and the JSON envelope. R is measured first by the quick step scenario."""
    _, data = _finish(
        _bench(
            "overload", "--quick", "--model", str(model_path), "--out", str(tmp_path), "--name", "o"
        ),
        tmp_path / "o.json",
    )
    step, overload = data["results"]
    assert step["scenario"] == "step" and step["R"] > 0
    assert overload["rate"] == pytest.approx(4 * step["R"])
    requests = overload["requests"]
    assert requests["sent"] >= 0.9 * overload["rate"] * overload["seconds"]
    assert requests["lost"] == 0, requests["failures"]
    assert requests["statuses"].get("504", 0) == 0, requests
    assert set(requests["statuses"]) <= {"200", "429", "503"}, requests
    assert requests["retry_after_missing"] == 0 and requests["error_not_json"] == 0
    assert data["machine"]["torch_cpu_capability"]


@pytest.fixture
def fake_servers(tmp_path: Path) -> Iterator[dict[str, tuple[str, int]]]:
    """Two fake-engine servers, one leaking 64 KiB per scored text: name -> (URL, PID)."""
    started: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, tuple[str, int]] = {}
    try:
        for name, leak_kb in (("clean", "0"), ("leaking", "64")):
            port = free_port()
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": os.environ.get("HOME", "/tmp"),
                "TEXTCLF_HOST": "127.0.0.1",
                "TEXTCLF_PORT": str(port),
                "TEXTCLF_LOG_LEVEL": "warning",
                "FAKE_LEAK_KB_PER_REQUEST": leak_kb,
            }
            log = (tmp_path / f"{name}.log").open("wb")
            started[name] = subprocess.Popen(
                [sys.executable, "-m", "tests.fake_server"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=log,
            )
            urls[name] = (f"http://127.0.0.1:{port}", started[name].pid)
        deadline = time.monotonic() + 60
        for url, _ in urls.values():
            while http_status(f"{url}/ready", 1.0) != 200:
                assert time.monotonic() < deadline, "fake server not ready"
                time.sleep(0.1)
        yield urls
    finally:
        for process in started.values():
            process.terminate()
            process.wait(30)


def test_the_soak_check_catches_a_leak_and_passes_a_clean_server(
    fake_servers: dict[str, tuple[str, int]], tmp_path: Path
) -> None:
    """60 s at 50 requests/s on each fake at once (the first 15 s are warm-up)."""
    runs = {}
    for name, (url, pid) in fake_servers.items():
        soak = ["soak", "--url", url, "--pid", str(pid), "--soak-rate", "50", "--minutes", "1"]
        runs[name] = _bench(*soak, "--warmup-s", "15", "--out", str(tmp_path), "--name", name)
    results = {name: _finish(process, tmp_path / f"{name}.json") for name, process in runs.items()}
    clean_code, clean = results["clean"]
    leak_code, leaking = results["leaking"]
    (clean_soak,), (leak_soak,) = clean["results"], leaking["results"]
    assert clean_soak["requests"]["sent"] == leak_soak["requests"]["sent"] == 3000
    assert all(_checks(clean_soak).values()), clean_soak["checks"]
    assert clean_code == 0
    leak_checks = _checks(leak_soak)
    assert not leak_checks["RSS growth after warm-up %"], leak_soak["checks"]
    assert leak_checks["non-2xx and lost"], leak_soak["checks"]
    assert leak_code == 1

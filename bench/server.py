"""Start `python -m app` on a free loopback port and stop it: the one launcher that the
benchmark and the integration tests share."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """Status code of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def get_json(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        data = json.loads(resp.read())
    if not isinstance(data, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return data


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), or None when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class ServerProcess:
    """`python -m app` in `cwd`, started on construction, from a bare environment (PATH,
    HOME) plus MODEL_PATH, HOST, PORT, LOG_LEVEL and `env`: the plain names, which both the current
    app (as aliases of TEXTCLF_*) and older checkouts read."""

    def __init__(
        self,
        model_path: Path,
        log: IO[bytes],
        env: Mapping[str, str] | None = None,
        *,
        cwd: Path = ROOT,
        python: str = sys.executable,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "MODEL_PATH": str(model_path),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "info",
        } | dict(env or {})
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [python, "-m", "app"], cwd=cwd, env=environment, stdout=log, stderr=log
        )
        self.ready_after_s: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds from process start to the first 200 of /ready."""
        deadline = self.started + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode} before ready")
            if http_status(f"{self.url}/ready", 1.0) == 200:
                self.ready_after_s = time.monotonic() - self.started
                return self.ready_after_s
            time.sleep(0.05)
        raise TimeoutError(f"server not ready within {timeout_s} s")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (graceful drain), SIGKILL only when it does not exit in time."""
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

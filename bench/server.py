"""Start the app as a subprocess, time its cold start, and stop it with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from bench.procmon import tree_rss_bytes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """Status code of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


class ServerError(RuntimeError):
    """The server did not become ready or died."""


@dataclass
class ServerProcess:
    """`python -m app` on 127.0.0.1:`port` with env overrides; logs go to `log_path`."""

    env_overrides: Mapping[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    cwd: Path = field(default_factory=Path.cwd)
    proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _log: IO[bytes] | None = field(init=False, default=None)
    started_at: float = field(init=False, default=0.0)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(os.environ)
        env.update(self.env_overrides)
        env["HOST"] = "127.0.0.1"
        env["PORT"] = str(self.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=self.cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 120.0, poll_s: float = 0.05) -> dict[str, Any]:
        """Poll /health and /ready; returns seconds from process start to each first 200."""
        assert self.proc is not None, "start() first"
        health_s: float | None = None
        deadline = self.started_at + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"server exited with {self.proc.returncode} before ready; see {self.log_path}"
                )
            if health_s is None and http_status(f"{self.base_url}/health", 1.0) == 200:
                health_s = time.monotonic() - self.started_at
            if http_status(f"{self.base_url}/ready", 1.0) == 200:
                ready_s = time.monotonic() - self.started_at
                return {
                    "to_listening_s": round(health_s if health_s is not None else ready_s, 3),
                    "to_ready_s": round(ready_s, 3),
                    "rss_mib_at_ready": round(
                        tree_rss_bytes(psutil.Process(self.proc.pid)) / 2**20, 1
                    ),
                }
            time.sleep(poll_s)
        raise ServerError(f"server not ready after {timeout_s:.0f}s; see {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """SIGTERM, wait for exit (graceful drain), SIGKILL only as a last resort."""
        if self.proc is None:
            return {}
        info: dict[str, Any] = {}
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
                info["stop_s"] = round(time.monotonic() - t0, 3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                info["killed"] = True
        info["exit_code"] = self.proc.returncode
        if self._log is not None:
            self._log.close()
        return info

"""Start `python -m app` as a real process on a free loopback port, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[2]


def default_model_path() -> Path:
    """The model the integration tests serve: MODEL_PATH, else the built default model."""
    path = Path(os.environ.get("MODEL_PATH", ROOT / "model" / "default"))
    if not (path / "config.json").is_file():
        raise RuntimeError(f"no model at {path}: run `make model` first (make test does)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    def __init__(self, model_path: Path, log: IO[bytes], **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "MODEL_PATH": str(model_path),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "info",
        } | env
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=ROOT, env=environment, stdout=log, stderr=log
        )
        self.ready_after_s: float | None = None

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode} before ready")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    self.ready_after_s = time.monotonic() - self.started
                    return self.ready_after_s
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready within {timeout_s} s")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

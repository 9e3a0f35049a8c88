"""A throwaway Nginx in front of the server the tool started (`--nginx-url local`).

Same app instance behind and beside the proxy, so "through Nginx vs direct" measures the
proxy alone. The config is a minimal keep-alive reverse proxy (one worker: the box has two
cores and the app needs them); the deployment's own nginx.conf is measured by giving its
URL instead.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.server import free_port, http_status

CONFIG_TEMPLATE = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream app {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 2m;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


def render_config(tmp: Path, port: int, upstream_port: int) -> str:
    return CONFIG_TEMPLATE.format(tmp=tmp, port=port, upstream_port=upstream_port)


def nginx_version() -> str | None:
    exe = shutil.which("nginx")
    if exe is None:
        return None
    proc = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    return (proc.stderr or proc.stdout).strip() or None


@dataclass
class LocalNginx:
    upstream_port: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(init=False, default=None)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        exe = shutil.which("nginx")
        if exe is None:
            raise RuntimeError("nginx not found: apt-get install -y nginx")
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-nginx-")
        tmp = Path(self._tmp.name)
        conf = tmp / "nginx.conf"
        conf.write_text(render_config(tmp, self.port, self.upstream_port), encoding="utf-8")
        self.proc = subprocess.Popen(
            [exe, "-p", str(tmp), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (tmp / "error.log").read_text(encoding="utf-8", errors="replace")
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {err[-500:]}")
            if http_status(f"{self.base_url}/health", 1.0) == 200:
                return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start proxying in time")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

"""CPU and memory of the serving process while a step runs (psutil, sampled in a thread)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def tree_cpu_seconds(proc: psutil.Process) -> float:
    """user+system CPU of a process and its live children."""
    total = 0.0
    for p in _tree(proc):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += float(t.user) + float(t.system)
    return total


def tree_rss_bytes(proc: psutil.Process) -> int:
    total = 0
    for p in _tree(proc):
        try:
            total += int(p.memory_info().rss)
        except psutil.Error:
            continue
    return total


@dataclass
class ProcessMonitor:
    """Samples RSS every `interval_s`; CPU is the exact cpu_times difference over the step."""

    pid: int
    interval_s: float = 0.5
    _proc: psutil.Process = field(init=False)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _thread: threading.Thread | None = field(init=False, default=None)
    _rss: list[int] = field(init=False, default_factory=list)
    _cpu0: float = field(init=False, default=0.0)
    _t0: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._proc = psutil.Process(self.pid)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._rss.append(tree_rss_bytes(self._proc))

    def start(self) -> None:
        self._rss = [tree_rss_bytes(self._proc)]
        self._cpu0 = tree_cpu_seconds(self._proc)
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="procmon", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        cpu = tree_cpu_seconds(self._proc) - self._cpu0
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._rss.append(tree_rss_bytes(self._proc))
        return {
            "cpu_s": round(cpu, 3),
            # 1.0 = one core fully busy; on a 2-core box the ceiling is 2.0.
            "cpu_cores": round(cpu / wall, 3) if wall > 0 else None,
            "rss_mib_peak": round(max(self._rss) / 2**20, 1),
            "rss_mib_end": round(self._rss[-1] / 2**20, 1),
        }


def find_listener_pid(port: int) -> int | None:
    """PID listening on a local TCP port (for --url runs against a server we did not start)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None

"""Closed-loop load with wrk (Debian package `wrk`): N connections, each sends the next
request as soon as the previous answer arrives."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).with_name("wrk_corpus.lua")
BEGIN = "BENCH_WRK_JSON_BEGIN"
END = "BENCH_WRK_JSON_END"


class LoadGenError(RuntimeError):
    """The load generator is missing or produced no parsable result."""


@dataclass(frozen=True)
class GenCpu:
    """CPU seconds a finished child used (getrusage over the children reaped meanwhile)."""

    user_s: float
    system_s: float

    @property
    def total_s(self) -> float:
        return self.user_s + self.system_s


def children_cpu() -> GenCpu:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return GenCpu(ru.ru_utime, ru.ru_stime)


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    """Extract the JSON object that wrk_corpus.lua prints between the markers."""
    start = stdout.find(BEGIN)
    end = stdout.find(END, start + 1)
    if start < 0 or end < 0:
        raise LoadGenError("wrk output has no result block (was the Lua script loaded?)")
    payload = stdout[start + len(BEGIN) : end].strip()
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise LoadGenError("wrk result is not a JSON object")
    return data


def summarize_wrk(data: dict[str, Any], items_per_request: int) -> dict[str, Any]:
    """Requests/s, sentences/s, latency percentiles (ms) and errors from the raw block."""
    duration_s = float(data["duration_us"]) / 1e6
    statuses = {str(k): int(v) for k, v in dict(data.get("statuses", {})).items()}
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    lat = data["latency_us"]
    pct = {str(k): float(v) for k, v in dict(lat["percentiles"]).items()}
    errors = {k: int(v) for k, v in dict(data["errors"]).items() if int(v) > 0}
    # wrk counts every completed response; only 2xx answers are useful work.
    return {
        "duration_s": round(duration_s, 3),
        "requests": int(data["requests"]),
        "ok_requests": ok,
        "requests_per_s": round(int(data["requests"]) / duration_s, 2) if duration_s else 0.0,
        "ok_requests_per_s": round(ok / duration_s, 2) if duration_s else 0.0,
        "sentences_per_s": round(ok * items_per_request / duration_s, 2) if duration_s else 0.0,
        "latency_ms": {
            "p50": round(pct.get("50", 0.0) / 1000, 2),
            "p75": round(pct.get("75", 0.0) / 1000, 2),
            "p90": round(pct.get("90", 0.0) / 1000, 2),
            "p99": round(pct.get("99", 0.0) / 1000, 2),
            "p99.9": round(pct.get("99.9", 0.0) / 1000, 2),
            "mean": round(float(lat["mean"]) / 1000, 2),
            "max": round(float(lat["max"]) / 1000, 2),
        },
        "statuses": dict(sorted(statuses.items())),
        "socket_errors": errors,
    }


def wrk_version() -> str | None:
    exe = shutil.which("wrk")
    if exe is None:
        return None
    proc = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).strip().splitlines()
    return first[0] if first else None


def run_wrk(
    url: str,
    bodies_file: Path,
    connections: int,
    duration_s: float,
    *,
    threads: int = 1,
    timeout_s: float = 30.0,
    items_per_request: int = 1,
) -> dict[str, Any]:
    """Run wrk once; returns the summary plus the generator's own CPU use."""
    exe = shutil.which("wrk")
    if exe is None:
        raise LoadGenError("wrk not found: apt-get install -y wrk")
    threads = max(1, min(threads, connections))
    cmd = [
        exe,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(bodies_file),
    ]
    cpu_before = children_cpu()
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    cpu_after = children_cpu()
    if proc.returncode != 0:
        raise LoadGenError(f"wrk exited {proc.returncode}: {proc.stderr.strip()[:500]}")
    summary = summarize_wrk(parse_wrk_output(proc.stdout), items_per_request)
    used = cpu_after.total_s - cpu_before.total_s
    summary["generator"] = {
        "tool": "wrk",
        "threads": threads,
        "connections": connections,
        "cpu_s": round(used, 3),
        "cpu_cores": round(used / wall, 3) if wall > 0 else None,
    }
    return summary

"""Closed-loop load with wrk (Debian package `wrk`): N connections, each sends the next
corpus body as soon as the previous answer arrives."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).with_name("wrk_corpus.lua")
BEGIN = "BENCH_WRK_JSON_BEGIN"
END = "BENCH_WRK_JSON_END"


class LoadGenError(RuntimeError):
    """wrk is missing or produced no parsable result."""


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    """The JSON object that wrk_corpus.lua prints between the markers."""
    start = stdout.find(BEGIN)
    end = stdout.find(END, start + 1)
    if start < 0 or end < 0:
        raise LoadGenError("wrk output has no result block (was the Lua script loaded?)")
    data = json.loads(stdout[start + len(BEGIN) : end])
    if not isinstance(data, dict):
        raise LoadGenError("wrk result is not a JSON object")
    return data


def summarize_wrk(data: dict[str, Any]) -> dict[str, Any]:
    """Requests/s (all, and 2xx only), latency percentiles (ms), statuses, socket errors."""
    duration_s = float(data["duration_us"]) / 1e6
    statuses = {str(k): int(v) for k, v in dict(data.get("statuses", {})).items()}
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    lat = data["latency_us"]
    pct = {str(k): float(v) / 1000 for k, v in dict(lat["percentiles"]).items()}
    per_s = 1 / duration_s if duration_s else 0.0
    return {
        "duration_s": round(duration_s, 3),
        "requests": int(data["requests"]),
        "requests_per_s": round(int(data["requests"]) * per_s, 2),
        # Only 2xx answers are useful work; a 503 is cheap and would flatter the rate.
        "ok_requests_per_s": round(ok * per_s, 2),
        "latency_ms": {
            "p50": round(pct.get("50", 0.0), 2),
            "p90": round(pct.get("90", 0.0), 2),
            "p99": round(pct.get("99", 0.0), 2),
            "max": round(float(lat["max"]) / 1000, 2),
        },
        "statuses": dict(sorted(statuses.items())),
        "socket_errors": {k: int(v) for k, v in dict(data["errors"]).items() if int(v) > 0},
    }


def run_wrk(
    url: str, bodies_file: Path, connections: int, seconds: float, timeout_s: float = 30.0
) -> dict[str, Any]:
    """One wrk run (one thread: it needs a few % of a core at these rates)."""
    exe = shutil.which("wrk")
    if exe is None:
        raise LoadGenError("wrk not found: apt-get install -y wrk (make bench-tools)")
    cmd = [
        exe,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(bodies_file),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LoadGenError(f"wrk exited {proc.returncode}: {proc.stderr.strip()[:500]}")
    return summarize_wrk(parse_wrk_output(proc.stdout))

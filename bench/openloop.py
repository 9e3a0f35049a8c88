"""Open-loop (fixed-rate) load with the npm package `loadtest`, driven by a small Node script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import percentile_from_counts
from bench.wrkrun import LoadGenError, children_cpu

NODE_SCRIPT = Path(__file__).with_name("loadtest_openloop.mjs")
BEGIN = "BENCH_OPENLOOP_JSON_BEGIN"
END = "BENCH_OPENLOOP_JSON_END"


def find_loadtest() -> Path | None:
    """The installed `loadtest` package folder: $BENCH_LOADTEST_DIR, else `npm root -g`."""
    override = os.environ.get("BENCH_LOADTEST_DIR")
    candidates: list[Path] = [Path(override)] if override else []
    npm = shutil.which("npm")
    if npm is not None and not override:
        proc = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            candidates.append(Path(proc.stdout.strip()) / "loadtest")
    for path in candidates:
        if (path / "index.js").is_file():
            return path
    return None


def loadtest_version(folder: Path | None) -> str | None:
    if folder is None:
        return None
    try:
        meta = json.loads((folder / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = meta.get("version")
    return f"loadtest {version}" if isinstance(version, str) else None


def parse_openloop_output(stdout: str) -> dict[str, Any]:
    start = stdout.find(BEGIN)
    end = stdout.find(END, start + 1)
    if start < 0 or end < 0:
        raise LoadGenError("loadtest runner printed no result block")
    data = json.loads(stdout[start + len(BEGIN) : end].strip())
    if not isinstance(data, dict):
        raise LoadGenError("loadtest result is not a JSON object")
    return data


def summarize_openloop(
    data: dict[str, Any], offered_rate: float, items_per_request: int
) -> dict[str, Any]:
    elapsed = float(data.get("elapsed_s") or 0.0)
    statuses = {str(k): int(v) for k, v in dict(data.get("statuses", {})).items()}
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    counts = {int(k): int(v) for k, v in dict(data.get("histogram_ms", {})).items()}
    sent = int(data.get("sent", 0))
    answered = sum(statuses.values())

    def pct(q: float) -> float | None:
        return percentile_from_counts(counts, q)

    return {
        "offered_rate": offered_rate,
        "duration_s": round(elapsed, 3),
        "sent": sent,
        "answered": answered,
        # Requests still unanswered when the step ended: a growing number means overload.
        "unanswered_at_end": max(0, sent - answered),
        "ok_requests": ok,
        "requests_per_s": round(answered / elapsed, 2) if elapsed else 0.0,
        "ok_requests_per_s": round(ok / elapsed, 2) if elapsed else 0.0,
        "sentences_per_s": round(ok * items_per_request / elapsed, 2) if elapsed else 0.0,
        "latency_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "mean": data.get("mean_ms"),
            "max": data.get("max_ms"),
        },
        "statuses": dict(sorted(statuses.items())),
        "connections_opened": data.get("clients"),
    }


def run_openloop(
    url: str,
    bodies_file: Path,
    rate: float,
    duration_s: float,
    *,
    timeout_s: float = 30.0,
    items_per_request: int = 1,
) -> dict[str, Any]:
    node = shutil.which("node")
    folder = find_loadtest()
    if node is None or folder is None:
        raise LoadGenError("open loop needs node and `npm install -g loadtest@8.2.1`")
    config = {
        "loadtest_dir": str(folder),
        "url": url,
        "bodies_file": str(bodies_file),
        "rate": rate,
        "seconds": max(1, round(duration_s)),
        "timeout_ms": round(timeout_s * 1000),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(config, fh)
        config_path = fh.name
    try:
        cpu_before = children_cpu()
        started = time.monotonic()
        proc = subprocess.run(
            [node, str(NODE_SCRIPT), config_path],
            capture_output=True,
            text=True,
            check=False,
            timeout=duration_s + timeout_s + 30,
        )
        wall = time.monotonic() - started
        cpu_after = children_cpu()
    finally:
        os.unlink(config_path)
    if proc.returncode != 0:
        raise LoadGenError(f"loadtest runner exited {proc.returncode}: {proc.stderr[-500:]}")
    summary = summarize_openloop(parse_openloop_output(proc.stdout), rate, items_per_request)
    used = cpu_after.total_s - cpu_before.total_s
    summary["generator"] = {
        "tool": loadtest_version(folder),
        "cpu_s": round(used, 3),
        "cpu_cores": round(used / wall, 3) if wall > 0 else None,
    }
    return summary

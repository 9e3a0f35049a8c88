"""The benchmark tool end to end on a tiny model: real servers, wrk, loadtest and Nginx.

Short steps, so its figures mean nothing; it checks that every part of `python -m bench run`
still runs and writes a complete report (the figures themselves: BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_runs_every_part_and_writes_its_report(
    tiny_model: Path, tmp_path: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "--quick",
        "--model",
        str(tiny_model),
        "--nginx-url",
        "local",
        "--concurrency",
        "1,32",
        "--open-rates",
        "0.5x",
        "--step-s",
        "1",
        "--warmup-s",
        "0.5",
        "--ceiling-s",
        "0.5",
        "--paired-rounds",
        "2",
        "--out",
        str(tmp_path),
        "--name",
        "smoke",
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text(encoding="utf-8"))
    assert result["errors"] == []
    # Every target measured (PASS or FAIL: these short steps decide nothing), none SKIPped.
    statuses = [t["status"] for t in result["targets"]]
    assert len(statuses) == 5 and set(statuses) <= {"PASS", "FAIL"}, statuses
    series = result["series"]
    for name in ("baseline", "unbatched_parallel", "batched", "nginx", "direct_after"):
        steps = series[name]["steps"]
        assert steps and all(set(step["statuses"]) == {"200"} for step in steps), name
    assert [s["concurrency"] for s in series["batched"]["steps"]] == [1, 32]
    assert series["open_loop"]["steps"][0]["ok_requests_per_s"] > 0
    assert len(result["paired"]) == 2
    assert all(r["ratio"] > 0 and r["nginx_ratio"] > 0 for r in result["paired"])
    assert result["ceiling"] and result["ceiling_after"]
    report = (tmp_path / "smoke.md").read_text(encoding="utf-8")
    assert "## Paired rounds" in report and "median of 2 paired rounds" in report
    assert (tmp_path / "smoke.png").stat().st_size > 0

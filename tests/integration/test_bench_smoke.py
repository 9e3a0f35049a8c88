"""The benchmark tool end to end on a tiny model: a real server, wrk, the in-process ceiling,
and the A/B mode (this checkout against itself). Short steps: the figures mean nothing;
the test checks that every part runs and writes a complete report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.server import ROOT


def _bench(*args: str) -> None:
    command = [sys.executable, "-m", "bench", *args]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_the_benchmark_runs_and_writes_its_report(tiny_model: Path, tmp_path: Path) -> None:
    _bench(
        "run", "--quick", "--model", str(tiny_model), "--concurrency", "1,32",
        "--step-s", "1", "--warmup-s", "0.5", "--ceiling-s", "0.5", "--repeat", "2",
        "--out", str(tmp_path), "--name", "smoke",
    )  # fmt: skip
    result = json.loads((tmp_path / "smoke.json").read_text(encoding="utf-8"))
    assert result["machine"]["cpu_class"].startswith("cpu-")
    assert result["machine"]["torch_cpu_capability"]
    assert result["model"]["forward"] == result["ceiling_engine"]["engine_forward"]
    assert len(result["repeats"]) == 2
    for repeat in result["repeats"]:
        assert [s["concurrency"] for s in repeat["steps"]] == [1, 32]
        assert all(set(s["statuses"]) == {"200"} for s in repeat["steps"])
        assert repeat["ceiling"]["sorted_batch32_sentences_per_s"] > 0
        assert repeat["steps"][1]["server"]["forward_passes"] > 0
    summary = result["summary"]
    assert summary["share_of_ceiling_at_32"] > 0 and summary["c1_p50_ms"] > 0
    assert result["cold_start_s"] > 0 and result["rss_mib_at_ready"] > 0
    assert "of the model-only ceiling" in (tmp_path / "smoke.md").read_text(encoding="utf-8")


def test_the_ab_mode_alternates_two_checkouts(tiny_model: Path, tmp_path: Path) -> None:
    _bench(
        "ab", "--a", str(ROOT), "--b", str(ROOT), "--model", str(tiny_model), "--rounds", "2",
        "--seconds", "1", "--warmup-s", "0.5", "--out", str(tmp_path),
    )  # fmt: skip
    result = json.loads((tmp_path / "ab.json").read_text(encoding="utf-8"))
    assert [(r["round"], r["side"]) for r in result["rounds"]] == [
        (1, "A"), (1, "B"), (2, "B"), (2, "A"),
    ]  # fmt: skip
    assert all(r["c32_ok_rps"] > 0 and r["non_2xx"] == 0 for r in result["rounds"])
    assert result["b_over_a"]["c32_ok_rps"] > 0
    assert result["b_over_a_median_per_round"]["c32_ok_rps"] > 0
    assert "| c=32 ok req/s |" in (tmp_path / "ab.md").read_text(encoding="utf-8")

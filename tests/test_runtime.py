"""Process tuning and the CPU budget (app/engine/runtime.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.engine import runtime

ROOT = Path(__file__).resolve().parents[1]

_REPORT = """
import gc, json, os, sys
{setup}
print(json.dumps({{
    "env": {{k: os.environ.get(k) for k in (
        "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM",
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}},
    "switch_interval": sys.getswitchinterval(),
    "gen0": gc.get_threshold()[0],
    "torch_loaded": "torch" in sys.modules,
}}))
"""


def _report(setup: str, **env: str) -> dict[str, object]:
    names = {"HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "LRU_CACHE_CAPACITY"}
    base = {k: v for k, v in os.environ.items() if k not in names and "CACHE_CAPACITY" not in k}
    out = subprocess.run(
        [sys.executable, "-c", _REPORT.format(setup=setup)],
        env=base | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def test_configure_process_tunes_the_interpreter_and_the_environment() -> None:
    report = _report(
        "from app.engine import runtime\nruntime.configure_process()", TOKENIZERS_PARALLELISM="true"
    )
    assert report["env"] == {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "true",  # set by the operator: kept
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256",
        "LRU_CACHE_CAPACITY": "256",
    }
    assert report["switch_interval"] == pytest.approx(runtime.GIL_SWITCH_INTERVAL_S)
    assert report["gen0"] == runtime.GC_GEN0_THRESHOLD
    assert report["torch_loaded"] is False  # it must run before torch reads its environment


def test_importing_the_app_tunes_nothing() -> None:
    # Only `python -m app` calls configure_process: tests and embedders keep their settings.
    report = _report("import app.main, app.engine.runtime")
    env = report["env"]
    assert isinstance(env, dict)
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] is None and env["LRU_CACHE_CAPACITY"] is None
    assert report["switch_interval"] == pytest.approx(0.005)
    assert report["gen0"] == 700


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 cores of time: two threads, not one
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "garbage\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota_caps_the_core_count(
    tmp_path: Path, files: dict[str, str], cores: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert runtime.cgroup_cpu_quota(tmp_path) == cores


@pytest.mark.parametrize(
    ("affinity", "quota", "cores", "cpu_workers"),
    [(8, None, 8, 4), (8, 2, 2, 2), (1, None, 1, 1), (3, 16, 3, 3)],
)
def test_cpu_count_and_default_workers(
    monkeypatch: pytest.MonkeyPatch, affinity: int, quota: int | None, cores: int, cpu_workers: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: quota)
    assert runtime.cpu_count() == cores
    assert runtime.default_workers("cpu") == cpu_workers
    assert runtime.default_workers("cuda") == 1

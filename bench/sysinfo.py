"""The machine a result was measured on, recorded in every result: the figures depend on
the CPU's instruction sets as much as on the code."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo(key: str) -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return ""


def cpu_class(flags: list[str]) -> str:
    """The name a result file is kept under: one current result per class."""
    if "amx_tile" in flags:
        return "cpu-avx512-amx"
    if "avx512f" in flags:
        return "cpu-avx512"
    return "cpu-avx2" if "avx2" in flags else "cpu-other"


def git_commit(cwd: Path) -> str | None:
    """The checkout's commit, with "-dirty" when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    return f"{head}-dirty" if head and dirty else head or None


def machine(cwd: Path) -> dict[str, Any]:
    import torch

    flags = [f for f in FLAGS if f in _cpuinfo("flags").split()]
    return {
        "cpu_model": _cpuinfo("model name") or platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "flags": flags,
        "cpu_class": cpu_class(flags),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git": git_commit(cwd),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def describe(m: dict[str, Any]) -> str:
    """One line for the reports."""
    return (
        f"{m['cpu_model']}, {m['cores']} cores, {m['cpu_class']} (torch capability "
        f"{m['torch_cpu_capability']}; flags {' '.join(m['flags'])}), torch {m['torch']}, "
        f"git {m['git']}, load average {m['load_average']}"
    )

"""Process-wide tuning and the CPU budget. `__main__` calls these; nothing runs on import."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import os
import sys
from pathlib import Path

# A thread between two forward passes needs the GIL for a moment; CPython's 5 ms default
# left it idle behind the busy event loop (BENCHMARKS.md, decisions).
GIL_SWITCH_INTERVAL_S = 0.0002
# Requests allocate many short-lived containers; a larger gen0 lets them die by refcount
# instead of being promoted into the slow generations (BENCHMARKS.md, decisions).
GC_GEN0_THRESHOLD = 20_000
# oneDNN keeps a kernel per shape; the packed Linear runs at most 16 row counts per shape.
_ONEDNN_CACHE_ENTRIES = "256"


def configure_process() -> None:
    """Environment and interpreter settings for serving; call before torch is imported."""
    # The model is a local folder: never reach a hub, send no telemetry.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", _ONEDNN_CACHE_ENTRIES)
    os.environ.setdefault("LRU_CACHE_CAPACITY", _ONEDNN_CACHE_ENTRIES)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, older, oldest)


def freeze_heap() -> None:
    """Move the loaded model's Python objects (hundreds of thousands) out of the cyclic
    collector's reach: a full collection over them holds the GIL for a long pause."""
    gc.collect()
    gc.freeze()


def cpu_count() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container's `cpus:` limit leaves the affinity listing every host core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_cpu_quota()
    return max(1, min(cores or 1, quota) if quota else cores or 1)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole cores of this cgroup's CPU quota (v2 `cpu.max`, else v1 CFS), None if unlimited."""
    try:
        if (root / "cpu.max").is_file():
            quota, _, period = (root / "cpu.max").read_text().partition(" ")
            if quota.strip() == "max":
                return None
            return max(1, math.ceil(int(quota) / int(period)))
        v1 = root / "cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def default_workers(device_type: str) -> int:
    """Parallel single-thread passes on the CPU (one per core, up to 4): as fast as one pass
    over every core on a quiet machine and far steadier on a busy one; one stream on CUDA."""
    return 1 if device_type == "cuda" else min(cpu_count(), 4)


def trim_heap() -> bool:
    """Hand the heap's free pages back to the OS (glibc keeps what large passes freed: RSS
    stayed near 1 GB after floods of long texts). False where the C library has no trim."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)  # ctypes releases the GIL for the call
    return True

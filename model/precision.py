"""The build's training precision: bf16 autocast where the CPU runs bf16 matmuls in hardware.

On CPUs with native bf16 (AVX-512 BF16 or AMX) bf16 autocast is somewhat faster than fp32 (6% per
training step on an AMX Xeon with torch 2.13), but where bf16 is emulated (AVX2-only CPUs, e.g.
many AMD EPYC and older Xeon) its matmuls run 60-70 times slower than fp32 and a build would take
hours. So the build trains in bf16 only when both

1. the CPU says it has native bf16 (`avx512_bf16` or `amx_bf16` in /proc/cpuinfo), and
2. a quick measurement (1024x384 @ 384x1536 matmuls on one thread, best of 5, about 0.1 s; about
   1.5 s where bf16 is emulated) finds bf16 autocast no slower than fp32 in this process. This
   also catches ISA caps such as ONEDNN_MAX_CPU_ISA=AVX2, and torch builds without bf16 kernels.
   One thread, as the question is the kernels, not the threading: two threads on a machine
   where something else keeps a core busy measured both precisions mostly waiting for each
   other (bf16 20.7 ms vs fp32 15.7 ms on an AMX CPU where a quiet probe gives 1.0 vs 4.3 ms).

Otherwise it trains in fp32. The answer is part of the recipe, so of the cache key: a bf16 build
is never reused where the build would train in fp32, and the other way round.

The measurement imports torch (seconds), which the cached no-op path must not do, so its result
is kept in ``<cache>/precision.json`` per CPU fingerprint (model, flags, the ISA-cap variables,
torch version, probe version); delete the file to measure again.
``TEXTCLF_BUILD_PRECISION=float32|bfloat16`` forces a precision (``auto``, the default, decides
as above).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from model.recipe import BF16, FP32, PRECISIONS
from model.wheels import BuildError

ENV = "TEXTCLF_BUILD_PRECISION"
CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# Variables that cap the instruction sets torch, oneDNN and MKL use: they change the answer.
ISA_ENV = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
)
MEMO_FILE = "precision.json"
# Shapes of the model's feed-forward matmul for a batch of 32 tweets of 32 word pieces.
PROBE_SHAPE = (1024, 384, 1536)
# Part of the remembered answers' fingerprint: bump it when the probe changes.
PROBE_VERSION = 2


@dataclass(frozen=True)
class Decision:
    precision: str
    reason: str
    fp32_ms: float | None = None
    bf16_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_cpuinfo(path: Path = CPUINFO) -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags (of its first processor); empty where there is no file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "", frozenset()
    model = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "model name" and not model:
            model = value.strip()
        elif name == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


def measure_matmul(threads: int = 1, reps: int = 5) -> tuple[float, float]:
    """Best-of seconds of one probe matmul in fp32 and under bf16 autocast, on ``threads``."""
    import torch

    rows, inner, outer = PROBE_SHAPE
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(rows, inner, generator=gen)
        b = torch.randn(inner, outer, generator=gen)

        def fp32() -> None:
            torch.matmul(a, b)

        def bf16() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                torch.matmul(a, b)

        def timed(fn: Callable[[], None]) -> float:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        # Small warm-ups create the kernels, so an emulated bf16 costs one slow call, not two.
        small = a[:64]
        torch.matmul(small, b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.matmul(small, b)
        best_fp32 = best_bf16 = float("inf")
        for rep in range(reps):
            best_fp32 = min(best_fp32, timed(fp32))
            best_bf16 = min(best_bf16, timed(bf16))
            # Emulated: no need to look closer (after two tries, as a first call may still
            # include setting up the kernels for this shape).
            if rep >= 1 and best_bf16 > 4 * best_fp32:
                break
        return best_fp32, best_bf16
    finally:
        torch.set_num_threads(previous)


def decide(
    flags: Iterable[str],
    measure: Callable[[], tuple[float, float]] = measure_matmul,
) -> Decision:
    """bf16 where the flags say native bf16 and bf16 measures no slower than fp32; else fp32."""
    native = sorted(NATIVE_BF16_FLAGS & set(flags))
    if not native:
        return Decision(FP32, "no native bf16 (neither avx512_bf16 nor amx_bf16 in the CPU flags)")
    fp32_s, bf16_s = measure()
    fp32_ms, bf16_ms = round(1000 * fp32_s, 2), round(1000 * bf16_s, 2)
    timing = f"probe matmul {bf16_ms} ms in bf16 vs {fp32_ms} ms in fp32"
    if bf16_s <= fp32_s:
        return Decision(BF16, f"native bf16 ({', '.join(native)}); {timing}", fp32_ms, bf16_ms)
    return Decision(
        FP32,
        f"CPU flags say native bf16 ({', '.join(native)}), but {timing} "
        "(bf16 capped or emulated here)",
        fp32_ms,
        bf16_ms,
    )


def fingerprint(model: str, flags: Iterable[str], env: Mapping[str, str]) -> str:
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "missing"
    facts = {
        "cpu": model,
        "flags": sorted(flags),
        "env": {name: env.get(name, "") for name in ISA_ENV},
        "torch": torch_version,
        "probe": PROBE_VERSION,
    }
    canonical = json.dumps(facts, sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:24]


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def choose_precision(
    cache: Path | None,
    env: Mapping[str, str] | None = None,
    cpuinfo: Path = CPUINFO,
    measure: Callable[[], tuple[float, float]] | None = None,
) -> Decision:
    """The precision this machine's build trains in (see the module docstring)."""
    env = os.environ if env is None else env
    forced = env.get(ENV, "auto").strip().lower() or "auto"
    if forced in PRECISIONS:
        return Decision(forced, f"forced by {ENV}={forced}")
    if forced != "auto":
        raise BuildError(f"{ENV}={forced!r}: expected float32, bfloat16 or auto")
    model, flags = read_cpuinfo(cpuinfo)
    if not NATIVE_BF16_FLAGS & flags:
        return decide(flags)  # fp32 without a measurement: torch stays unimported
    key = fingerprint(model, flags, env)
    memo_path = cache / MEMO_FILE if cache is not None else None
    memo = _read_memo(memo_path) if memo_path is not None else {}
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("precision") in PRECISIONS:
        return Decision(
            entry["precision"],
            str(entry.get("reason", "")),
            entry.get("fp32_ms"),
            entry.get("bf16_ms"),
        )
    decision = decide(flags, measure or measure_matmul)
    if memo_path is not None:
        memo[key] = {**decision.to_dict(), "cpu": model, "measured_at": time.time()}
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_name(f".{MEMO_FILE}.{os.getpid()}")
            tmp.write_text(json.dumps(memo, indent=2) + "\n")
            os.replace(tmp, memo_path)
        except OSError:
            pass  # a read-only cache only costs a measurement next time
    return decision

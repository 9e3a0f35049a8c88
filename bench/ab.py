"""`python -m bench ab`: two checkouts' servers, alternated round by round on this machine.

A shared machine drifts by 10-20 % within minutes; alternating A and B (AB, BA, AB, ...)
spreads the drift over both sides, and the medians over the rounds ignore a bad minute.
Each side runs `python -m app` inside its own checkout with this venv's Python.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.corpus import build_corpus, write_bodies
from bench.server import ROOT, ServerProcess, rss_mib
from bench.stats import median, ratio
from bench.sysinfo import git_commit, machine
from bench.wrkrun import run_wrk

KEYS = ("c32_ok_rps", "c1_p50_ms", "ready_s")


def both_spellings(env: Mapping[str, str]) -> dict[str, str]:
    """Each override under its plain name (older checkouts) and as TEXTCLF_* (this one)."""
    out: dict[str, str] = {}
    for key, value in env.items():
        plain = key.upper().removeprefix("TEXTCLF_")
        out[plain] = out[f"TEXTCLF_{plain}"] = value
    return out


def measure_side(
    checkout: Path,
    model: Path,
    env: Mapping[str, str],
    bodies: Path,
    seconds: float,
    warmup_s: float,
    log_path: Path,
) -> dict[str, Any]:
    with log_path.open("wb") as log:
        server = ServerProcess(model, log, both_spellings(env), cwd=checkout)
        try:
            ready_s = server.wait_ready()
            url = f"{server.url}/predict"
            run_wrk(url, bodies, 32, warmup_s)
            c32 = run_wrk(url, bodies, 32, seconds)
            c1 = run_wrk(url, bodies, 1, seconds)
            rss = rss_mib(server.pid)
        finally:
            server.stop(60)
    return {
        "ready_s": round(ready_s, 2),
        "c32_ok_rps": c32["ok_requests_per_s"],
        "c32_p50_ms": c32["latency_ms"]["p50"],
        "c1_p50_ms": c1["latency_ms"]["p50"],
        "non_2xx": sum(n for s in (c32, c1) for k, n in s["statuses"].items() if k[0] != "2"),
        "rss_mib": rss,
    }


def run_ab(
    a: Path,
    b: Path,
    *,
    model: Path,
    rounds: int,
    seconds: float,
    warmup_s: float,
    env: Mapping[str, str],
    log_dir: Path,
    command: str,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    sides = {"A": a.resolve(), "B": b.resolve()}
    log_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        texts = [s.text for s in build_corpus()]
        bodies = write_bodies(Path(tmp) / "bodies.jsonl", texts)
        for index in range(rounds):
            for side in ("A", "B") if index % 2 == 0 else ("B", "A"):
                figures = measure_side(
                    sides[side],
                    model.resolve(),
                    env,
                    bodies,
                    seconds,
                    warmup_s,
                    log_dir / f"ab-{side}.log",
                )
                rows.append({"round": index + 1, "side": side, **figures})
                log(f"round {index + 1}/{rounds} {side}: {figures}")
    medians = {
        side: {k: median([r[k] for r in rows if r["side"] == side]) for k in KEYS} for side in sides
    }
    # The two sides of one round ran a minute apart: their ratio cancels slow drift.
    per_round = {
        k: [
            ratio(*(next(r[k] for r in rows if r["round"] == i and r["side"] == s) for s in "BA"))
            for i in range(1, rounds + 1)
        ]
        for k in KEYS
    }
    return {
        "command": command,
        "machine": machine(ROOT),
        "settings": {
            "a": str(sides["A"]),
            "b": str(sides["B"]),
            "git_a": git_commit(sides["A"]),
            "git_b": git_commit(sides["B"]),
            "model": str(model),
            "env": dict(env),
            "rounds": rounds,
            "seconds": seconds,
            "warmup_s": warmup_s,
        },
        "rounds": rows,
        "medians": medians,
        "b_over_a": {k: _round(ratio(medians["B"][k], medians["A"][k])) for k in KEYS},
        "b_over_a_median_per_round": {k: _round(median(v)) for k, v in per_round.items()},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)

"""`python -m bench run`: start the app (or attach to one), read GET /model, then `repeat`
times: the model-only ceiling, and a closed-loop wrk sweep over the concurrencies."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.corpus import build_corpus, describe, write_bodies
from bench.promstats import (
    QUEUE_DEPTH,
    Snapshot,
    fetch_snapshot,
    gauge,
    pending_texts,
    step_metrics,
)
from bench.server import ROOT, ServerProcess, get_json, rss_mib
from bench.stats import median, ratio
from bench.sysinfo import machine
from bench.wrkrun import run_wrk

Log = Callable[[str], None]
TARGET_CONCURRENCY = 32


@dataclass
class RunConfig:
    model: Path | None
    url: str | None = None
    server_pid: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    concurrency: Sequence[int] = (1, 8, 32, 64)
    step_s: float = 10.0
    warmup_s: float = 2.0
    repeat: int = 3
    ceiling: bool = True
    ceiling_s: float = 5.0
    corpus_size: int = 600
    corpus_seed: int = 20240611
    log_dir: Path = ROOT / "bench" / "results" / "raw"
    command: str = ""


def settle(metrics_url: str, max_s: float = 15.0) -> None:
    """Wait until the texts in flight when wrk stopped are done, so that the next snapshot
    belongs to one step only (or until the counts stop moving: a dropped text never balances)."""
    deadline, previous, quiet = time.monotonic() + max_s, None, 0
    while time.monotonic() < deadline:
        try:
            snap = fetch_snapshot(metrics_url)
        except (OSError, ValueError):
            return
        state = pending_texts(snap)
        if state <= 0 and not gauge(snap, QUEUE_DEPTH):
            return
        quiet = quiet + 1 if state == previous else 0
        if quiet >= 4:
            return
        previous = state
        time.sleep(0.25)


def _snapshot(metrics_url: str) -> Snapshot | None:
    try:
        return fetch_snapshot(metrics_url)
    except (OSError, ValueError):
        return None


def closed_step(
    base_url: str, bodies: Path, concurrency: int, seconds: float, warmup_s: float
) -> dict[str, Any]:
    """One wrk step after a warm-up, with the server's /metrics differenced around it."""
    url, metrics = f"{base_url}/predict", f"{base_url}/metrics"
    if warmup_s > 0:
        run_wrk(url, bodies, concurrency, warmup_s)
    settle(metrics)
    before = _snapshot(metrics)
    step = {"concurrency": concurrency, **run_wrk(url, bodies, concurrency, seconds)}
    settle(metrics)
    after = _snapshot(metrics)
    step["server"] = step_metrics(before, after) if before and after else None
    return step


def step_at(steps: Sequence[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    """The step of the concurrency nearest to `concurrency`."""
    if not steps:
        return None
    return min(steps, key=lambda s: abs(int(s["concurrency"]) - concurrency))


def summarize(repeats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats, per concurrency; the served c=32 rate as a share of the
    ceiling is the median of each repeat's own ratio (both measured minutes apart)."""
    sweep: dict[str, Any] = {}
    for c in sorted({int(s["concurrency"]) for r in repeats for s in r["steps"]}):
        steps = [s for r in repeats for s in r["steps"] if int(s["concurrency"]) == c]
        sweep[str(c)] = {
            "ok_requests_per_s": median([s["ok_requests_per_s"] for s in steps]),
            "p50_ms": median([s["latency_ms"]["p50"] for s in steps]),
            "p99_ms": median([s["latency_ms"]["p99"] for s in steps]),
            "batch_mean": median(
                [(s["server"] or {}).get("batch_size", {}).get("mean") for s in steps]
            ),
            "non_2xx": sum(n for s in steps for k, n in s["statuses"].items() if k[0] != "2"),
            "runs_ok_requests_per_s": [s["ok_requests_per_s"] for s in steps],
        }
    ceilings = [r.get("ceiling") or {} for r in repeats]
    shares = [
        ratio(
            (step_at(r["steps"], TARGET_CONCURRENCY) or {}).get("ok_requests_per_s"),
            c.get("sorted_batch32_sentences_per_s"),
        )
        for r, c in zip(repeats, ceilings, strict=True)
    ]
    return {
        "sweep": sweep,
        "ceiling_sentences_per_s": median(
            [c.get("sorted_batch32_sentences_per_s") for c in ceilings]
        ),
        "ceiling_batch1_p50_ms": median([c.get("batch1_p50_ms") for c in ceilings]),
        "share_of_ceiling_at_32": median(shares),
        "shares_of_ceiling_at_32": [None if s is None else round(s, 4) for s in shares],
        "c1_p50_ms": sweep.get("1", {}).get("p50_ms"),
    }


def _ceiling(cfg: RunConfig, info: dict[str, Any], texts: Sequence[str], log: Log) -> Any:
    """The in-process engine for the ceiling, or None (no local model folder)."""
    path = cfg.model or Path(str(info.get("path", "")))
    if not cfg.ceiling or not (path / "config.json").is_file():
        log("ceiling: skipped" + (f" (no model folder at {path})" if cfg.ceiling else ""))
        return None
    from bench.ceiling import Ceiling

    ceiling = Ceiling(info, path, texts)
    log(f"ceiling: the app's engine in-process, {ceiling.describe}")
    return ceiling


def run(cfg: RunConfig, log: Log = print) -> dict[str, Any]:
    corpus = build_corpus(cfg.corpus_size, cfg.corpus_seed)
    texts = [s.text for s in corpus]
    env = {k: v for k, v in os.environ.items() if k.startswith("TEXTCLF_")} | cfg.env
    result: dict[str, Any] = {
        "command": cfg.command,
        "machine": machine(ROOT),
        "settings": {
            "url": cfg.url,
            "server_env": env,
            "concurrency": list(cfg.concurrency),
            "step_s": cfg.step_s,
            "warmup_s": cfg.warmup_s,
            "repeat": cfg.repeat,
            "ceiling_s": cfg.ceiling_s,
        },
        "corpus": describe(corpus) | {"seed": cfg.corpus_seed},
        "repeats": [],
    }
    started = time.monotonic()
    server: ServerProcess | None = None
    with tempfile.TemporaryDirectory() as tmp:
        bodies = write_bodies(Path(tmp) / "bodies.jsonl", texts)
        if cfg.url:
            base, pid = cfg.url.rstrip("/").removesuffix("/predict"), cfg.server_pid
        else:
            assert cfg.model is not None, "no model folder and no --url"
            cfg.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = cfg.log_dir / "server.log"
            server = ServerProcess(cfg.model.resolve(), log_path.open("wb"), env)
            base, pid = server.url, server.pid
        try:
            if server is not None:
                result["cold_start_s"] = round(server.wait_ready(), 2)
                result["rss_mib_at_ready"] = rss_mib(server.pid)
                log(f"server ready after {result['cold_start_s']} s (log {log_path})")
            info = result["model"] = get_json(f"{base}/model")
            log(f"GET /model: forward {info.get('forward')} ({info.get('forward_reason')})")
            ceiling = _ceiling(cfg, info, texts, log)
            if ceiling is not None:
                result["ceiling_engine"] = ceiling.describe
            for index in range(cfg.repeat):
                rep: dict[str, Any] = {"steps": []}
                if ceiling is not None:
                    rep["ceiling"] = ceiling.measure(cfg.ceiling_s)
                    log(f"[{index + 1}/{cfg.repeat}] ceiling {rep['ceiling']}")
                for c in cfg.concurrency:
                    step = closed_step(base, bodies, c, cfg.step_s, cfg.warmup_s)
                    rep["steps"].append(step)
                    log(
                        f"[{index + 1}/{cfg.repeat}] c={c:<3d} {step['ok_requests_per_s']:8.1f} "
                        f"ok req/s  p50 {step['latency_ms']['p50']} ms  "
                        f"p99 {step['latency_ms']['p99']} ms  statuses {step['statuses']}"
                    )
                result["repeats"].append(rep)
            result["rss_mib_after_load"] = rss_mib(pid) if pid else None
        finally:
            if server is not None:
                result["server_exit_code"] = server.stop(60)
    result["summary"] = summarize(result["repeats"])
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return result

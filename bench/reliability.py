"""`python -m bench reliability <scenario>`: the load scenarios of RELIABILITY.md, each an
open-loop run (bench/openloop.py) judged against fixed criteria.

  step      L1  the sustainable rate R: the highest constant rate with 0 non-2xx and p99 within
                the latency budget (default the request deadline / 2), for short and long texts
  overload  L2/L3  4R: every request answered 200/429/503 (Retry-After, JSON) in time, no 504,
                /health p99 < 100 ms, goodput >= 0.9R, server RSS bounded
  burst     L4  10R for 5 s over a light probe load: the probe's p99 back to idle within 10 s
  soak      L5  0.7R for N minutes: 0 non-2xx, RSS growth < 5 %, threads and open files flat
  all       the four in a row (`make reliability`)

Each starts `python -m app` on the default model (bench/server.py), or drives --url (and
reads --pid's /proc for RSS, threads and open files). Exit code 1 when a check fails."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from bench.openloop import LoadRun, Outcome, Stream, bodies, capacity, run_load, summarize
from bench.server import ROOT, ServerProcess, get_json, rss_mib
from bench.stats import percentile
from bench.sysinfo import describe, machine

FRACTIONS = (0.5, 0.7, 0.8, 0.9, 1.0, 1.1)  # of the closed-loop capacity; 1.1 for its noise
QUICK_FRACTIONS = (0.5, 0.8, 1.0)
ANSWERED = {"200", "429", "503"}
AFTER_S = 6.0  # idle after an overload: past the app's 2 s quiet check, twice
NGINX_CONF = ROOT / "nginx.conf"


@dataclass
class Target:
    url: str
    pid: int | None
    deadline_s: float  # the server's request deadline (GET /model), for the latency budget
    ready_after_s: float | None = None  # start to ready, when started here


@dataclass
class Options:
    texts: str = "short"
    quick: bool = False
    timeout_s: float = 30.0
    budget_ms: float | None = None
    step_s: float | None = None
    seconds: float | None = None
    minutes: float | None = None
    warmup_s: float | None = None


def check(name: str, value: Any, limit: str, ok: bool, *, gate: bool = True) -> dict[str, Any]:
    """`gate=False`: a goal of the guide's checklist that is recorded, not required."""
    return {"name": name, "ok": bool(ok), "value": value, "limit": limit, "gate": gate}


def _cpu_pct(run: LoadRun) -> float:
    return round(run.generator_cpu_s / run.seconds * 100, 1) if run.seconds else 0.0


def _generator(run: LoadRun) -> dict[str, Any]:
    """The load generator's own state: a saturated generator would understate the load."""
    return {
        "generator_cpu_pct_of_one_core": _cpu_pct(run),
        "peak_connections": run.peak_connections,
        "stale_connections_dropped": run.stale_connections,
        "send_lag_p99_ms": run.send_lag_p99_ms,
    }


def _p99_ms(outcomes: Sequence[Outcome]) -> float | None:
    values = [o.latency_s for o in outcomes if o.status == 200 and o.latency_s is not None]
    return round(percentile(values, 99) * 1000, 1) if values else None


@contextlib.contextmanager
def target(
    url: str | None, pid: int | None, model: Path, env: dict[str, str], log_dir: Path
) -> Iterator[Target]:
    """The server under test: the given --url, or a fresh `python -m app` on `model`."""
    server: ServerProcess | None = None
    if url is None:
        log_dir.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(model, (log_dir / "reliability-server.log").open("wb"), env)
        ready_after_s: float | None = server.wait_ready()
        url, pid = server.url, server.pid
    else:
        ready_after_s = None
    try:
        try:
            deadline = float(get_json(f"{url}/model")["batching"]["request_timeout_s"])
        except (OSError, ValueError, KeyError, TypeError):
            deadline = 10.0
        yield Target(url.rstrip("/"), pid, deadline, ready_after_s)
    finally:
        if server is not None:
            server.stop()


def step(t: Target, opts: Options, texts: str) -> dict[str, Any]:
    """L1: R, stepping up from half the closed-loop capacity until a step fails."""
    step_s = opts.step_s or (3.0 if opts.quick else 30.0)
    budget_ms = opts.budget_ms or t.deadline_s * 1000 / 2
    body = bodies(texts)
    cap = capacity(t.url, body, seconds=3.0 if opts.quick else 10.0)
    steps: list[dict[str, Any]] = []
    rate: float | None = None
    fractions = list(QUICK_FRACTIONS if opts.quick else FRACTIONS)
    while fractions:
        fraction = fractions.pop(0)
        run = run_load(
            t.url,
            [Stream("main", [(round(cap * fraction, 1), step_s)], body)],
            timeout_s=opts.timeout_s,
            health_every_s=None,
        )
        summary = summarize(run.outcomes, step_s)
        p99 = summary["ok_p99_ms"]
        ok = summary["non_2xx"] == 0 and summary["lost"] == 0 and p99 is not None
        ok = ok and p99 <= budget_ms
        steps.append({"rate": round(cap * fraction, 1), "ok": ok, **summary, **_generator(run)})
        if ok:
            rate = round(cap * fraction, 1)
        elif rate is None and fraction == 0.5:
            fractions = [0.25]  # even half the capacity fails: one lower try
        else:
            break
        time.sleep(1.0 if opts.quick else 3.0)  # the queue of the last step drains
    passing = [s for s in steps if s["ok"]]
    base = (
        min(passing, key=lambda s: abs(s["rate"] - 0.5 * (rate or 0)))["ok_p99_ms"]
        if passing
        else None
    )
    return {
        "scenario": "step",
        "texts": texts,
        "capacity_closed_loop_rps": round(cap, 1),
        "budget_ms": budget_ms,
        "step_s": step_s,
        "R": rate,
        "B_p99_ms_near_half_R": base,
        "steps": steps,
        "checks": [check(f"sustainable rate R found ({texts} texts)", rate, "> 0", bool(rate))],
    }


def overload(t: Target, opts: Options, rate: float, direct: bool) -> dict[str, Any]:
    """L2 (through Nginx) / L3 (straight to the app): 4R after a warm-up at 0.5R."""
    seconds = opts.seconds or (10.0 if opts.quick else 60.0)
    body = bodies(opts.texts)
    warm_s = 3.0 if opts.quick else 5.0
    warm = run_load(
        t.url, [Stream("warm", [(0.5 * rate, warm_s)], body)], pid=t.pid, health_every_s=None
    )
    # Full batches need more memory than the light warm-up: the bound is the peak at R.
    full = run_load(t.url, [Stream("full", [(rate, warm_s)], body)], pid=t.pid, health_every_s=None)
    run = run_load(
        t.url, [Stream("main", [(4 * rate, seconds)], body)], timeout_s=opts.timeout_s, pid=t.pid
    )
    time.sleep(AFTER_S)  # idle: the app hands back what the flood's passes freed
    after_rss = rss_mib(t.pid) if t.pid else None
    s, h = summarize(run.outcomes, seconds), summarize(run.health, seconds)
    unanswered = s["sent"] - sum(n for k, n in s["statuses"].items() if k in ANSWERED)
    checks = [
        check(
            "every request answered 200/429/503 within the client timeout",
            unanswered,
            "0",
            unanswered == 0,
        ),
        check("lost (reset, EOF, client timeout, refused)", s["failures"], "none", s["lost"] == 0),
        check("504 answers", s["statuses"].get("504", 0), "0", "504" not in s["statuses"]),
        check(
            "429/503 without Retry-After 1-60",
            s["retry_after_missing"],
            "0",
            s["retry_after_missing"] == 0,
        ),
        check(
            "error answers without the JSON envelope",
            s["error_not_json"],
            "0",
            s["error_not_json"] == 0,
        ),
        check(
            "/health p99 ms (all 200)",
            h["ok_p99_ms"],
            "< 100",
            h["non_2xx"] == 0 and h["lost"] == 0 and (h["ok_p99_ms"] or 1e9) < 100,
        ),
        check(
            "goodput 200/s",
            s["goodput_rps"],
            f">= 0.9R = {0.9 * rate:.1f}",
            s["goodput_rps"] >= 0.9 * rate,
        ),
    ]
    idle_rss = median(x["rss_mib"] for x in warm.samples) if warm.samples else None
    full_rss = max((x["rss_mib"] for x in full.samples), default=None)
    peak_rss = max((x["rss_mib"] for x in run.samples), default=None)
    if full_rss is not None and peak_rss is not None:
        bounded = peak_rss <= full_rss * 1.1
        limit = f"<= peak at R {full_rss} + 10 %"
        checks.append(check("peak RSS MiB", peak_rss, limit, bounded, gate=False))
    if idle_rss is not None and after_rss is not None:
        back = after_rss <= idle_rss * 1.1
        checks.append(
            check(f"RSS MiB {AFTER_S:g} s after", after_rss, f"<= idle {idle_rss} + 10 %", back)
        )
    if direct and s["reject_p99_ms"] is not None:
        fast = s["reject_p99_ms"] <= 50
        checks.append(
            check("429/503 p99 ms (fast reject, L3)", s["reject_p99_ms"], "<= 50", fast, gate=False)
        )
    return {
        "scenario": "overload",
        "texts": opts.texts,
        "R": rate,
        "rate": 4 * rate,
        "seconds": seconds,
        "B_p99_ms_at_half_R": summarize(warm.outcomes, warm_s)["ok_p99_ms"],
        "requests": s,
        "health": h,
        "idle_rss_mib": idle_rss,
        "full_load_rss_mib": full_rss,
        "peak_rss_mib": peak_rss,
        "rss_after_mib": after_rss,
        **_generator(run),
        "checks": checks,
    }


def recovery_s(
    probe: Sequence[Outcome], start_s: float, end_s: float, limit_ms: float
) -> float | None:
    """Seconds after `start_s` from which every 2-s window of the probe is all 200 within
    `limit_ms` at p99; None when the run ends before that."""
    window, windows = 2.0, []
    at = start_s
    while at + window <= end_s + 1e-9:
        inside = [o for o in probe if at <= o.at_s < at + window]
        p99 = _p99_ms(inside)
        windows.append(
            (
                at,
                bool(inside)
                and all(o.status == 200 for o in inside)
                and p99 is not None
                and p99 <= limit_ms,
            )
        )
        at += window
    recovered: float | None = None
    for at, ok in reversed(windows):
        if not ok:
            break
        recovered = at - start_s
    return recovered


def burst(t: Target, opts: Options, rate: float) -> dict[str, Any]:
    """L4: a light probe load; 10R for 5 s on top of it; then the probe alone again."""
    idle_s, burst_s, after_s = (6.0, 5.0, 14.0) if opts.quick else (10.0, 5.0, 20.0)
    probe_rate = max(0.2 * rate, 5.0)
    streams = [
        Stream("probe", [(probe_rate, idle_s + burst_s + after_s)], bodies("short")),
        Stream("burst", [(0.0, idle_s), (10 * rate, burst_s)], bodies(opts.texts)),
    ]
    run = run_load(t.url, streams, timeout_s=opts.timeout_s, pid=t.pid)
    probe, surge = run.of("probe"), run.of("burst")
    base = _p99_ms([o for o in probe if o.at_s < idle_s]) or 0.0
    limit = max(1.2 * base, base + 25.0)  # 25 ms: timer noise on a shared machine
    back = recovery_s(probe, idle_s + burst_s, run.seconds, limit)
    b, p = summarize(surge, burst_s), summarize(probe, run.seconds)
    unanswered = b["sent"] - sum(n for k, n in b["statuses"].items() if k in ANSWERED)
    return {
        "scenario": "burst",
        "R": rate,
        "burst_rate": 10 * rate,
        "probe_rate": probe_rate,
        "idle_probe_p99_ms": base,
        "recovered_limit_ms": round(limit, 1),
        "recovered_after_s": back,
        "burst": b,
        "probe": p,
        **_generator(run),
        "checks": [
            check(
                "burst requests answered 200/429/503",
                unanswered,
                "0",
                unanswered == 0 and b["lost"] == 0,
            ),
            check(
                "burst 429/503 without Retry-After",
                b["retry_after_missing"],
                "0",
                b["retry_after_missing"] == 0,
            ),
            check("probe lost", p["lost"], "0", p["lost"] == 0),
            check(
                "probe p99 back to idle after the burst (s)",
                back,
                "<= 10",
                back is not None and back <= 10,
            ),
        ],
    }


def _window_median(
    samples: Sequence[dict[str, float]], key: str, lo: float, hi: float
) -> float | None:
    values = [x[key] for x in samples if lo <= x["t_s"] < hi]
    return float(median(values)) if values else None


def soak(t: Target, opts: Options, rate: float) -> dict[str, Any]:
    """L5: a constant rate (0.7R by default); RSS, threads and open files after the warm-up."""
    if t.pid is None:
        raise SystemExit("soak needs the server's PID (--pid with --url)")
    seconds = (opts.minutes or (1.0 if opts.quick else 10.0)) * 60
    warmup = opts.warmup_s if opts.warmup_s is not None else min(120.0, seconds / 4)
    window = min(60.0, (seconds - warmup) / 4)
    run = run_load(
        t.url,
        [Stream("main", [(rate, seconds)], bodies(opts.texts))],
        pid=t.pid,
        health_every_s=1.0,
    )
    s = summarize(run.outcomes, seconds)
    first, last = (warmup, warmup + window), (seconds - window, seconds + 1)
    figures: dict[str, Any] = {}
    for key in ("rss_mib", "threads", "fds"):
        figures[key] = [
            _window_median(run.samples, key, *first),
            _window_median(run.samples, key, *last),
        ]
    rss0, rss1 = figures["rss_mib"]
    growth = round((rss1 - rss0) / rss0 * 100, 2) if rss0 and rss1 is not None else None
    p99 = [_p99_ms([o for o in run.outcomes if lo <= o.at_s < hi]) for lo, hi in (first, last)]
    # Only a rise counts: a slower end is the symptom; 10 ms absorbs timer noise.
    drift_ok = None not in p99 and p99[1] - p99[0] <= max(0.2 * p99[0], 10.0)  # type: ignore[operator]

    def flat(key: str) -> bool:
        a, b = figures[key]
        return a is not None and b is not None and abs(b - a) <= 10

    return {
        "scenario": "soak",
        "rate": rate,
        "seconds": seconds,
        "warmup_s": warmup,
        "window_s": window,
        "first_last_window_medians": figures,
        "p99_ms_first_last": p99,
        "requests": s,
        "samples": run.samples,
        **_generator(run),
        "checks": [
            check("non-2xx and lost", s["non_2xx"] + s["lost"], "0", s["non_2xx"] + s["lost"] == 0),
            check("RSS growth after warm-up %", growth, "< 5", growth is not None and growth < 5),
            check("threads first/last window", figures["threads"], "within 10", flat("threads")),
            check("open files first/last window", figures["fds"], "within 10", flat("fds")),
            check("p99 rise first/last window ms", p99, "<= max(20 %, 10 ms)", drift_ok),
        ],
    }


def nginx_conf_for_load(text: str, rate_per_s: int, connections: int) -> str:
    """nginx.conf with only the per-client limits raised, so that a one-address load
    generator overloads the app, not Nginx's per-client rate and connection caps."""
    text, rates = re.subn(r"(zone=per_client:\S+ rate=)\d+r/s", rf"\g<1>{rate_per_s}r/s", text)
    text, conns = re.subn(r"(limit_conn conn_per_client )\d+;", rf"\g<1>{connections};", text)
    if rates != 1 or conns == 0:  # the connection cap is set where the probes' location is too
        raise ValueError("nginx.conf: per_client rate (once) or conn_per_client limit not found")
    return text


def all_checks_pass(results: Sequence[dict[str, Any]]) -> bool:
    return all(c["ok"] for r in results for c in r["checks"] if c.get("gate", True))


def print_summary(results: Sequence[dict[str, Any]], where: str) -> None:
    print(f"machine: {where}")
    for result in results:
        head = {k: result[k] for k in ("texts", "R", "rate", "B_p99_ms_near_half_R") if k in result}
        print(
            f"[{result['scenario']}] {json.dumps(head)} generator CPU "
            f"{result.get('generator_cpu_pct_of_one_core', '-')} % of a core"
        )
        for c in result["checks"]:
            gate = c.get("gate", True)
            verdict = ("PASS" if c["ok"] else "FAIL") if gate else ("goal" if c["ok"] else "miss")
            print(f"  {verdict}  {c['name']}: {json.dumps(c['value'])} ({c['limit']})")


def _rate(
    args: argparse.Namespace, t: Target, opts: Options, results: list[dict[str, Any]]
) -> float:
    """R: --rate, or R of a step result (this run's, or --from's), or measured now."""
    if args.rate:
        return float(args.rate)
    earlier = results
    if args.from_result:
        earlier = json.loads(Path(args.from_result).read_text(encoding="utf-8"))["results"]
    for result in earlier:
        if result["scenario"] == "step" and result["texts"] == opts.texts and result["R"]:
            return float(result["R"])
    if args.from_result:
        raise SystemExit(f"{args.from_result}: no step result with R for {opts.texts} texts")
    result = step(t, opts, opts.texts)
    results.append(result)
    if not result["R"]:
        raise SystemExit("no sustainable rate found (see the step result)")
    return float(result["R"])


def add_parser(sub: Any, model: Path) -> None:
    r = sub.add_parser("reliability", help="open-loop load scenarios (RELIABILITY.md)")
    r.add_argument("scenario", choices=["step", "overload", "burst", "soak", "all", "nginx-conf"])
    r.add_argument("--url", help="drive a running server (or Nginx) instead of starting one")
    r.add_argument("--pid", type=int, help="PID of the --url server: RSS, threads, open files")
    r.add_argument("--direct", action="store_true", help="--url is the app itself (L3 checks)")
    r.add_argument("--model", type=Path, default=model, help=f"model folder (default {model})")
    r.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--texts", choices=["short", "long"], default="short")
    r.add_argument("--rate", type=float, help="R in requests/s (default: measured by `step`)")
    r.add_argument("--from", dest="from_result", type=Path, help="take R from a step result")
    r.add_argument("--budget-ms", type=float, help="step: p99 budget (default deadline / 2)")
    r.add_argument("--step-s", type=float, help="step: seconds per step (30; quick 3)")
    r.add_argument("--seconds", type=float, help="overload: seconds at 4R (60; quick 10)")
    r.add_argument("--soak-rate", type=float, help="soak: requests/s (default 0.7R)")
    r.add_argument("--minutes", type=float, help="soak: duration (10; quick 1)")
    r.add_argument("--warmup-s", type=float, help="soak: excluded start (min(120, 1/4))")
    r.add_argument("--timeout-s", type=float, default=30.0, help="client timeout per request")
    r.add_argument("--quick", action="store_true", help="short runs to check the tool itself")
    r.add_argument("--nginx-rate", type=int, default=100000, help="nginx-conf: per-client r/s")
    r.add_argument("--nginx-connections", type=int, default=8192, help="nginx-conf: per client")
    r.add_argument("--out", type=Path, help="result folder (bench/results/raw); nginx-conf: file")
    r.add_argument("--name", help="file stem (default reliability-<scenario>)")


def cmd_reliability(args: argparse.Namespace, env: dict[str, str], command: str) -> int:
    out: Path = args.out or ROOT / "bench" / "results" / "raw"
    if args.scenario == "nginx-conf":
        if args.out is None:
            raise SystemExit("nginx-conf: --out FILE")
        text = nginx_conf_for_load(
            NGINX_CONF.read_text(encoding="utf-8"), args.nginx_rate, args.nginx_connections
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(out)
        return 0
    opts = Options(
        texts=args.texts,
        quick=args.quick,
        timeout_s=args.timeout_s,
        budget_ms=args.budget_ms,
        step_s=args.step_s,
        seconds=args.seconds,
        minutes=args.minutes,
        warmup_s=args.warmup_s,
    )
    direct = args.url is None or args.direct
    results: list[dict[str, Any]] = []
    with target(args.url, args.pid, args.model, env, out) as t:
        idle_rss = rss_mib(t.pid) if t.pid else None

        def record(result: dict[str, Any], started: float) -> None:
            results.append(result | {"wall_s": round(time.monotonic() - started, 1)})

        if args.scenario in ("step", "all"):
            for texts in ("short", "long") if args.scenario == "all" else (opts.texts,):
                record(step(t, opts, texts), time.monotonic())
        rate = 0.0  # R: not needed by `step`, nor by `soak` with its own --soak-rate
        if args.scenario != "step" and not (args.scenario == "soak" and args.soak_rate):
            rate = _rate(args, t, opts, results)
        if args.scenario in ("overload", "all"):
            record(overload(t, opts, rate, direct), time.monotonic())
        if args.scenario in ("burst", "all"):
            record(burst(t, opts, rate), time.monotonic())
        if args.scenario in ("soak", "all"):
            record(soak(t, opts, args.soak_rate or 0.7 * rate), time.monotonic())
    where = machine(ROOT)
    data = {
        "command": command,
        "machine": where,
        "url": args.url or "started here",
        "server_ready_after_s": t.ready_after_s,
        "idle_rss_mib": idle_rss,
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name or 'reliability-' + args.scenario}.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print_summary(results, describe(where))
    print(path)
    return 0 if all_checks_pass(results) else 1

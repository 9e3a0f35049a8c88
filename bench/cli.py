"""Command line: `python -m bench {run,ab,corpus,reliability}` (BENCHMARKS.md, RELIABILITY.md)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.corpus import DEFAULT_SEED, DEFAULT_SIZE, build_corpus, describe, write_bodies
from bench.reliability import add_parser as add_reliability
from bench.reliability import cmd_reliability
from bench.server import ROOT

RESULTS = ROOT / "bench" / "results"


def _default_model() -> Path:
    return Path(os.environ.get("MODEL_PATH", "model/default"))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--env: expected KEY=VALUE, got {pair!r}")
        out[key.strip().upper()] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    model = _default_model()
    env_help = "server setting (repeatable), e.g. TEXTCLF_FORWARD=padded"

    run = sub.add_parser("run", help="ceiling + closed-loop sweep; JSON and Markdown")
    run.add_argument("--model", type=Path, help=f"model folder (default {model})")
    run.add_argument("--url", help="attach to a running server instead of starting one")
    run.add_argument("--server-pid", type=int, help="PID of the --url server (RSS)")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help=env_help)
    run.add_argument("--concurrency", type=_ints, help="default 1,8,32,64 (quick: 1,32)")
    run.add_argument("--step-s", type=float, help="seconds per step (default 10, quick 2)")
    run.add_argument("--warmup-s", type=float, help="warm-up per step (default 2, quick 1)")
    run.add_argument("--repeat", type=int, help="sweeps, medians reported (default 3, quick 1)")
    run.add_argument("--ceiling-s", type=float, help="seconds per ceiling measurement")
    run.add_argument("--no-ceiling", action="store_true")
    run.add_argument("--quick", action="store_true", help="smoke run, not for claims")
    run.add_argument("--out", type=Path, help="default bench/results (quick: results/raw)")
    run.add_argument("--name", help="file stem (default: the CPU class, e.g. cpu-avx512-amx)")

    ab = sub.add_parser("ab", help="two checkouts' servers, alternated; medians and B/A")
    ab.add_argument("--a", type=Path, required=True, help="checkout A (e.g. a git worktree)")
    ab.add_argument("--b", type=Path, default=ROOT, help="checkout B (default this one)")
    ab.add_argument("--model", type=Path, default=Path(model), help="model folder")
    ab.add_argument("--rounds", type=int, default=6)
    ab.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    ab.add_argument("--warmup-s", type=float, default=2.0)
    ab.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help=env_help)
    ab.add_argument("--out", type=Path, default=RESULTS / "raw")
    ab.add_argument("--name", default="ab")

    corpus = sub.add_parser("corpus", help="print the corpus summary, or write it out")
    corpus.add_argument("--size", type=int, default=DEFAULT_SIZE)
    corpus.add_argument("--seed", type=int, default=DEFAULT_SEED)
    corpus.add_argument("--bodies", type=Path, help="write one /predict JSON body per line")
    add_reliability(sub, model)
    return p


def cmd_run(args: argparse.Namespace, command: str) -> int:
    from bench.report import run_markdown, write
    from bench.runner import RunConfig, run

    quick = bool(args.quick)
    out = args.out or (RESULTS / "raw" if quick else RESULTS)
    cfg = RunConfig(
        # With --url the ceiling loads --model, else the folder that GET /model names.
        model=args.model or (None if args.url else _default_model()),
        url=args.url,
        server_pid=args.server_pid,
        env=env_pairs(args.env),
        concurrency=args.concurrency or ([1, 32] if quick else [1, 8, 32, 64]),
        step_s=args.step_s or (2.0 if quick else 10.0),
        warmup_s=args.warmup_s if args.warmup_s is not None else (1.0 if quick else 2.0),
        repeat=args.repeat or (1 if quick else 3),
        ceiling=not args.no_ceiling,
        ceiling_s=args.ceiling_s or (1.0 if quick else 5.0),
        log_dir=out / "raw" if out.name != "raw" else out,
        command=command,
    )
    if cfg.model is not None and not (cfg.model / "config.json").is_file():
        print(f"no model folder at {cfg.model}: make model, or --model", file=sys.stderr)
        return 2
    result = run(cfg)
    name = args.name or ("quick" if quick else result["machine"]["cpu_class"])
    for path in write(result, run_markdown(result), out, name):
        print(path)
    return 0


def cmd_ab(args: argparse.Namespace, command: str) -> int:
    from bench.ab import run_ab
    from bench.report import ab_markdown, write

    result = run_ab(
        args.a,
        args.b,
        model=args.model,
        rounds=args.rounds,
        seconds=args.seconds,
        warmup_s=args.warmup_s,
        env=env_pairs(args.env),
        log_dir=args.out,
        command=command,
    )
    text = ab_markdown(result)
    print(text)
    for path in write(result, text, args.out, args.name):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "corpus":
        corpus = build_corpus(args.size, args.seed)
        if args.bodies:
            write_bodies(args.bodies, [s.text for s in corpus])
        print(json.dumps(describe(corpus), indent=2))
        return 0
    # SIGTERM -> SystemExit, so that the `finally` blocks stop the servers started here.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    command = "python -m bench " + " ".join(shlex.quote(a) for a in argv)
    started = time.monotonic()
    if args.command == "reliability":
        code = cmd_reliability(args, env_pairs(args.env), command)
    else:
        code = cmd_run(args, command) if args.command == "run" else cmd_ab(args, command)
    print(f"done in {time.monotonic() - started:.0f} s")
    return code

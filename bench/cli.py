"""Command line: `python -m bench {run,model,corpus}`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.corpus import DEFAULT_SEED, DEFAULT_SIZE, build_corpus, describe, request_bodies

DEFAULT_MODEL = "model/default"


def _model_path(arg: str | None) -> Path | None:
    value = arg or os.environ.get("MODEL_PATH") or DEFAULT_MODEL
    path = Path(value)
    return path if path.exists() else None


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {pair!r}")
        out[key.strip().upper()] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the text-classification service: HTTP sweeps against the "
        "app (closed and open loop), the model-only ceiling, model variants. See BENCHMARKS.md.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="full benchmark: ceiling, cold start, baseline + batched sweeps, open loop",
        description="Starts the app itself unless --url is given. Writes JSON, Markdown and "
        "a PNG under --out and prints PASS/FAIL per target.",
    )
    run.add_argument("--model", help="model folder (default $MODEL_PATH, else model/default)")
    run.add_argument("--url", help="benchmark an already running server instead of starting one")
    run.add_argument("--server-pid", type=int, help="PID of the --url server (CPU/RSS figures)")
    run.add_argument(
        "--nginx-url",
        help="also sweep through Nginx at this base URL; 'local' starts a throwaway nginx "
        "in front of the server the tool started",
    )
    run.add_argument("--nginx-metrics-url", help="/metrics of the app behind --nginx-url")
    run.add_argument("--concurrency", type=_ints, default=[1, 8, 32, 64], help="e.g. 1,8,32,64")
    run.add_argument("--step-s", type=float, help="seconds per step (default 10, quick 3)")
    run.add_argument("--warmup-s", type=float, help="warm-up per step (default 2, quick 1)")
    run.add_argument("--ceiling-s", type=float, help="seconds per model-only mode (default 5)")
    run.add_argument(
        "--open-rates",
        default="0.5x,0.8x,1.0x,1.2x",
        help="open-loop rates: req/s, or Nx = N times the batched c=32 throughput; '' = none",
    )
    run.add_argument("--no-baseline", action="store_true", help="skip the MAX_BATCH_SIZE=1 run")
    run.add_argument("--no-ceiling", action="store_true", help="skip the model-only ceiling")
    run.add_argument(
        "--paired-rounds",
        type=int,
        help="model-only / c=32 pairs for the ratio targets (default 5, quick 1; 0: none)",
    )
    run.add_argument("--torch-threads", type=int, help="TORCH_THREADS for server and ceiling")
    run.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra env for the batched server (repeatable), e.g. MAX_BATCH_WAIT_MS=5",
    )
    run.add_argument("--items-per-request", type=int, default=1, help="texts per request body")
    run.add_argument("--wrk-threads", type=int, default=1)
    run.add_argument("--corpus-size", type=int, default=DEFAULT_SIZE)
    run.add_argument("--corpus-seed", type=int, default=DEFAULT_SEED)
    run.add_argument("--quick", action="store_true", help="smoke test: short steps, c=1,32")
    run.add_argument(
        "--out", help="output folder (default bench/results; quick: bench/results/raw)"
    )
    run.add_argument("--name", help="file stem (default: UTC time + full/quick)")
    run.add_argument("--fail-on-target", action="store_true", help="exit 1 when a target FAILs")

    model = sub.add_parser(
        "model",
        help="model-only sentences/s per variant (no HTTP)",
        description="Variants are '+'-joined tokens: fp32, int8 (dynamic quantization of "
        "Linear layers), sdpa|eager (attention), padN (pad to a multiple of N), tN (torch "
        "threads), bf16, aten (torch's own Linear kernels, not the app's oneDNN ones), wN (N "
        "parallel streams), cuda (on the GPU), fp16 (CUDA only). Examples: "
        "--variants fp32,aten,int8,eager,pad8,t1,int8+pad8 or cuda+fp16+pad8,cuda+bf16+pad8",
    )
    model.add_argument("--model", help="model folder (default $MODEL_PATH, else model/default)")
    model.add_argument("--variants", default="fp32", help="comma-separated variant specs")
    model.add_argument("--modes", default="b1,b32,b32s", help="b1, b32 (arrival), b32s (sorted)")
    model.add_argument("--batch-size", type=int, default=32)
    model.add_argument("--threads", type=int, help="default: TORCH_THREADS or one per core")
    model.add_argument(
        "--lone-threads",
        type=int,
        help="threads of the batch-1 mode (the bench passes the app's ALONE_PASS_THREADS); "
        "default all cores",
    )
    model.add_argument("--seconds", type=float, default=5.0, help="timed seconds per mode")
    model.add_argument("--warmup-s", type=float, default=1.0)
    model.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds over all variants (interleaved); the median round is reported",
    )
    model.add_argument("--max-length", type=int)
    model.add_argument("--corpus-size", type=int, default=DEFAULT_SIZE)
    model.add_argument("--corpus-seed", type=int, default=DEFAULT_SEED)
    model.add_argument("--json", help="also write the results to this JSON file")

    corpus = sub.add_parser("corpus", help="print the corpus summary, or write it out")
    corpus.add_argument("--size", type=int, default=DEFAULT_SIZE)
    corpus.add_argument("--seed", type=int, default=DEFAULT_SEED)
    corpus.add_argument("--text", help="write one sentence per line to this file")
    corpus.add_argument("--bodies", help="write one /predict JSON body per line to this file")
    corpus.add_argument("--items-per-request", type=int, default=1)
    return p


def cmd_model(args: argparse.Namespace) -> int:
    from bench.model_only import (
        MODES,
        VariantUnavailable,
        measure_variants,
        parse_variant,
        versions,
    )
    from bench.sysinfo import load_average

    path = _model_path(args.model)
    if path is None:
        print("no model folder: pass --model or set MODEL_PATH", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        print(f"unknown modes {bad}; choose from {MODES}", file=sys.stderr)
        return 2
    try:
        variants = [parse_variant(v) for v in args.variants.split(",") if v.strip()]
    except ValueError as exc:
        print(f"--variants: {exc}", file=sys.stderr)
        return 2
    corpus = build_corpus(args.corpus_size, args.corpus_seed)
    texts = [s.text for s in corpus]
    print(
        f"model {path}; {len(texts)} sentences; {args.seconds:g} s per mode; "
        f"{args.repeat} round(s); load average {load_average()}"
    )
    try:
        results = measure_variants(
            path,
            variants,
            texts,
            modes=modes,
            batch_size=args.batch_size,
            seconds=args.seconds,
            warmup_s=args.warmup_s,
            threads=args.threads,
            lone_threads=args.lone_threads,
            max_length=args.max_length,
            repeat=args.repeat,
            progress=print if args.repeat > 1 else None,
        )
    except VariantUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 2
    head = f"{'variant':24s} {'threads':>7s} {'streams':>7s} {'attn':>6s} "
    print(head + " ".join(f"{m:>14s}" for m in modes))
    for r in results:
        cells = []
        for m in modes:
            res = r["modes"][m]
            cell = f"{res['sentences_per_s']:.1f}/s"
            if m == "b1":
                cell += f" {res['latency']['p50_ms']:.0f}ms"
            else:
                cell += f" pe{res['padding_efficiency']:.2f}"
            cells.append(f"{cell:>14s}")
        print(
            f"{r['variant']:24s} {r['threads']:>7d} {r['streams']:>7d} "
            f"{r['attn_implementation']:>6s} " + " ".join(cells)
        )
    doc = {
        "model_path": str(path),
        "versions": versions(),
        "corpus": describe(corpus) | {"seed": args.corpus_seed},
        "seconds_per_mode": args.seconds,
        "repeat": args.repeat,
        "load_average": load_average(),
        "variants": results,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    corpus = build_corpus(args.size, args.seed)
    if args.text:
        Path(args.text).write_text("".join(s.text + "\n" for s in corpus), encoding="utf-8")
    if args.bodies:
        bodies = request_bodies([s.text for s in corpus], args.items_per_request)
        Path(args.bodies).write_text("".join(b + "\n" for b in bodies), encoding="utf-8")
    print(json.dumps(describe(corpus), indent=2))
    return 0


def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from bench.report import print_targets, write_outputs
    from bench.runner import Bench, RunConfig

    quick = bool(args.quick)
    stem = args.name or time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + (
        "-quick" if quick else "-full"
    )
    out_dir = Path(args.out or ("bench/results/raw" if quick else "bench/results"))
    concurrencies = args.concurrency
    if quick and concurrencies == [1, 8, 32, 64]:
        concurrencies = [1, 32]
    cfg = RunConfig(
        model_path=_model_path(args.model),
        url=args.url,
        nginx_url=args.nginx_url,
        nginx_metrics_url=args.nginx_metrics_url,
        server_pid=args.server_pid,
        concurrencies=concurrencies,
        step_s=args.step_s or (3.0 if quick else 10.0),
        warmup_s=args.warmup_s if args.warmup_s is not None else (1.0 if quick else 2.0),
        ceiling_s=args.ceiling_s or (1.5 if quick else 5.0),
        ceiling_warmup_s=0.5 if quick else 1.0,
        open_rates=[r for r in args.open_rates.split(",") if r.strip()],
        baseline=not args.no_baseline,
        ceiling=not args.no_ceiling,
        paired_rounds=(
            args.paired_rounds if args.paired_rounds is not None else (1 if quick else 5)
        ),
        torch_threads=args.torch_threads,
        server_env=_env_pairs(args.server_env),
        items_per_request=args.items_per_request,
        wrk_threads=args.wrk_threads,
        corpus_size=args.corpus_size,
        corpus_seed=args.corpus_seed,
        quick=quick,
        out_dir=out_dir,
        stem=stem,
        command="python -m bench " + " ".join(shlex.quote(a) for a in argv),
        cwd=Path.cwd(),
    )
    if cfg.model_path is None and cfg.url is None:
        print("no model folder (MODEL_PATH / --model) and no --url", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    # SIGTERM -> SystemExit, so the `finally` blocks stop the servers and nginx we started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = Bench(cfg).run()
    paths = write_outputs(result, out_dir, stem)
    print()
    print(print_targets(result["targets"]))
    print()
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if result["errors"]:
        print(f"{len(result['errors'])} problem(s) during the run; see the report", file=sys.stderr)
        return 1
    if args.fail_on_target and any(t["status"] == "FAIL" for t in result["targets"]):
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "model":
        return cmd_model(args)
    if args.command == "corpus":
        return cmd_corpus(args)
    return cmd_run(args, argv)

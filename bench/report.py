"""JSON, Markdown and PNG outputs of a run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.targets import TARGET_CONCURRENCY, TargetResult, ceiling_mode, evaluate


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _statuses(step: dict[str, Any]) -> str:
    parts = [f"{k}: {v}" for k, v in step.get("statuses", {}).items() if not k.startswith("2")]
    parts += [f"{k}: {v}" for k, v in step.get("socket_errors", {}).items()]
    return ", ".join(parts) if parts else "none"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _rate_and_latency_cells(st: dict[str, Any]) -> list[str]:
    lat = st["latency_ms"]
    return [
        _fmt(st["ok_requests_per_s"]),
        _fmt(st["sentences_per_s"]),
        _pct(st.get("fraction_of_ceiling")),
        _fmt(lat["p50"]),
        _fmt(lat["p90"]),
        _fmt(lat["p99"]),
    ]


def _batch_cells(step: dict[str, Any]) -> list[str]:
    sm = step.get("server_metrics")
    if not sm or sm["batch_size"]["count"] == 0:
        return ["–", "–", "–"]
    bs, pe = sm["batch_size"], sm["padding_efficiency"]
    return [
        f"{_fmt(bs['mean'])} / {_fmt(bs['p50'])} / {_fmt(bs['p90'])}",
        f"{_fmt(pe['mean'], 2)} / {_fmt(sm['padding_efficiency_token_weighted'], 2)}",
        _fmt(sm["queue_wait_ms"]["mean"]),
    ]


def _server_cells(step: dict[str, Any]) -> list[str]:
    srv = step.get("server") or {}
    gen = step.get("generator") or {}
    proxy = step.get("proxy") or {}
    cpu = _fmt(srv.get("cpu_cores"), 2)
    if proxy.get("cpu_cores") is not None:
        cpu += f" + nginx {_fmt(proxy['cpu_cores'], 2)}"
    return [
        cpu,
        _fmt(srv.get("rss_mib_peak"), 0),
        _fmt(gen.get("cpu_cores"), 2),
    ]


def _ceiling_rate(result: dict[str, Any]) -> float | None:
    mode = ceiling_mode(result, "b32s")
    return float(mode["sentences_per_s"]) if mode else None


def add_fractions(result: dict[str, Any]) -> None:
    """Every HTTP step as a fraction of the length-sorted model-only ceiling."""
    ceiling = _ceiling_rate(result)
    for series in result.get("series", {}).values():
        for step in series.get("steps", []):
            step["fraction_of_ceiling"] = (
                round(step["sentences_per_s"] / ceiling, 4) if ceiling else None
            )


def markdown(result: dict[str, Any], targets: Sequence[TargetResult]) -> str:
    m = result["machine"]
    s = result["settings"]
    lines: list[str] = []
    add = lines.append
    add(f"# Benchmark {result.get('stem', '')}")
    add("")
    add(f"Command: `{result['command']}`")
    add("")
    add(
        f"- Machine: {m.get('cpu_model')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB; "
        f"load average at start {m.get('load_average_start')}, at end {m.get('load_average_end')}"
    )
    add(
        f"- Date (UTC): {m.get('date_utc')}; git {m.get('git_commit')}; "
        f"wall time {result.get('wall_s')} s"
    )
    ceiling = result.get("ceiling") or {}
    variant = (ceiling.get("variants") or [{}])[0]
    model = variant.get("model", {})
    add(
        f"- Model: `{s.get('model_path')}` ({model.get('architecture')}, "
        f"{model.get('layers')} layers, "
        f"hidden {model.get('hidden_size')}, {model.get('parameters')} parameters), "
        f"torch threads {s.get('torch_threads')} x inference workers "
        f"{s.get('inference_workers', 1)}, versions {ceiling.get('versions')}"
    )
    corpus = result["corpus"]
    add(
        f"- Corpus: {corpus['size']} generated sentences (seed {corpus['seed']}), "
        f"{corpus['min_words']}–{corpus['max_words']} words, mean {corpus['mean_words']}, "
        f"mean {variant.get('mean_tokens')} tokens; mix {corpus['sentiment_mix']}; "
        f"{s.get('items_per_request')} text(s) per request"
    )
    add(
        f"- Steps: {s.get('step_s')} s each after {s.get('warmup_s')} s warm-up"
        f"{' (QUICK: smoke test, not for claims)' if result.get('quick') else ''}; "
        f"load generators {result['tools']}"
    )
    add("")
    add("## Targets (CPU, concurrency 32, direct, same run)")
    add("")
    add("| target | requirement | measured | result |")
    add("|---|---|---|---|")
    for t in targets:
        add(f"| {t.name} | {t.requirement} | {t.measured} | **{t.status}** |")
    add("")
    if variant:
        add("## Model-only ceiling (separate process, no HTTP, server not under load)")
        add("")
        add("| mode | sentences/s | padding efficiency | latency p50 / p99 (ms) | tokenize share |")
        add("|---|---|---|---|---|")
        for mode in variant.get("modes", {}).values():
            lat = mode.get("latency") or mode.get("batch_latency") or {}
            kind = "per sentence" if "latency" in mode else "per batch"
            add(
                f"| {mode['description']} | {_fmt(mode['sentences_per_s'])} | "
                f"{_fmt(mode['padding_efficiency'], 2)} | "
                f"{_fmt(lat.get('p50_ms'))} / {_fmt(lat.get('p99_ms'))} {kind} | "
                f"{_pct(mode.get('tokenize_share'))} |"
            )
        add("")
        after = ((result.get("ceiling_after") or {}).get("variants") or [{}])[0].get("modes")
        if after:
            again = ", ".join(
                f"{name} {_fmt(m['sentences_per_s'])} sentences/s" for name, m in after.items()
            )
            add(
                f"Measured again after the batched sweep: {again}. The targets use the mean of "
                "the two (the machine's speed drifts within minutes)."
            )
            add("")
    cold_rows = [
        (name, series)
        for name, series in result.get("series", {}).items()
        if series.get("cold_start")
    ]
    if cold_rows:
        add("## Cold start and memory")
        add("")
        add(
            "| server | to listening (s) | to /ready 200 (s) | RSS at ready (MiB) "
            "| RSS after load (MiB) |"
        )
        add("|---|---|---|---|---|")
        for name, series in cold_rows:
            cs = series["cold_start"]
            peaks = [
                st["server"]["rss_mib_peak"] for st in series.get("steps", []) if st.get("server")
            ]
            after = series.get("rss_mib_after_load") or (max(peaks) if peaks else None)
            add(
                f"| {name} | {_fmt(cs['to_listening_s'], 2)} | {_fmt(cs['to_ready_s'], 2)} | "
                f"{_fmt(cs['rss_mib_at_ready'], 0)} | {_fmt(after, 0)} |"
            )
        add("")
    pairs = result.get("paired") or []
    if pairs:
        add("## Paired rounds (the ceiling and Nginx targets)")
        add("")
        add(
            "Each round: the length-sorted batch-32 model-only rate (separate process, server "
            f"idle), then a c={TARGET_CONCURRENCY} step on the same server, direct and (with "
            "Nginx) through the proxy, seconds apart; the targets take the median of the "
            "rounds' ratios."
        )
        add("")
        add(
            "| round | model-only sentences/s | served sentences/s | of model-only "
            "| direct req/s | through Nginx req/s | Nginx / direct |"
        )
        add("|---|---|---|---|---|---|---|")
        for index, pair in enumerate(pairs, 1):
            add(
                _row(
                    str(index),
                    _fmt(pair.get("ceiling_sentences_per_s")),
                    _fmt(pair.get("served_sentences_per_s")),
                    _pct(pair.get("ratio")),
                    _fmt(pair.get("direct_requests_per_s")),
                    _fmt(pair.get("nginx_requests_per_s")),
                    _pct(pair.get("nginx_ratio")),
                )
            )
        add("")
    for name, series in result.get("series", {}).items():
        steps = series.get("steps", [])
        if not steps:
            continue
        add(f"## {name}: {series.get('label', '')}")
        add("")
        add(f"URL: `{series.get('url')}`")
        add("")
        if steps[0]["kind"] == "closed":
            add(
                "| concurrency | ok req/s | sentences/s | of ceiling | p50 | p90 | p99 (ms) "
                "| errors | batch mean/p50/p90 | padding eff. batch mean / token-weighted "
                "| queue wait mean (ms) | server CPU (cores) | server RSS peak (MiB) "
                "| wrk CPU (cores) |"
            )
            add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for st in steps:
                add(
                    _row(
                        str(st["concurrency"]),
                        *_rate_and_latency_cells(st),
                        _statuses(st),
                        *_batch_cells(st),
                        *_server_cells(st),
                    )
                )
        else:
            add(
                "| offered req/s | ok req/s | sentences/s | of ceiling | p50 | p90 | p99 (ms) "
                "| unanswered at end | errors | batch mean/p50/p90 | padding eff. batch mean / "
                "token-weighted | queue wait mean (ms) | server CPU (cores) "
                "| server RSS peak (MiB) "
                "| loadtest CPU (cores) |"
            )
            add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for st in steps:
                add(
                    _row(
                        _fmt(st["offered_rate"]),
                        *_rate_and_latency_cells(st),
                        str(st["unanswered_at_end"]),
                        _statuses(st),
                        *_batch_cells(st),
                        *_server_cells(st),
                    )
                )
        add("")
        dist = _c32_distribution(steps)
        if dist:
            add(f"Batch sizes at concurrency 32 (forward passes per bucket): {dist}")
            add("")
    if result.get("errors"):
        add("## Problems during the run")
        add("")
        for e in result["errors"]:
            add(f"- {e}")
        add("")
    add(
        "Notes: latencies are client-side (wrk / loadtest); batch sizes, padding and queue wait "
        "come from the difference of the server's /metrics before and after each step; CPU is "
        "cpu_times of the server process over the step (2.0 = both cores busy). The load "
        "generator shares the machine and its CPU is listed. Figures are noisy on a shared "
        "machine: compare ratios within one run."
    )
    add("")
    return "\n".join(lines)


def _c32_distribution(steps: Sequence[dict[str, Any]]) -> str | None:
    for st in steps:
        if st.get("kind") == "closed" and st.get("concurrency") == 32:
            sm = st.get("server_metrics")
            if sm and sm["batch_size"]["buckets"]:
                return ", ".join(
                    f"≤{b['le']:g}: {b['count']:g}" for b in sm["batch_size"]["buckets"]
                )
    return None


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Latency (p50 solid, p99 dashed) against throughput, one colour per series."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for i, (name, series) in enumerate(result.get("series", {}).items()):
        steps = [st for st in series.get("steps", []) if st["ok_requests_per_s"] > 0]
        if not steps:
            continue
        colour = colours[i % len(colours)]
        x = [st["sentences_per_s"] for st in steps]
        p50 = [st["latency_ms"]["p50"] or 0.0 for st in steps]
        p99 = [st["latency_ms"]["p99"] or 0.0 for st in steps]
        ax.plot(x, p50, "o-", color=colour, label=f"{name} p50")
        ax.plot(x, p99, "s--", color=colour, alpha=0.7, label=f"{name} p99")
        for st, xi, yi in zip(steps, x, p50, strict=True):
            tag = f"c{st['concurrency']}" if st["kind"] == "closed" else f"{st['offered_rate']:g}/s"
            ax.annotate(tag, (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ceiling = _ceiling_rate(result)
    if ceiling:
        ax.axvline(ceiling, color="grey", linestyle=":", label="model-only ceiling (b32 sorted)")
        ax.axvline(0.8 * ceiling, color="grey", linestyle="-.", alpha=0.5, label="80% of ceiling")
    ax.set_xlabel("throughput (sentences/s)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.set_title(f"Latency vs throughput — {result.get('stem', '')}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    """Write <stem>.json, <stem>.md and <stem>.png; returns the paths written."""
    result["stem"] = stem
    add_fractions(result)
    targets = evaluate(result)
    result["targets"] = [t.as_dict() for t in targets]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(result, targets), encoding="utf-8")
    png = plot(result, out_dir / f"{stem}.png")
    if png is not None:
        paths["png"] = png
    return paths


def print_targets(targets: Sequence[dict[str, str]]) -> str:
    width = max(len(t["name"]) for t in targets)
    return "\n".join(
        f"{t['status']:4s}  {t['name']:<{width}}  {t['measured']}  (need {t['requirement']})"
        for t in targets
    )

"""JSON and Markdown outputs of `python -m bench run` and `python -m bench ab`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.sysinfo import describe


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def run_markdown(result: dict[str, Any]) -> str:
    s, m, summary = result["settings"], result.get("model", {}), result["summary"]
    batching = m.get("batching", {})
    lines = [
        "# Benchmark",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- Machine: {describe(result['machine'])} at the start, "
        f"{result['machine'].get('load_average_end')} at the end",
        f"- Model: `{m.get('path')}` ({m.get('architecture')}, {m.get('parameters')} parameters, "
        f"revision {m.get('revision')}); device {m.get('device')}, dtype {m.get('dtype')}, "
        f"quantize {m.get('quantize')}, forward **{m.get('forward')}** ({m.get('forward_reason')})",
        f"- Batching: {batching}; server env {s['server_env'] or 'defaults'}",
        f"- Ceiling engine: {result.get('ceiling_engine', 'not measured')}",
        f"- Corpus: {result['corpus']}",
        f"- Steps: {s['step_s']} s after {s['warmup_s']} s warm-up, concurrency "
        f"{s['concurrency']}, median of {s['repeat']} repeat(s); wall time {result['wall_s']} s",
        f"- Cold start to ready {fmt(result.get('cold_start_s'), 2)} s; RSS "
        f"{fmt(result.get('rss_mib_at_ready'), 0)} MiB at ready, "
        f"{fmt(result.get('rss_mib_after_load'), 0)} MiB after the load",
        "",
        "## Headline",
        "",
        f"- c=32: {pct(summary['share_of_ceiling_at_32'])} of the model-only ceiling "
        f"({fmt(summary['sweep'].get('32', {}).get('ok_requests_per_s'))} req/s served vs "
        f"{fmt(summary['ceiling_sentences_per_s'])} sentences/s length-sorted batch 32; "
        f"per repeat {[pct(x) for x in summary['shares_of_ceiling_at_32']]})",
        f"- c=1: p50 {fmt(summary['c1_p50_ms'], 2)} ms served vs "
        f"{fmt(summary['ceiling_batch1_p50_ms'], 2)} ms for one lone forward pass",
        "",
        "## Sweep (medians over the repeats)",
        "",
        "| concurrency | ok req/s | p50 ms | p99 ms | mean batch | non-2xx | req/s per repeat |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, row in summary["sweep"].items():
        lines.append(
            f"| {c} | {fmt(row['ok_requests_per_s'])} | {fmt(row['p50_ms'])} | "
            f"{fmt(row['p99_ms'])} | {fmt(row['batch_mean'])} | {row['non_2xx']} | "
            f"{', '.join(fmt(x) for x in row['runs_ok_requests_per_s'])} |"
        )
    ceilings = [r["ceiling"] for r in result["repeats"] if r.get("ceiling")]
    if ceilings:
        lines += [
            "",
            "## Model-only ceiling (the app's engine in-process, no HTTP)",
            "",
            "| repeat | sorted batch 32 sentences/s | batch-32 pass p50 ms | batch 1 p50 ms |",
            "|---|---|---|---|",
        ]
        for i, c in enumerate(ceilings, 1):
            lines.append(
                f"| {i} | {fmt(c['sorted_batch32_sentences_per_s'])} | "
                f"{fmt(c['batch32_pass_p50_ms'])} | {fmt(c['batch1_p50_ms'], 2)} |"
            )
    return "\n".join(lines) + "\n"


def ab_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# A/B",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- Machine: {describe(result['machine'])}",
        f"- A: `{s['a']}` (git {s['git_a']}); B: `{s['b']}` (git {s['git_b']}); model "
        f"`{s['model']}`; env {s['env'] or 'defaults'}",
        f"- {s['rounds']} rounds, the order alternating (AB, BA, ...); each side a fresh "
        f"server, {s['warmup_s']} s warm-up, then {s['seconds']} s at c=32 and {s['seconds']} s "
        "at c=1 (wrk)",
        "",
        "| round | side | ready s | c=32 ok req/s | c=32 p50 ms | c=1 p50 ms | RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rounds"]:
        lines.append(
            f"| {r['round']} | {r['side']} | {fmt(r['ready_s'], 2)} | {fmt(r['c32_ok_rps'])} | "
            f"{fmt(r['c32_p50_ms'])} | {fmt(r['c1_p50_ms'], 2)} | {fmt(r['rss_mib'], 0)} |"
        )
    med = result["medians"]
    lines += [
        "",
        "| median | A | B | B/A of the medians | median of the rounds' B/A |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("c32_ok_rps", "c=32 ok req/s"), ("c1_p50_ms", "c=1 p50 ms")):
        lines.append(
            f"| {label} | {fmt(med['A'][key], 2)} | {fmt(med['B'][key], 2)} | "
            f"{fmt(result['b_over_a'][key], 3)} | "
            f"{fmt(result['b_over_a_median_per_round'][key], 3)} |"
        )
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], markdown: str, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(markdown, encoding="utf-8")
    return paths

"""The issue's targets, checked against one run's figures (ratios within the same run)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

# CPU, default model, fp32, concurrency 32, direct to the app, same run.
TARGET_CONCURRENCY = 32
CEILING_FRACTION = 0.80
BASELINE_SPEEDUP = 2.5
C1_LATENCY_SLACK_MS = 2.0
NGINX_FRACTION = 0.95
COLD_START_S = 10.0


@dataclass(frozen=True)
class TargetResult:
    name: str
    requirement: str
    measured: str
    status: str  # PASS | FAIL | SKIP

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def closed_step(result: dict[str, Any], series: str, concurrency: int) -> dict[str, Any] | None:
    """The closed-loop step of `series` at `concurrency`, if it ran."""
    block = result.get("series", {}).get(series)
    if not block:
        return None
    for step in block.get("steps", []):
        if step.get("kind") == "closed" and step.get("concurrency") == concurrency:
            return dict(step)
    return None


def _single_ceiling_mode(result: dict[str, Any], key: str, mode: str) -> dict[str, Any] | None:
    ceiling = result.get(key) or {}
    variants = ceiling.get("variants") or []
    if not variants:
        return None
    found = variants[0].get("modes", {}).get(mode)
    return dict(found) if found else None


def ceiling_mode(result: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """The model-only figures for `mode`; when the ceiling was measured before and after the
    batched sweep, the mean of the two (throughput and p50 latency), with both kept."""
    before = _single_ceiling_mode(result, "ceiling", mode)
    after = _single_ceiling_mode(result, "ceiling_after", mode)
    if before is None or after is None:
        return before
    merged = dict(before)
    merged["sentences_per_s"] = (before["sentences_per_s"] + after["sentences_per_s"]) / 2
    latency = dict(before.get("latency") or {})
    if "p50_ms" in latency and "p50_ms" in (after.get("latency") or {}):
        latency["p50_ms"] = (latency["p50_ms"] + after["latency"]["p50_ms"]) / 2
    merged["latency"] = latency
    merged["bracket"] = {
        "before": before["sentences_per_s"],
        "after": after["sentences_per_s"],
        "p50_ms_before": (before.get("latency") or {}).get("p50_ms"),
        "p50_ms_after": (after.get("latency") or {}).get("p50_ms"),
    }
    return merged


def _paired_median(
    result: dict[str, Any], ratio_key: str, numerator: str, denominator: str
) -> tuple[float, str] | None:
    """The median of the paired rounds' `ratio_key` and how to show it; None without rounds."""
    rounds = [r for r in result.get("paired") or [] if r.get(ratio_key)]
    if not rounds:
        return None
    ratio = statistics.median(float(r[ratio_key]) for r in rounds)
    each = ", ".join(f"{r[numerator]:.0f}/{r[denominator]:.0f}" for r in rounds)
    return ratio, f"median of {len(rounds)} paired rounds {ratio:.1%} ({each})"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def evaluate(result: dict[str, Any]) -> list[TargetResult]:
    c = TARGET_CONCURRENCY
    batched = closed_step(result, "batched", c)
    baseline = closed_step(result, "baseline", c)
    nginx = closed_step(result, "nginx", c)
    batched_c1 = closed_step(result, "batched", 1)
    sorted_ceiling = ceiling_mode(result, "b32s")
    b1 = ceiling_mode(result, "b1")
    out: list[TargetResult] = []

    name = f"throughput c={c} vs model-only ceiling"
    req = f">= {CEILING_FRACTION:.0%} of length-sorted batch-32 sentences/s"
    sweep = ""
    frac = None
    if batched and sorted_ceiling:
        got, ceil = batched["sentences_per_s"], sorted_ceiling["sentences_per_s"]
        frac = got / ceil if ceil else 0.0
        sweep = f"{got:.1f} / {ceil:.1f} = {frac:.1%}"
    paired = _paired_median(result, "ratio", "served_sentences_per_s", "ceiling_sentences_per_s")
    if paired:
        ratio, shown = paired
        shown += f"; sweep {sweep}" if sweep else ""
        out.append(TargetResult(name, req, shown, _verdict(ratio >= CEILING_FRACTION)))
    elif frac is not None:
        out.append(TargetResult(name, req, sweep, _verdict(frac >= CEILING_FRACTION)))
    else:
        out.append(TargetResult(name, req, "not measured", "SKIP"))

    name = f"throughput c={c} vs one request per forward pass"
    req = f">= {BASELINE_SPEEDUP}x the seeds' design (MAX_BATCH_SIZE=1, one pass at a time)"
    if batched and baseline:
        got, base = batched["sentences_per_s"], baseline["sentences_per_s"]
        speedup = got / base if base else float("inf")
        out.append(
            TargetResult(
                name,
                req,
                f"{got:.1f} / {base:.1f} = {speedup:.2f}x",
                _verdict(speedup >= BASELINE_SPEEDUP),
            )
        )
    else:
        out.append(TargetResult(name, req, "not measured", "SKIP"))

    name = "latency c=1 p50 vs model-only batch 1"
    req = f"<= model-only batch-1 p50 + {C1_LATENCY_SLACK_MS:g} ms"
    if batched_c1 and b1:
        got = float(batched_c1["latency_ms"]["p50"])
        model = float(b1["latency"]["p50_ms"])
        out.append(
            TargetResult(
                name,
                req,
                f"{got:.1f} ms vs {model:.1f} + {C1_LATENCY_SLACK_MS:g} ms",
                _verdict(got <= model + C1_LATENCY_SLACK_MS),
            )
        )
    else:
        out.append(TargetResult(name, req, "not measured", "SKIP"))

    name = f"through Nginx c={c} vs direct"
    req = f">= {NGINX_FRACTION:.0%} of direct requests/s"
    paired = _paired_median(result, "nginx_ratio", "nginx_requests_per_s", "direct_requests_per_s")
    if paired:
        ratio, shown = paired
        if nginx and batched:
            via, direct = nginx["ok_requests_per_s"], batched["ok_requests_per_s"]
            shown += f"; sweep {via:.1f} / {direct:.1f}"
        out.append(TargetResult(name, req, shown, _verdict(ratio >= NGINX_FRACTION)))
    elif nginx and batched:
        got, direct = nginx["ok_requests_per_s"], batched["ok_requests_per_s"]
        shown = f"{direct:.1f}"
        after = closed_step(result, "direct_after", c)
        if after:  # bracket the Nginx sweep: mean of the direct steps before and after it
            direct = (direct + after["ok_requests_per_s"]) / 2
            shown = f"{direct:.1f} (direct {batched['ok_requests_per_s']:.1f} before, "
            shown += f"{after['ok_requests_per_s']:.1f} after)"
        frac = got / direct if direct else 0.0
        out.append(
            TargetResult(
                name,
                req,
                f"{got:.1f} / {shown} = {frac:.1%}",
                _verdict(frac >= NGINX_FRACTION),
            )
        )
    else:
        out.append(TargetResult(name, req, "not measured (no --nginx-url)", "SKIP"))

    name = "cold start to /ready"
    req = f"<= {COLD_START_S:g} s"
    cold = (result.get("series", {}).get("batched") or {}).get("cold_start")
    if cold and cold.get("to_ready_s") is not None:
        got = float(cold["to_ready_s"])
        out.append(TargetResult(name, req, f"{got:.2f} s", _verdict(got <= COLD_START_S)))
    else:
        out.append(TargetResult(name, req, "not measured (server not started by the tool)", "SKIP"))
    return out

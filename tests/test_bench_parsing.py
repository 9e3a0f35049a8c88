"""The benchmark tool without a server or a model: wrk output, summaries, reports, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.ab import both_spellings
from bench.ceiling import settings_from_model_info, sorted_batches
from bench.cli import build_parser, env_pairs
from bench.report import ab_markdown, run_markdown, write
from bench.runner import step_at, summarize
from bench.sysinfo import cpu_class
from bench.wrkrun import LUA_SCRIPT, LoadGenError, parse_wrk_output, summarize_wrk

WRK_STDOUT = """Running 10s test @ http://127.0.0.1:8000/predict
  1 threads and 32 connections
Requests/sec:    160.00
BENCH_WRK_JSON_BEGIN
{"duration_us": 10000000, "requests": 1600, "bytes": 716800, "errors": {"connect": 0, \
"read": 0, "write": 0, "status": 10, "timeout": 2}, "latency_us": {"min": 5000, "max": 512000, \
"mean": 190120.0, "stdev": 40000.0, "percentiles": {"50": 180000, "75": 210000, "90": 250000, \
"99": 400000, "99.9": 500000}}, "statuses": {"200": 1590, "503": 10}}
BENCH_WRK_JSON_END
"""

MACHINE = {
    "cpu_model": "Test CPU",
    "cores": 2,
    "flags": ["avx2", "fma"],
    "cpu_class": "cpu-avx2",
    "torch_cpu_capability": "AVX2",
    "torch": "2.13.0",
    "python": "3.11",
    "git": "abc1234",
    "load_average": [0.1, 0.1, 0.1],
}


def test_parse_and_summarize_wrk() -> None:
    s = summarize_wrk(parse_wrk_output(WRK_STDOUT))
    assert s["requests_per_s"] == 160.0
    assert s["ok_requests_per_s"] == 159.0  # 503s are not served work
    assert s["latency_ms"] == {"p50": 180.0, "p90": 250.0, "p99": 400.0, "max": 512.0}
    assert s["statuses"] == {"200": 1590, "503": 10}
    assert s["socket_errors"] == {"status": 10, "timeout": 2}
    with pytest.raises(LoadGenError):
        parse_wrk_output("Running 10s test\nRequests/sec: 1.0\n")
    assert "BENCH_WRK_JSON_BEGIN" in LUA_SCRIPT.read_text(encoding="utf-8")


def _step(c: int, rps: float, p50: float, batch: float | None = 4.0) -> dict[str, Any]:
    server = None if batch is None else {"batch_size": {"mean": batch}}
    return {
        "concurrency": c,
        "ok_requests_per_s": rps,
        "latency_ms": {"p50": p50, "p90": p50 * 2, "p99": p50 * 3},
        "statuses": {"200": 100, "503": 1},
        "server": server,
    }


def _ceiling(rate: float, b1: float) -> dict[str, float]:
    return {
        "sorted_batch32_sentences_per_s": rate,
        "batch32_pass_p50_ms": 80.0,
        "batch1_p50_ms": b1,
        "batch1_sentences_per_s": 1000 / b1,
    }


def _repeats() -> list[dict[str, Any]]:
    return [
        {"ceiling": _ceiling(400, 6.0), "steps": [_step(1, 120, 8.0), _step(32, 300, 90)]},
        {"ceiling": _ceiling(500, 5.0), "steps": [_step(1, 130, 7.0), _step(32, 350, 80, None)]},
        {"ceiling": _ceiling(450, 7.0), "steps": [_step(1, 110, 9.0), _step(32, 420, 70)]},
    ]


def test_summary_takes_medians_and_each_repeats_own_ratio() -> None:
    s = summarize(_repeats())
    assert s["sweep"]["32"]["ok_requests_per_s"] == 350
    assert s["sweep"]["32"]["runs_ok_requests_per_s"] == [300, 350, 420]
    assert s["sweep"]["32"]["batch_mean"] == 4.0  # a step without /metrics is left out
    assert s["sweep"]["1"]["non_2xx"] == 3
    assert s["ceiling_sentences_per_s"] == 450
    assert s["ceiling_batch1_p50_ms"] == 6.0
    # 300/400, 350/500, 420/450: the median of the ratios, not the ratio of the medians.
    assert s["shares_of_ceiling_at_32"] == [0.75, 0.7, 0.9333]
    assert s["share_of_ceiling_at_32"] == pytest.approx(0.75)
    assert s["c1_p50_ms"] == 8.0
    without_ceiling = summarize([{"steps": [_step(32, 300, 90)]}])
    assert without_ceiling["share_of_ceiling_at_32"] is None
    assert without_ceiling["c1_p50_ms"] is None
    nearest = step_at([_step(8, 1, 1), _step(64, 2, 2)], 32)
    assert nearest is not None and nearest["concurrency"] == 8
    assert step_at([], 32) is None


def test_ceiling_settings_come_from_get_model() -> None:
    info = {
        "device": "cpu",
        "dtype": "float32",
        "quantize": "int8",
        "forward": "unpadded_onednn",
        "max_length": 128,
        "batching": {"inference_workers": 2, "torch_threads": 1, "max_batch_size": 64},
    }
    known = {"model_path", "device", "dtype", "quantize", "forward", "inference_workers"}
    known |= {"torch_threads", "warmup"}
    fields = settings_from_model_info(info, Path("m"), known)
    assert fields == {
        "model_path": Path("m"),
        "device": "cpu",
        "dtype": "float32",
        "quantize": "int8",
        "forward": "unpadded_onednn",
        "inference_workers": 2,
        "torch_threads": 1,
        "warmup": False,
    }


def test_sorted_batches_are_length_sorted_and_interleaved() -> None:
    rows = [[0] * n for n in (5, 1, 9, 3, 7, 2, 8, 4, 6)]
    batches = sorted_batches(rows, 2)
    assert [[len(r) for r in b] for b in batches] == [[1, 2], [9], [3, 4], [7, 8], [5, 6]]
    assert sum(len(b) for b in batches) == len(rows)


def test_cpu_class() -> None:
    assert cpu_class(["avx2", "fma", "avx512f", "amx_tile"]) == "cpu-avx512-amx"
    assert cpu_class(["avx2", "avx512f"]) == "cpu-avx512"
    assert cpu_class(["avx2", "fma"]) == "cpu-avx2"
    assert cpu_class([]) == "cpu-other"


def test_ab_overrides_go_out_in_both_spellings() -> None:
    assert both_spellings({"max_batch_size": "8", "TEXTCLF_FORWARD": "padded"}) == {
        "MAX_BATCH_SIZE": "8",
        "TEXTCLF_MAX_BATCH_SIZE": "8",
        "FORWARD": "padded",
        "TEXTCLF_FORWARD": "padded",
    }


def test_cli_parser_and_env_pairs() -> None:
    args = build_parser().parse_args(
        ["run", "--quick", "--concurrency", "1,32", "--env", "TEXTCLF_FORWARD=padded"]
    )
    assert args.quick and args.concurrency == [1, 32]
    assert env_pairs(args.env) == {"TEXTCLF_FORWARD": "padded"}
    with pytest.raises(SystemExit):
        env_pairs(["nonsense"])
    ab = build_parser().parse_args(["ab", "--a", "/tmp/old", "--rounds", "2"])
    assert ab.rounds == 2 and ab.a == Path("/tmp/old")


def test_run_report(tmp_path: Path) -> None:
    result: dict[str, Any] = {
        "command": "python -m bench run",
        "machine": MACHINE,
        "settings": {
            "server_env": {},
            "concurrency": [1, 32],
            "step_s": 10.0,
            "warmup_s": 2.0,
            "repeat": 3,
        },
        "model": {"path": "model/default", "forward": "unpadded", "batching": {}},
        "corpus": {"size": 600},
        "repeats": _repeats(),
        "wall_s": 100.0,
        "cold_start_s": 4.2,
    }
    result["summary"] = summarize(result["repeats"])
    text = run_markdown(result)
    assert "cpu-avx2" in text and "AVX2" in text
    assert "c=32: 75.0% of the model-only ceiling" in text
    assert "| 32 | 350.0 | 80.0 | 240.0 | 4.0 | 3 | 300, 350, 420 |" in text
    json_path, md_path = write(result, text, tmp_path, "unit")
    assert json.loads(json_path.read_text(encoding="utf-8"))["summary"]["sweep"]["1"]
    assert md_path.read_text(encoding="utf-8") == text


def test_ab_report() -> None:
    rows = [
        {
            "round": 1,
            "side": s,
            "ready_s": 4.0,
            "c32_ok_rps": r,
            "c32_p50_ms": 90.0,
            "c1_p50_ms": p,
            "rss_mib": 500.0,
        }
        for s, r, p in (("A", 300.0, 8.0), ("B", 330.0, 7.5))
    ]
    result = {
        "command": "python -m bench ab",
        "machine": MACHINE,
        "settings": {
            "a": "/tmp/old",
            "b": "/work",
            "git_a": "07077a8",
            "git_b": "abc",
            "model": "m",
            "env": {},
            "rounds": 1,
            "seconds": 8.0,
            "warmup_s": 2.0,
        },
        "rounds": rows,
        "medians": {
            "A": {"c32_ok_rps": 300.0, "c1_p50_ms": 8.0},
            "B": {"c32_ok_rps": 330.0, "c1_p50_ms": 7.5},
        },
        "b_over_a": {"c32_ok_rps": 1.1, "c1_p50_ms": 0.9375},
        "b_over_a_median_per_round": {"c32_ok_rps": 1.1, "c1_p50_ms": 0.9375},
    }
    text = ab_markdown(result)
    assert "| 1 | B | 4.00 | 330.0 | 90.0 | 7.50 | 500 |" in text
    assert "| c=32 ok req/s | 300.00 | 330.00 | 1.100 | 1.100 |" in text
    assert "| c=1 p50 ms | 8.00 | 7.50 | 0.938 | 0.938 |" in text

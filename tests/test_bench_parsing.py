"""Parsing of load-generator output, CLI specs, targets and the report (no server, no model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.cli import _env_pairs, build_parser
from bench.model_only import make_batches, padding_efficiency, parse_variant
from bench.openloop import parse_openloop_output, summarize_openloop
from bench.report import add_fractions, markdown, write_outputs
from bench.runner import base_of, parse_rates, predict_url
from bench.targets import evaluate
from bench.wrkrun import LoadGenError, parse_wrk_output, summarize_wrk

WRK_STDOUT = """Running 10s test @ http://127.0.0.1:8000/predict
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   190.12ms   40.00ms 512.00ms   70.00%
  1600 requests in 10.00s, 700.00KB read
  Non-2xx or 3xx responses: 10
Requests/sec:    160.00
BENCH_WRK_JSON_BEGIN
{"duration_us": 10000000, "requests": 1600, "bytes": 716800, "errors": {"connect": 0, \
"read": 0, "write": 0, "status": 10, "timeout": 2}, "latency_us": {"min": 5000, "max": 512000, \
"mean": 190120.0, "stdev": 40000.0, "percentiles": {"50": 180000, "75": 210000, "90": 250000, \
"99": 400000, "99.9": 500000}}, "statuses": {"200": 1590, "503": 10}}
BENCH_WRK_JSON_END
"""


def test_parse_and_summarize_wrk() -> None:
    raw = parse_wrk_output(WRK_STDOUT)
    s = summarize_wrk(raw, items_per_request=1)
    assert s["requests_per_s"] == 160.0
    assert s["ok_requests"] == 1590
    assert s["ok_requests_per_s"] == 159.0
    assert s["sentences_per_s"] == 159.0
    assert s["latency_ms"]["p50"] == 180.0
    assert s["latency_ms"]["p99"] == 400.0
    assert s["statuses"] == {"200": 1590, "503": 10}
    assert s["socket_errors"] == {"status": 10, "timeout": 2}
    assert summarize_wrk(raw, items_per_request=4)["sentences_per_s"] == 636.0


def test_wrk_output_without_block_is_an_error() -> None:
    with pytest.raises(LoadGenError):
        parse_wrk_output("Running 10s test\nRequests/sec: 1.0\n")


def test_wrk_lua_script_ships_with_the_package() -> None:
    from bench.wrkrun import LUA_SCRIPT

    text = LUA_SCRIPT.read_text(encoding="utf-8")
    assert "BENCH_WRK_JSON_BEGIN" in text and "function done" in text


def test_openloop_summary() -> None:
    payload = {
        "sent": 500,
        "completed": 480,
        "errors": 5,
        "elapsed_s": 10.0,
        "clients": 40,
        "mean_ms": 120.5,
        "max_ms": 900,
        "histogram_ms": {"100": 400, "200": 70, "900": 10},
        "statuses": {"200": 475, "503": 5},
    }
    stdout = "noise\nBENCH_OPENLOOP_JSON_BEGIN\n" + json.dumps(payload)
    stdout += "\nBENCH_OPENLOOP_JSON_END\n"
    s = summarize_openloop(parse_openloop_output(stdout), offered_rate=50.0, items_per_request=1)
    assert s["answered"] == 480
    assert s["unanswered_at_end"] == 20
    assert s["ok_requests_per_s"] == 47.5
    assert s["latency_ms"]["p50"] == 100
    assert s["latency_ms"]["p99"] == 900
    assert s["statuses"] == {"200": 475, "503": 5}


def test_parse_rates() -> None:
    assert parse_rates(["10", "0.5x", "1.2x"], 100.0) == [10.0, 50.0, 120.0]
    assert parse_rates(["0.5x"], None) == []
    with pytest.raises(ValueError):
        parse_rates(["-3"], 10.0)


def test_url_helpers() -> None:
    assert predict_url("http://h:1") == "http://h:1/predict"
    assert predict_url("http://h:1/predict/") == "http://h:1/predict"
    assert base_of("http://h:1/predict") == "http://h:1"


def test_parse_variant() -> None:
    v = parse_variant("int8+eager+pad8+t1")
    assert (v.int8, v.attn, v.pad_multiple, v.threads) == (True, "eager", 8, 1)
    assert parse_variant("fp32") == parse_variant("fp32").__class__("fp32")
    assert parse_variant("threads2+sdpa").threads == 2
    assert parse_variant("bf16").dtype == "bfloat16"
    gpu = parse_variant("cuda+fp16+pad8")
    assert (gpu.device, gpu.dtype, gpu.pad_multiple) == ("cuda", "float16", 8)
    assert parse_variant("fp32").device == "cpu"
    for bad in ("", "int4", "pad1", "t0", "int8+bf16", "fp16", "cuda+int8"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_make_batches_and_padding() -> None:
    lengths = [10, 50, 11, 49, 12, 48, 13, 47]
    arrival = make_batches(lengths, 2, sort_by_length=False)
    assert arrival == [[0, 1], [2, 3], [4, 5], [6, 7]]
    sorted_batches = make_batches(lengths, 2, sort_by_length=True)
    assert sorted(sorted(b) for b in sorted_batches) == [[0, 2], [1, 3], [4, 6], [5, 7]]
    eff_arrival = padding_efficiency(arrival, lengths, 1)
    eff_sorted = padding_efficiency(sorted_batches, lengths, 1)
    assert eff_sorted > 0.95 > 0.7 > eff_arrival
    # Padding the width up to a multiple of 8 can only add padding.
    assert padding_efficiency(sorted_batches, lengths, 8) < eff_sorted


def test_cli_parser_and_env_pairs() -> None:
    args = build_parser().parse_args(
        ["run", "--quick", "--concurrency", "1,32", "--server-env", "MAX_BATCH_WAIT_MS=5"]
    )
    assert args.quick and args.concurrency == [1, 32]
    assert _env_pairs(args.server_env) == {"MAX_BATCH_WAIT_MS": "5"}
    with pytest.raises(Exception):  # noqa: B017 - argparse type error class is private-ish
        _env_pairs(["nonsense"])


def _step(kind: str, c: int, rps: float, p50: float) -> dict[str, Any]:
    rps, p50 = float(rps), float(p50)
    return {
        "kind": kind,
        "concurrency": c,
        "offered_rate": rps,
        "ok_requests_per_s": rps,
        "sentences_per_s": rps,
        "latency_ms": {"p50": p50, "p90": p50 * 2, "p99": p50 * 3},
        "statuses": {"200": 100},
        "socket_errors": {},
        "unanswered_at_end": 0,
        "generator": {"cpu_cores": 0.05},
        "server": {"cpu_cores": 1.9, "rss_mib_peak": 400.0},
        "server_metrics": None,
    }


def _result() -> dict[str, Any]:
    ceiling_modes = {
        "b1": {
            "description": "batch 1",
            "sentences_per_s": 75.0,
            "padding_efficiency": 1.0,
            "latency": {"p50_ms": 13.0, "p99_ms": 20.0},
            "tokenize_share": 0.02,
        },
        "b32s": {
            "description": "batch 32 sorted",
            "sentences_per_s": 180.0,
            "padding_efficiency": 0.95,
            "batch_latency": {"p50_ms": 170.0, "p99_ms": 200.0},
            "tokenize_share": 0.01,
        },
    }
    return {
        "command": "python -m bench run",
        "quick": False,
        "machine": {"cores": 2},
        "settings": {"model_path": "model/default", "torch_threads": 2},
        "tools": {"wrk": "wrk 4.1.0"},
        "corpus": {
            "size": 600,
            "seed": 1,
            "min_words": 5,
            "max_words": 60,
            "mean_words": 24.0,
            "sentiment_mix": {},
        },
        "ceiling": {"variants": [{"modes": ceiling_modes, "model": {}}]},
        "series": {
            "baseline": {"steps": [_step("closed", 1, 60, 15), _step("closed", 32, 55, 600)]},
            "batched": {
                "cold_start": {"to_listening_s": 3.0, "to_ready_s": 6.0, "rss_mib_at_ready": 380},
                "steps": [_step("closed", 1, 70, 14.5), _step("closed", 32, 150, 200)],
            },
            "open_loop": {"steps": [_step("open", 0, 100, 120)]},
        },
        "errors": [],
    }


def test_targets_pass_fail_and_skip() -> None:
    statuses = [t.status for t in evaluate(_result())]
    # 150/180 = 83% PASS; 150/55 = 2.7x PASS; 14.5 <= 13 + 2 PASS; no nginx SKIP; 6 s PASS.
    assert statuses == ["PASS", "PASS", "PASS", "SKIP", "PASS"]
    slow = _result()
    slow["series"]["batched"]["steps"][1]["sentences_per_s"] = 100.0  # 56%, 1.8x
    slow["series"]["batched"]["steps"][0]["latency_ms"]["p50"] = 15.5  # > 13 + 2
    slow["series"]["batched"]["cold_start"]["to_ready_s"] = 12.0
    assert [t.status for t in evaluate(slow)] == ["FAIL", "FAIL", "FAIL", "SKIP", "FAIL"]
    with_nginx = _result()
    with_nginx["series"]["nginx"] = {"steps": [_step("closed", 32, 140.0, 210.0)]}
    nginx = evaluate(with_nginx)[3]
    assert nginx.status == "FAIL" and "93.3%" in nginx.measured


def test_markdown_and_outputs(tmp_path: Path) -> None:
    result = _result()
    add_fractions(result)
    assert result["series"]["batched"]["steps"][1]["fraction_of_ceiling"] == pytest.approx(0.8333)
    text = markdown(result, evaluate(result))
    assert "**PASS**" in text and "| 32 | 150.0 |" in text
    paths = write_outputs(_result(), tmp_path, "unit")
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["targets"][0]["status"] == "PASS"
    assert paths["md"].exists()


def test_median_run_picks_the_middle_round() -> None:
    from bench.model_only import median_run

    runs = [{"sentences_per_s": 90.0}, {"sentences_per_s": 10.0}, {"sentences_per_s": 50.0}]
    chosen = median_run(runs)
    assert chosen["sentences_per_s"] == 50.0
    assert chosen["runs_sentences_per_s"] == [90.0, 10.0, 50.0]


def test_local_nginx_config_points_at_the_app(tmp_path: Path) -> None:
    from bench.nginxlocal import render_config

    conf = render_config(tmp_path, port=18080, upstream_port=18000)
    assert "listen 127.0.0.1:18080;" in conf
    assert "server 127.0.0.1:18000;" in conf
    assert "keepalive" in conf and 'proxy_set_header Connection "";' in conf


def test_streams_variant_and_server_parallelism(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.runner import server_parallelism

    assert parse_variant("w2+t1").streams == 2
    with pytest.raises(ValueError):
        parse_variant("w0")
    monkeypatch.delenv("TORCH_THREADS", raising=False)
    monkeypatch.delenv("INFERENCE_WORKERS", raising=False)
    monkeypatch.setattr("bench.runner._cores", lambda: 4)
    monkeypatch.setattr("app.classifier.cpu_count", lambda: 4)
    assert server_parallelism(None, {}) == (4, 1)  # the app's auto rule: one pass per core
    assert server_parallelism(None, {"INFERENCE_WORKERS": "1"}) == (1, 4)
    assert server_parallelism(None, {"INFERENCE_WORKERS": "2"}) == (2, 2)
    assert server_parallelism(3, {"INFERENCE_WORKERS": "2"}) == (2, 3)
    assert server_parallelism(None, {"TORCH_THREADS": "1", "INFERENCE_WORKERS": "1"}) == (1, 1)
    # On CUDA the app runs one stream (default_workers("cuda")) with every core's threads.
    assert server_parallelism(None, {"DEVICE": "cuda"}) == (1, 4)


def test_ceiling_variant_follows_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.runner import ceiling_variant

    for name in ("QUANTIZE", "DTYPE", "ONEDNN_LINEAR", "DEVICE"):
        monkeypatch.delenv(name, raising=False)
    assert ceiling_variant(1, {}) == "fp32"
    assert ceiling_variant(2, {"QUANTIZE": "int8"}) == "int8+w2"
    assert ceiling_variant(1, {"DTYPE": "bfloat16"}) == "bf16"
    assert ceiling_variant(2, {"ONEDNN_LINEAR": "off"}) == "fp32+aten+w2"
    # The app's CUDA defaults: float16, widths padded to a multiple of 8.
    assert ceiling_variant(1, {"DEVICE": "cuda"}) == "cuda+fp16+pad8"
    assert ceiling_variant(1, {"DEVICE": "cuda", "DTYPE": "bfloat16"}) == "cuda+bf16+pad8"
    assert ceiling_variant(1, {"DEVICE": "cpu", "QUANTIZE": "int8"}) == "int8"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert ceiling_variant(1, {}) == "cuda+fp16+pad8"  # DEVICE=auto with a GPU
    for spec in ("fp32", "int8+w2", "bf16", "fp32+aten+w2", "cuda+fp16+pad8", "cuda+bf16+pad8"):
        parse_variant(spec)  # every generated spec must parse
    assert parse_variant("fp32").onednn and not parse_variant("aten").onednn


def test_a_cuda_variant_without_a_gpu_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bench.model_only import ModelRunner

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        ModelRunner(tmp_path, parse_variant("cuda+fp16"), threads=1, max_length=None)


def test_ceiling_measured_before_and_after_is_averaged() -> None:
    result = _result()
    after = json.loads(json.dumps(result["ceiling"]))
    after["variants"][0]["modes"]["b32s"]["sentences_per_s"] = 220.0  # machine got faster
    after["variants"][0]["modes"]["b1"]["latency"]["p50_ms"] = 11.0
    result["ceiling_after"] = after
    statuses = evaluate(result)
    # 150 / mean(180, 220) = 75 % FAIL (it passed against the first ceiling alone).
    assert statuses[0].status == "FAIL" and "200.0" in statuses[0].measured
    # c=1 against mean(13, 11) + 2 = 14 ms: 14.5 FAILs.
    assert statuses[2].status == "FAIL"
    from bench.targets import ceiling_mode

    sorted_mode = ceiling_mode(result, "b32s")
    assert sorted_mode is not None
    assert sorted_mode["bracket"] == {
        "before": 180.0,
        "after": 220.0,
        "p50_ms_before": None,
        "p50_ms_after": None,
    }


def test_nginx_target_uses_the_direct_steps_around_it() -> None:
    result = _result()
    result["series"]["nginx"] = {"steps": [_step("closed", 32, 140.0, 210.0)]}
    # Direct 150 before, 130 after (the machine slowed): 140 / 140 = 100 % PASS, where the
    # step before alone would have said 93 % FAIL.
    result["series"]["direct_after"] = {"steps": [_step("closed", 32, 130.0, 230.0)]}
    nginx = evaluate(result)[3]
    assert nginx.status == "PASS" and "100.0%" in nginx.measured and "130.0 after" in nginx.measured


def test_baseline_is_the_seeds_design() -> None:
    from bench.runner import BASELINE_ENV

    # One text per pass, one pass at a time, the model's own padded forward, torch's kernels.
    assert BASELINE_ENV == {
        "MAX_BATCH_SIZE": "1",
        "INFERENCE_WORKERS": "1",
        "UNPADDED": "off",
        "ONEDNN_LINEAR": "off",
    }


def test_lone_pass_threads_follow_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.runner import lone_pass_threads

    monkeypatch.delenv("ALONE_PASS_THREADS", raising=False)
    monkeypatch.setattr("bench.runner._cores", lambda: 4)
    assert lone_pass_threads(1, {}) == 1  # off by default: a lone pass uses TORCH_THREADS
    assert lone_pass_threads(1, {"ALONE_PASS_THREADS": "2"}) == 2
    assert lone_pass_threads(3, {"ALONE_PASS_THREADS": "1"}) == 3  # never below TORCH_THREADS


def _pair(served: float, ceiling: float, nginx: float | None = None) -> dict[str, Any]:
    from bench.runner import pair_ratios

    record: dict[str, Any] = {
        "ceiling_sentences_per_s": float(ceiling),
        "step": _step("closed", 32, served, 100.0),
    }
    if nginx is not None:
        record["nginx_step"] = _step("closed", 32, nginx, 100.0)
    return pair_ratios(record)


def test_ceiling_target_takes_the_median_of_the_paired_rounds() -> None:
    result = _result()  # the sweep alone: 150 / 180 = 83 % PASS
    result["paired"] = [_pair(150.0, 200.0), _pair(160.0, 180.0), _pair(140.0, 190.0)]
    target = evaluate(result)[0]
    # Ratios 75 %, 89 %, 74 %: the median 75 % FAILs although the sweep's ratio passes.
    assert target.status == "FAIL"
    assert "median of 3 paired rounds 75.0%" in target.measured and "sweep 150.0" in target.measured
    result["paired"][0] = _pair(170.0, 200.0)  # 85 %: now the median is 85 %
    assert evaluate(result)[0].status == "PASS"
    text = markdown(result, evaluate(result))
    assert "Paired rounds" in text and "| 2 | 180.0 | 160.0 | 89% | 160.0 | – | – |" in text


def test_nginx_target_takes_the_median_of_the_paired_rounds() -> None:
    result = _result()
    # The sweep alone: 140 / 150 = 93 % FAIL.
    result["series"]["nginx"] = {"steps": [_step("closed", 32, 140.0, 210.0)]}
    result["paired"] = [_pair(150, 180, 147), _pair(160, 180, 150), _pair(150, 180, 120)]
    nginx = evaluate(result)[3]
    # Ratios 98 %, 94 %, 80 %: median 93.8 % FAIL; one bad round does not decide it.
    assert nginx.status == "FAIL" and "median of 3 paired rounds 93.8%" in nginx.measured
    result["paired"][1] = _pair(160, 180, 155)  # 97 %: the median is now 97 %
    nginx = evaluate(result)[3]
    assert nginx.status == "PASS" and "sweep 140.0 / 150.0" in nginx.measured
    assert evaluate(result)[0].measured.startswith("median of 3 paired rounds")
    text = markdown(result, evaluate(result))
    assert "| 2 | 180.0 | 160.0 | 89% | 160.0 | 155.0 | 97% |" in text


def test_model_command_rejects_a_bad_variant_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.cli import main

    assert main(["model", "--model", str(tmp_path), "--variants", "fp16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fp16 needs cuda" in err

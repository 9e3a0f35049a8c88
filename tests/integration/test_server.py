"""The real service over real HTTP: a uvicorn process serving the default model."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.server import ServerProcess

OBVIOUS = {
    "I love this, it is wonderful and it made my day!": "positive",
    "Thank you so much, the staff were amazing and friendly.": "positive",
    "This is terrible, I hate it. Worst experience ever.": "negative",
    "My flight was cancelled again and nobody helps, awful service.": "negative",
}

SENTENCES = [
    "The train was on time this morning.",
    "I absolutely adore the new update, great job!",
    "Customer service hung up on me twice, unbelievable.",
    "Meeting moved to 3pm on Thursday.",
    "What a fantastic concert, best night of the year",
    "The package arrived damaged and the refund never came.",
    "The weather today is cloudy with some wind in the afternoon and evening, nothing special.",
    "ok",
]


def _samples(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                values[tuple(sorted(sample.labels.items()))] = sample.value
    return values


def _metric(url: str, name: str, **labels: str) -> float:
    wanted = tuple(sorted(labels.items()))
    return sum(v for k, v in _samples(url, name).items() if set(wanted) <= set(k))


def test_obvious_sentences_get_the_right_label(server: ServerProcess) -> None:
    for text, label in OBVIOUS.items():
        response = httpx.post(f"{server.url}/predict", json={"text": text}, timeout=30)
        assert response.status_code == 200
        body = response.json()
        assert body["label"] == label, (text, body)
        assert {"label", "confidence", "processing_time_ms"} <= set(body)
        assert body["scores"][0]["label"] == label
        assert sorted(s["label"] for s in body["scores"]) == ["negative", "neutral", "positive"]


def test_model_info_and_cold_start(server: ServerProcess) -> None:
    info = httpx.get(f"{server.url}/model", timeout=10).json()
    assert info["labels"] == ["negative", "neutral", "positive"]
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["quantize"] == "none"
    assert info["revision"], "the default model records its build cache key"
    # Chosen at start-up by timing each candidate; the reason carries the timings.
    assert info["forward"] in {"padded", "unpadded", "unpadded_onednn"}
    assert (
        info["forward_reason"].startswith("fastest at start-up") and " ms" in info["forward_reason"]
    )
    assert "onednn_linear_layers" not in info and "alone_pass_threads" not in info["batching"]
    assert info["batching"]["inference_workers"] >= 1
    assert server.ready_after_s is not None
    print(f"cold start to ready: {server.ready_after_s:.2f} s")  # noqa: T201


def test_64_concurrent_requests_are_batched_and_match_unbatched(server: ServerProcess) -> None:
    texts = [SENTENCES[i % len(SENTENCES)] + f" #{i}" for i in range(64)]
    alone = {}
    for text in texts[:16]:
        alone[text] = httpx.post(f"{server.url}/predict", json={"text": text}, timeout=30).json()
    before_batches = _metric(server.url, "textclf_batch_size_count")
    before_items = _metric(server.url, "textclf_batch_size_sum")

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/predict", json={"text": text}) for text in texts)
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 64
    batches = _metric(server.url, "textclf_batch_size_count") - before_batches
    items = _metric(server.url, "textclf_batch_size_sum") - before_items
    assert items == 64
    assert batches < 64, "some forward passes carried more than one text"
    for text, response in zip(texts, responses, strict=True):
        if text in alone:
            body, single = response.json(), alone[text]
            assert body["label"] == single["label"]
            for got, want in zip(body["scores"], single["scores"], strict=True):
                assert got["score"] == pytest.approx(want["score"], abs=1e-5)


def test_error_paths_over_http(server: ServerProcess) -> None:
    url = f"{server.url}/predict"
    headers = {"content-type": "application/json"}
    cases = [
        (b'{"text": "\\ud800"}', 422),
        (b'{"text": ""}', 422),
        (b'{"texts": []}', 422),
        (b'{"text": 5}', 422),
        (b"{not json", 422),
        (json.dumps({"texts": ["a"] * 65}).encode(), 422),
        (json.dumps({"text": "a" * 10_001}).encode(), 422),
        (json.dumps({"text": "word " * 600, "truncate": False}).encode(), 422),
        (b"x" * 1_100_000, 413),
    ]
    for body, status in cases:
        response = httpx.post(url, content=body, headers=headers, timeout=30)
        assert response.status_code == status, (body[:40], response.text)
        error = response.json()
        assert error["error_type"] in {"validation", "too_large"}
        assert len(response.content) < 2048 and "Traceback" not in response.text
    long = httpx.post(url, json={"text": "word " * 600}, timeout=30).json()
    assert long["truncated"] is True and long["num_tokens"] > 512
    assert httpx.get(f"{server.url}/nope", timeout=10).status_code == 404


def test_a_client_that_hangs_up_is_dropped(server: ServerProcess) -> None:
    before = _metric(server.url, "textclf_rejections_total", reason="client_gone")
    body = json.dumps({"texts": ["a fairly long sentence to keep the model busy"] * 64}).encode()
    request = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    # Long texts ahead of it (about 100 tokens each, a second or more of model time), so its
    # texts are still queued when it hangs up: with short ones a fast machine answered it
    # before the hang-up and nothing was left to drop.
    long_text = " ".join(["a fairly long sentence to keep the model busy"] * 10)
    busy_body = json.dumps({"texts": [long_text] * 64}).encode()

    async def busy() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            await asyncio.gather(*(client.post("/predict", content=busy_body) for _ in range(3)))

    async def scenario() -> None:
        load = asyncio.ensure_future(busy())
        await asyncio.sleep(0.2)
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(request)
            await asyncio.sleep(0.05)
        await load

    asyncio.run(scenario())
    time.sleep(0.5)
    assert _metric(server.url, "textclf_rejections_total", reason="client_gone") == before + 64


def test_overload_answers_every_request(model_path: Path, spawn) -> None:
    server = spawn(
        model_path,
        TEXTCLF_MAX_QUEUE_TOKENS="256",  # about sixteen of these short texts
        TEXTCLF_MAX_ITEMS_PER_REQUEST="16",
        TEXTCLF_MAX_BATCH_SIZE="8",
    )
    server.wait_ready()

    async def flood() -> list[httpx.Response | BaseException]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/predict", json={"text": SENTENCES[i % 8]}) for i in range(200)),
                return_exceptions=True,
            )

    started = time.monotonic()
    responses = asyncio.run(flood())
    assert time.monotonic() - started < 30, "nothing hung"
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 16 and statuses.count(503) > 0
    for response in responses:
        assert isinstance(response, httpx.Response)
        if response.status_code == 503:
            assert response.json()["error_type"] == "overloaded"
            assert 1 <= int(response.headers["retry-after"]) <= 60
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_sigterm_drains_in_flight_requests(model_path: Path, spawn) -> None:
    server = spawn(model_path, TEXTCLF_GRACEFUL_TIMEOUT_S="20")
    server.wait_ready()
    # 192 long texts (well within TEXTCLF_MAX_QUEUE_TOKENS and the deadline): the work sent
    # before SIGTERM takes seconds, so it is still running when readiness is probed.
    long_text = " ".join([SENTENCES[6]] * 3)
    body = {"texts": [f"{long_text} #{i}" for i in range(64)]}

    async def scenario() -> tuple[list[httpx.Response], int, str, int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            requests = [client.post("/predict", json=body) for _ in range(3)]
            in_flight = [asyncio.ensure_future(request) for request in requests]
            for _ in range(100):  # until every request has reached the server
                await asyncio.sleep(0.05)
                if "textclf_requests_in_flight 3.0" in (await client.get("/metrics")).text:
                    break
            server.terminate()
            await asyncio.sleep(0.05)
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as fresh:
                ready = await fresh.get("/ready")
            still_running = sum(not task.done() for task in in_flight)
            return await asyncio.gather(*in_flight), ready.status_code, ready.text, still_running

    started = time.monotonic()
    responses, ready_status, ready_text, still_running = asyncio.run(scenario())
    assert still_running > 0, "the drain must be observed while work is in flight"
    assert [r.status_code for r in responses] == [200] * 3
    assert all(len(r.json()["predictions"]) == 64 for r in responses)
    assert ready_status == 503 and "draining" in ready_text
    assert server.process.wait(25) == 0
    assert time.monotonic() - started < 25


def test_broken_model_folder_exits_with_one_clear_line(
    model_path: Path, spawn, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_path, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 128)
    server = spawn(broken)
    started = time.monotonic()
    code = server.process.wait(60)
    assert code == 3
    assert time.monotonic() - started < 30
    log = (tmp_path / "server-0.log").read_text()
    errors = [line for line in log.splitlines() if "cannot serve" in line]
    assert len(errors) == 1 and "MODEL_PATH=" in errors[0]
    assert "Traceback" not in log


def test_the_forward_pass_is_set_by_its_variable(tiny_model: Path, spawn, tmp_path: Path) -> None:
    forced = spawn(tiny_model, TEXTCLF_FORWARD="unpadded")
    forced.wait_ready()
    info = httpx.get(f"{forced.url}/model", timeout=10).json()
    assert (info["forward"], info["forward_reason"]) == ("unpadded", "set by TEXTCLF_FORWARD")
    # int8 weights cannot be packed for oneDNN: asked for anyway, the server says so and exits.
    refused = spawn(tiny_model, TEXTCLF_FORWARD="unpadded_onednn", TEXTCLF_QUANTIZE="int8")
    assert refused.process.wait(60) == 3
    log = (tmp_path / "server-1.log").read_text()
    errors = [line for line in log.splitlines() if "cannot serve" in line]
    assert len(errors) == 1 and "TEXTCLF_FORWARD=unpadded_onednn is unavailable" in errors[0]
    assert "Traceback" not in log

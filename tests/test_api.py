"""The HTTP contract, in process: shapes, every error path, request ids, probes, docs.

Most tests serve the fake classifier (tests/fakes.py); the few that check real scores and what
/model reports of a real model serve the tiny BERT model."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from app.http.schemas import BatchPredictResponse, SinglePredictResponse
from tests.conftest import predict_scope, until

pytestmark = pytest.mark.anyio

MARKER = "SECRET-INPUT-MARKER"
LIMITS: dict[str, Any] = {"max_items_per_request": 4, "max_text_chars": 200}


@pytest.fixture
async def api(start_app, fake_settings, fake) -> Any:
    return await start_app(fake_settings(**LIMITS), factory=fake.factory)


@pytest.fixture
async def real_api(start_app, settings_for) -> Any:
    """The tiny real model, on its own (padded) forward: no start-up timing of the others."""
    return await start_app(settings_for(forward="padded", **LIMITS))


def _assert_error(response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type", "request_id"}
    assert body["error_type"] == error_type
    assert body["request_id"] == response.headers["x-request-id"]
    assert MARKER not in response.text
    assert "Traceback" not in response.text
    assert len(response.content) < 2048
    return body


async def test_single_text(real_api, tiny_model) -> None:
    response = await real_api.client.post("/predict", json={"text": "I love this movie"})
    assert response.status_code == 200
    body = SinglePredictResponse.model_validate(response.json())
    assert body.label in {"negative", "neutral", "positive"}
    assert body.confidence == body.scores[0].score
    assert sum(s.score for s in body.scores) == pytest.approx(1.0, abs=1e-5)
    assert body.num_tokens == 6 and body.truncated is False
    assert body.processing_time_ms > 0
    assert body.model == tiny_model.name


async def test_batch_keeps_input_order_and_top_k(real_api) -> None:
    texts = ["good", "the flight was terrible", "I love this movie", "bad"]
    response = await real_api.client.post("/predict", json={"texts": texts, "top_k": 1})
    assert response.status_code == 200
    body = BatchPredictResponse.model_validate(response.json())
    assert len(body.predictions) == 4
    assert all(len(p.scores) == 1 for p in body.predictions)
    for text, prediction in zip(texts, body.predictions, strict=True):
        alone = (await real_api.client.post("/predict", json={"text": text})).json()
        assert prediction.label == alone["label"]
        assert prediction.confidence == pytest.approx(alone["confidence"], abs=1e-5)
        assert prediction.num_tokens == alone["num_tokens"]


async def test_model_info_of_the_real_model(real_api, tiny_model) -> None:
    info = (await real_api.client.get("/model")).json()
    assert info["name"] == tiny_model.name
    assert info["labels"] == ["negative", "neutral", "positive"]
    assert info["architecture"] == "BertForSequenceClassification"
    assert info["max_length"] == 64 and info["activation"] == "softmax"
    assert len(info["folder_sha256"]) == 64 and info["parameters"] > 0
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["quantize"] == "none"
    assert info["forward"] == "padded" and "TEXTCLF_FORWARD" in info["forward_reason"]
    assert "onednn_linear_layers" not in info
    assert "alone_pass_threads" not in info["batching"]
    assert info["batching"]["inference_workers"] == 1


async def test_body_without_content_type_is_read_as_json(api) -> None:
    response = await api.client.post("/predict", content=b'{"text": "good"}')
    assert response.status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        {"text": ""},
        {"text": "   "},
        {"text": 5},
        {"text": ["a"]},
        {"texts": []},
        {"texts": ["good", ""]},
        {"texts": "good"},
        {},
        {"text": "good", "texts": ["good"]},
        {"text": "good", "top_k": 0},
        {"text": "good", MARKER: 1},
        {"text": "good", "truncate": "maybe"},
        [MARKER],
        MARKER,
    ],
)
async def test_invalid_bodies_are_422(api, payload) -> None:
    _assert_error(await api.client.post("/predict", json=payload), 422, "validation")


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udc00", b"\\ud800\\u0041", b"\\ud8"])
async def test_lone_surrogate_is_422_not_500(api, escape: bytes) -> None:
    body = b'{"text": "' + MARKER.encode() + escape + b'"}'
    response = await api.client.post(
        "/predict", content=body, headers={"content-type": "application/json"}
    )
    error = _assert_error(response, 422, "validation")
    assert "surrogate" in error["error"]


def test_schema_refuses_lone_surrogates_given_in_process() -> None:
    from pydantic import ValidationError

    from app.http.schemas import PredictRequest

    with pytest.raises(ValidationError, match="lone surrogate"):
        PredictRequest.model_validate({"text": "ok\ud800"})


async def test_malformed_json_and_bad_bytes(api) -> None:
    response = await api.client.post(
        "/predict",
        content=b'{"text": "' + MARKER.encode(),
        headers={"content-type": "application/json"},
    )
    _assert_error(response, 422, "validation")
    response = await api.client.post(
        "/predict", content=b'{"text": "\xff\xfe"}', headers={"content-type": "application/json"}
    )
    _assert_error(response, 422, "validation")


async def test_form_content_type_is_415(api) -> None:
    response = await api.client.post("/predict", data={"text": MARKER})
    _assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/json; charset=utf-8", 200),
        ("application/vnd.api+json", 200),
    ],
)
async def test_only_json_content_types_are_read(api, content_type: str, status: int) -> None:
    response = await api.client.post(
        "/predict", content=b'{"text": "good"}', headers={"content-type": content_type}
    )
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        _assert_error(response, status, "unsupported_media_type")


async def test_limits_from_settings(api) -> None:
    too_many = await api.client.post("/predict", json={"texts": ["good"] * 5})
    assert "at most 4 items" in _assert_error(too_many, 422, "validation")["error"]
    too_long = await api.client.post("/predict", json={"text": MARKER + "x" * 300})
    error = _assert_error(too_long, 422, "validation")["error"]
    assert "at most 200 characters" in error and "given 319" in error


async def test_too_many_tokens_without_truncation(api) -> None:
    text = " ".join(["i"] * 80)
    cut = await api.client.post("/predict", json={"text": text})
    assert cut.status_code == 200
    assert cut.json()["truncated"] is True and cut.json()["num_tokens"] == 82
    refused = await api.client.post("/predict", json={"text": text, "truncate": False})
    error = _assert_error(refused, 422, "validation")["error"]
    assert "82 tokens" in error and "limit of 64" in error


async def test_body_over_the_limit_is_413(start_app, fake_settings, fake) -> None:
    api = await start_app(fake_settings(max_body_bytes=2048), factory=fake.factory)
    big = {"text": MARKER + "a" * 4000}
    _assert_error(await api.client.post("/predict", json=big), 413, "too_large")

    async def chunks():
        for _ in range(8):
            yield b"a" * 1024

    streamed = await api.client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_error(streamed, 413, "too_large")
    # Refused before routing, still counted under its route; other paths stay "unmatched".
    assert api.metric("textclf_requests_total", {"route": "/predict", "status": "413"}) == 2
    await api.client.post("/nowhere", json=big)
    assert api.metric("textclf_requests_total", {"route": "unmatched", "status": "413"}) == 1


async def test_unknown_route_and_method(api) -> None:
    _assert_error(await api.client.get("/nope"), 404, "not_found")
    _assert_error(await api.client.get("/predict"), 405, "method_not_allowed")


async def test_request_id_is_echoed_or_made(api) -> None:
    given = await api.client.get("/health", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await api.client.get("/health")
    again = await api.client.get("/health")
    assert len(made.headers["x-request-id"]) == 32
    assert int(made.headers["x-request-id"], 16) >= 0  # hex
    assert made.headers["x-request-id"] != again.headers["x-request-id"]
    unsafe = await api.client.get("/health", headers={"x-request-id": "a b\tc"})
    assert unsafe.headers["x-request-id"] != "a b\tc"


async def test_probes_and_model_info(api, fake) -> None:
    health = (await api.client.get("/health")).json()
    assert health == {"status": "ok", "model_loaded": True, "device": "cpu", "phase": "ready"}
    assert (await api.client.get("/ready")).json() == {"status": "ready"}
    info = (await api.client.get("/model")).json()
    assert info["name"] == fake.info.name and info["labels"] == fake.info.labels
    assert info["max_length"] == 64 and info["activation"] == "softmax"
    assert info["folder_sha256"] == fake.info.folder_sha256
    assert info["forward"] == "padded" and info["forward_reason"] == fake.info.forward_reason
    assert info["quantize"] == "none" and info["multi_label_threshold"] == 0.5
    batching = info["batching"]
    assert batching["inference_workers"] == fake.workers
    assert batching["torch_threads"] == fake.threads
    assert batching["max_items_per_request"] == 4 and batching["max_text_chars"] == 200


class _ThreadKiller(BaseException):
    """Not an Exception: nothing in the batcher catches it, so the thread running it dies."""


async def test_a_dead_inference_thread_fails_liveness(
    start_app, fake_settings, fake, monkeypatch
) -> None:
    """A loaded service whose inference thread died can never answer again: /health says so
    (an orchestrator restarts it) instead of 200 forever, and /ready and /predict name why."""
    died: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_type))
    api = await start_app(fake_settings(request_timeout_s=0.3), factory=fake.factory)
    assert (await api.client.get("/health")).status_code == 200
    fake.error = _ThreadKiller()
    lost = await api.client.post("/predict", json={"text": "good"})
    _assert_error(lost, 504, "timeout")  # its answer never comes
    batcher = api.app.state.lifecycle.service.batcher
    await until(lambda: not batcher.alive)
    assert died == [_ThreadKiller]
    health = _assert_error(await api.client.get("/health"), 503, "not_ready")
    assert "inference threads have stopped" in health["error"]
    ready = _assert_error(await api.client.get("/ready"), 503, "not_ready")
    assert "inference threads have stopped" in ready["error"]
    predict = await api.client.post("/predict", json={"text": "good"})
    assert "inference threads have stopped" in _assert_error(predict, 503, "not_ready")["error"]
    assert api.metric("textclf_ready") == 0


async def test_metrics_count_requests_and_predictions(api) -> None:
    await api.client.post("/predict", json={"texts": ["good", "bad"]})
    await api.client.post("/predict", json={"text": ""})
    text = (await api.client.get("/metrics")).text
    assert 'textclf_requests_total{route="/predict",status="200"} 1.0' in text
    assert 'textclf_requests_total{route="/predict",status="422"} 1.0' in text
    assert "textclf_batch_size_bucket" in text and "textclf_input_tokens_count 2.0" in text
    assert (
        sum(
            api.metric("textclf_predictions_total", {"label": label})
            for label in ("negative", "neutral", "positive")
        )
        == 2
    )
    assert api.metric("textclf_prediction_confidence_count") == 2
    assert "textclf_model_info{" in text and "textclf_ready 1.0" in text


async def test_openapi_documents_every_status_and_docs_load(api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    responses = spec["paths"]["/predict"]["post"]["responses"]
    assert {"200", "413", "415", "422", "499", "500", "503", "504"} == set(responses)
    request = spec["components"]["schemas"]["PredictRequest"]
    assert any("texts" in e for e in request["examples"])
    # This deployment's limits, so generated clients and fuzzers know them.
    fields = request["properties"]
    assert fields["text"]["maxLength"] == 200
    assert fields["texts"]["maxItems"] == 4 and fields["texts"]["items"]["maxLength"] == 200
    error_types = spec["components"]["schemas"]["ErrorResponse"]["properties"]["error_type"]
    assert {"overloaded", "draining", "timeout", "validation"} <= set(error_types["enum"])
    docs = await api.client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text


async def test_docs_can_be_turned_off(start_app, fake_settings, fake) -> None:
    api = await start_app(fake_settings(docs_access="off"), factory=fake.factory)
    _assert_error(await api.client.get("/docs"), 404, "not_found")
    _assert_error(await api.client.get("/openapi.json"), 404, "not_found")
    assert (await api.client.post("/predict", json={"text": "good"})).status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        {"text": None},
        {"text": None, "texts": ["good"]},
        {"text": "good", "top_k": "2"},
        {"text": "good", "truncate": 0},
    ],
)
async def test_strict_types_match_the_schema(api, payload) -> None:
    _assert_error(await api.client.post("/predict", json=payload), 422, "validation")


async def test_null_top_k_means_all_labels(api) -> None:
    body = (await api.client.post("/predict", json={"text": "good", "top_k": None})).json()
    assert len(body["scores"]) == 3


async def test_a_client_that_hangs_up_mid_upload_is_not_a_server_error(api) -> None:
    """Half a body, then the connection drops: 499 in the metrics, never a 500 or a traceback."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"text": "half', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = predict_scope(100)
    await api.app(scope, receive, send)
    assert sent[0]["status"] == 499
    assert api.metric("textclf_requests_total", {"route": "/predict", "status": "500"}) == 0
    assert api.metric("textclf_rejections_total", {"reason": "client_gone"}) == 1


async def test_an_unexpected_error_is_a_json_500_with_the_request_id(api) -> None:
    import httpx

    async def broken() -> None:
        raise RuntimeError(f"bug with {MARKER}")

    api.app.add_api_route("/broken", broken)
    # The app still re-raises for the server to log, so this client must not raise it.
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/broken", headers={"X-Request-ID": "abc123"})
    body = _assert_error(response, 500, "internal")
    assert body["request_id"] == "abc123"

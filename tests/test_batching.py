"""Dynamic batching, admission, deadlines, failure handling and the probes, through the HTTP
API on the fake classifier (tests/fakes.py): its passes can be held, slowed, failed or run out
of memory on demand, which a real model cannot be made to do."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.engine.base import DeviceOutOfMemory, ModelLoadError
from tests.conftest import done_within, predict_scope, until
from tests.fakes import FakeClassifier

pytestmark = pytest.mark.anyio

TEXTS = ["good", "bad film", "I love this movie", "the flight was terrible", "not bad at all"]


async def _post(client: Any, text: str) -> Any:
    return await client.post("/predict", json={"text": text})


def _ids(fake: FakeClassifier, text: str) -> list[int]:
    return fake.tokenize([text], truncate=True)[0].ids


class _Runs:
    """`on_pass` hook: the token rows of every pass, in order."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []

    def __call__(self, rows: Sequence[Sequence[int]]) -> None:
        self.rows.extend(list(row) for row in rows)


class _Fatal:
    """`on_fatal` hook: the reasons given, and an event for the first."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.called = asyncio.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.called.set()


async def test_concurrent_requests_share_forward_passes(start_app, fake_settings, fake) -> None:
    fake.workers = 2
    fake.pass_seconds = 0.02
    api = await start_app(fake_settings(), factory=fake.factory)
    alone = {t: (await _post(api.client, t)).json() for t in TEXTS}
    fake.batches.clear()
    texts = [TEXTS[i % len(TEXTS)] for i in range(40)]
    responses = await asyncio.gather(*(_post(api.client, t) for t in texts))
    assert all(r.status_code == 200 for r in responses)
    rows = [count for count, _ in fake.batches]
    assert sum(rows) == 40
    assert max(rows) > 1 and len(rows) < 40
    # Each answer is the text's own, whatever batch it ran in and wherever in it.
    for text, response in zip(texts, responses, strict=True):
        body = response.json()
        assert body["label"] == alone[text]["label"]
        assert body["scores"] == alone[text]["scores"]
        assert body["num_tokens"] == alone[text]["num_tokens"]
    assert api.metric("textclf_batch_size_count") == len(TEXTS) + len(rows)
    assert api.metric("textclf_batch_size_sum") == len(TEXTS) + 40
    assert api.metric("textclf_batch_padding_efficiency_count") == len(TEXTS) + len(rows)


async def test_idle_service_runs_a_lone_request_at_once(start_app, fake_settings, fake) -> None:
    api = await start_app(fake_settings(max_batch_wait_ms=1000), factory=fake.factory)
    # The last pass had four texts, so a thread busy right after it would wait for as many.
    assert (await api.client.post("/predict", json={"texts": TEXTS[:4]})).status_code == 200
    assert fake.batches[-1][0] == 4
    await asyncio.sleep(0.1)  # past the idle gap (50 ms) since that pass: the server is idle
    for text in TEXTS[:3]:
        start = time.perf_counter()
        assert (await _post(api.client, text)).status_code == 200
        # Waiting for company would cost the whole second; idle, each runs straight away.
        assert time.perf_counter() - start < 0.9
    assert [count for count, _ in fake.batches[-3:]] == [1, 1, 1]


async def test_full_queue_answers_503_with_retry_after(start_app, fake_settings, fake) -> None:
    fake.gate = threading.Event()  # the first pass holds the only thread
    api = await start_app(
        # "a" is three tokens (with [CLS] and [SEP]): sixteen tokens queue five of them.
        fake_settings(max_queue_tokens=16, max_items_per_request=4, max_batch_size=2),
        factory=fake.factory,
    )
    batcher = api.app.state.lifecycle.service.batcher
    tasks = [asyncio.create_task(_post(api.client, "a"))]
    await until(lambda: len(fake.batches) == 1)  # the held pass runs before the burst comes
    tasks += [asyncio.create_task(_post(api.client, "a")) for _ in range(19)]
    # Every request is accounted for: in the held pass, queued, or already answered.
    await until(
        lambda: (
            len(fake.batches) == 1
            and sum(t.done() for t in tasks) == 20 - batcher.queued - fake.batches[0][0]
        )
    )
    assert batcher.queued == 5 and batcher.queued_tokens == 15
    assert api.metric("textclf_queue_tokens") == 15 and api.metric("textclf_queue_depth") == 5
    refused = [t.result() for t in tasks if t.done()]
    assert len(refused) == 20 - 5 - fake.batches[0][0]
    for response in refused:
        assert response.status_code == 503 and response.json()["error_type"] == "overloaded"
        assert 1 <= int(response.headers["retry-after"]) <= 60
    fake.gate.set()
    statuses = [r.status_code for r in await asyncio.gather(*tasks)]
    assert statuses.count(503) == len(refused)
    assert statuses.count(200) == 20 - len(refused)
    assert api.metric("textclf_rejections_total", {"reason": "queue_full"}) == len(refused)


async def test_a_batch_request_counts_every_token_against_the_queue(
    start_app, fake_settings, fake
) -> None:
    fake.gate = threading.Event()
    api = await start_app(
        fake_settings(max_queue_tokens=16, max_items_per_request=5), factory=fake.factory
    )
    batcher = api.app.state.lifecycle.service.batcher
    running = asyncio.create_task(_post(api.client, "a"))
    await until(lambda: len(fake.batches) == 1)  # taken by the thread, held at the gate
    queued = asyncio.create_task(_post(api.client, "b"))
    await until(lambda: batcher.queued_tokens == 3)
    # Three tokens queued: five more texts of three would make eighteen, over sixteen.
    response = await api.client.post("/predict", json={"texts": ["a"] * 5})
    assert response.status_code == 503 and response.json()["error_type"] == "overloaded"
    four = asyncio.create_task(api.client.post("/predict", json={"texts": ["a"] * 4}))
    await until(lambda: batcher.queued_tokens == 15)  # four more fit
    fake.gate.set()
    assert (await running).status_code == 200 and (await queued).status_code == 200
    assert (await four).status_code == 200
    assert (await api.client.post("/predict", json={"texts": ["a"] * 5})).status_code == 200


async def test_missed_deadline_is_504_and_the_work_is_dropped(
    start_app, fake_settings, fake
) -> None:
    fake.gate = threading.Event()
    runs = _Runs()
    fake.on_pass = runs
    api = await start_app(
        fake_settings(request_timeout_s=0.3, max_batch_size=1), factory=fake.factory
    )
    first, second = await asyncio.gather(_post(api.client, "good"), _post(api.client, "bad"))
    assert first.status_code == 504 and first.json()["error_type"] == "timeout"
    assert second.status_code == 504 and second.json()["error_type"] == "timeout"
    assert len(runs.rows) == 1  # one text was taken; the other waited in the queue
    fake.gate.set()
    assert (await _post(api.client, "fine")).status_code == 200
    # The queued text was dropped at its deadline: the next pass ran the next request.
    assert runs.rows[0] in (_ids(fake, "good"), _ids(fake, "bad"))
    assert runs.rows[1:] == [_ids(fake, "fine")]
    assert api.metric("textclf_rejections_total", {"reason": "deadline"}) == 2


async def test_out_of_memory_splits_the_batch_then_fails_only_one_text(
    start_app, fake_settings, fake
) -> None:
    poison = " ".join(["word"] * 12)

    def no_memory_for_the_long_text(rows: Sequence[Sequence[int]]) -> None:
        if any(len(row) > 10 for row in rows):
            raise DeviceOutOfMemory("fake: CUDA out of memory")

    fake.gate = threading.Event()
    api = await start_app(fake_settings(), factory=fake.factory)
    batcher = api.app.state.lifecycle.service.batcher
    blocker = asyncio.create_task(_post(api.client, "good"))
    await until(lambda: len(fake.batches) == 1)
    fake.oom_above = 2
    fake.on_pass = no_memory_for_the_long_text
    texts = [*TEXTS, poison, *TEXTS]
    tasks = [asyncio.create_task(_post(api.client, text)) for text in texts]
    await until(lambda: batcher.queued == len(texts))
    fake.gate.set()
    responses = await asyncio.gather(*tasks)
    assert (await blocker).status_code == 200
    assert max(count for count, _ in fake.batches) == len(texts)  # one pass, then halves
    assert fake.released > 0  # the device's cache was released before each retry
    for text, response in zip(texts, responses, strict=True):
        if text == poison:
            body = response.json()
            assert response.status_code == 503 and body["error_type"] == "resource_exhausted"
            assert "retry-after" in response.headers
            assert "CUDA" not in response.text and "fake" not in response.text
        else:
            assert response.status_code == 200, text
    fake.oom_above = None
    fake.on_pass = None
    assert (await _post(api.client, poison)).status_code == 200


async def test_model_error_is_500_without_details_and_the_worker_survives(
    start_app, fake_settings, fake
) -> None:
    api = await start_app(fake_settings(), factory=fake.factory)
    fake.error = RuntimeError("/secret/path/kernel.cu: boom")
    failed = await _post(api.client, "good")
    assert failed.status_code == 500 and failed.json()["error_type"] == "internal"
    assert "secret" not in failed.text and "boom" not in failed.text
    fake.error = None
    assert (await _post(api.client, "good")).status_code == 200
    assert (await api.client.get("/ready")).status_code == 200
    assert (await api.client.get("/health")).status_code == 200


async def test_withdrawn_requests_are_not_run(start_app, fake_settings, fake) -> None:
    fake.gate = threading.Event()
    runs = _Runs()
    fake.on_pass = runs
    api = await start_app(fake_settings(), factory=fake.factory)
    service = api.app.state.lifecycle.service
    blocker = asyncio.ensure_future(service.classify(["good"], truncate=True, top_k=None))
    await until(lambda: len(fake.batches) == 1)  # the thread is inside the first pass
    gone = asyncio.ensure_future(service.classify(["bad"] * 3, truncate=True, top_k=None))
    await until(lambda: service.batcher.queued == 3)
    gone.cancel()  # what the route does when the client disconnects
    with pytest.raises(asyncio.CancelledError):
        await gone
    fake.gate.set()
    await blocker
    await service.classify(["fine"], truncate=True, top_k=None)
    assert runs.rows == [_ids(fake, "good"), _ids(fake, "fine")]
    assert service.batcher.queued == 0


async def test_probes_while_loading_then_ready(start_app, fake_settings, fake) -> None:
    release = threading.Event()

    def slow_factory(settings: Settings) -> FakeClassifier:
        release.wait(30)
        return fake

    try:
        api = await start_app(fake_settings(), factory=slow_factory, ready=False)
        health = await api.client.get("/health")
        assert health.status_code == 200
        assert health.json()["model_loaded"] is False and health.json()["phase"] == "loading"
        ready = await api.client.get("/ready")
        assert ready.status_code == 503 and ready.json()["error_type"] == "not_ready"
        predict = await _post(api.client, "good")
        assert predict.status_code == 503 and predict.headers["retry-after"] == "5"
        assert predict.json()["error_type"] == "not_ready"
        assert (await api.client.get("/model")).status_code == 503
        assert api.metric("textclf_ready") == 0
    finally:
        release.set()
    await until(lambda: api.app.state.lifecycle.is_ready)
    assert (await _post(api.client, "good")).status_code == 200
    assert (await api.client.get("/health")).json()["phase"] == "ready"
    assert api.metric("textclf_ready") == 1


@pytest.mark.parametrize("real_loader", [True, False])
async def test_failed_load_reports_and_never_serves(
    start_app, fake_settings, tmp_path: Path, real_loader: bool
) -> None:
    (tmp_path / "config.json").write_text("{}")  # not a model: the real loader fails on it

    def broken(settings: Settings) -> FakeClassifier:
        raise RuntimeError("weights\nare missing")

    factory: dict[str, Callable[[Settings], Any]] = {} if real_loader else {"factory": broken}
    fatal = _Fatal()
    api = await start_app(
        fake_settings(model_path=tmp_path), on_fatal=fatal, ready=False, **factory
    )
    await asyncio.wait_for(fatal.called.wait(), 30)
    assert len(fatal.reasons) == 1
    assert "MODEL_PATH=" in fatal.reasons[0] and "\n" not in fatal.reasons[0]
    health = await api.client.get("/health")
    assert health.status_code == 200 and health.json()["phase"] == "failed"
    ready = await api.client.get("/ready")
    assert ready.status_code == 503 and ready.json()["error_type"] == "not_ready"
    response = await _post(api.client, "good")
    assert response.status_code == 503 and "failed to load" in response.json()["error"]
    assert (await api.client.get("/model")).status_code == 503


async def test_a_model_load_error_is_reported_as_it_was_raised(start_app, fake_settings) -> None:
    def refuse(settings: Settings) -> FakeClassifier:
        raise ModelLoadError("TEXTCLF_QUANTIZE=int8 is a CPU option")

    fatal = _Fatal()
    await start_app(fake_settings(), factory=refuse, on_fatal=fatal, ready=False)
    await asyncio.wait_for(fatal.called.wait(), 30)
    assert fatal.reasons == ["TEXTCLF_QUANTIZE=int8 is a CPU option"]


async def test_draining_refuses_new_work_and_finishes_what_is_in_flight(
    start_app, fake_settings, fake
) -> None:
    fake.gate = threading.Event()
    api = await start_app(fake_settings(), factory=fake.factory)
    in_flight = asyncio.create_task(_post(api.client, "good"))
    await until(lambda: len(fake.batches) == 1)
    api.app.state.lifecycle.begin_drain()
    ready = await api.client.get("/ready")
    assert ready.status_code == 503 and ready.json()["error_type"] == "draining"
    response = await _post(api.client, "good")
    assert response.status_code == 503 and response.json()["error_type"] == "draining"
    assert "retry-after" in response.headers
    health = await api.client.get("/health")
    assert health.status_code == 200 and health.json()["phase"] == "draining"
    fake.gate.set()
    assert (await in_flight).status_code == 200  # arrived before the drain: served


async def test_a_request_still_uploading_when_the_drain_begins_is_served(
    start_app, fake_settings, fake
) -> None:
    """In flight from its first byte: a drain waits for it and serves it, while a request that
    starts after the drain began gets 503."""
    api = await start_app(fake_settings(), factory=fake.factory)
    lifecycle = api.app.state.lifecycle
    body = b'{"text": "good"}'
    upload, answered = asyncio.Event(), asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await upload.wait()
        if messages:
            return messages.pop()
        await answered.wait()  # the client stays connected until it has its answer
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    scope = predict_scope(16)
    uploading = asyncio.create_task(api.app(scope, receive, send))
    await until(lambda: lifecycle.in_flight == 1)
    assert api.metric("textclf_requests_in_flight") == 1
    lifecycle.begin_drain()
    late = await _post(api.client, "good")
    assert late.status_code == 503 and late.json()["error_type"] == "draining"
    upload.set()
    await done_within(uploading)
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["label"] in fake.info.labels
    assert lifecycle.in_flight == 0


async def test_self_test_gates_readiness(start_app, fake_settings, fake, tmp_path: Path) -> None:
    encoded = fake.tokenize(TEXTS, truncate=True)
    scores = fake.forward([e.ids for e in encoded], max(len(e.ids) for e in encoded))
    labels = fake.info.labels
    right = [
        {"text": t, "label": labels[int(s.argmax())]} for t, s in zip(TEXTS, scores, strict=True)
    ]
    good_file = tmp_path / "good.json"
    good_file.write_text(json.dumps(right))
    readied: list[bool] = []
    api = await start_app(
        fake_settings(selftest_path=good_file),
        factory=fake.factory,
        on_ready=lambda: readied.append(True),
    )
    assert (await api.client.get("/ready")).status_code == 200
    assert readied == [True]  # `python -m app` freezes the heap here

    wrong = [
        dict(case, label="positive" if case["label"] != "positive" else "negative")
        for case in right
    ]
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(wrong))
    fatal = _Fatal()
    failing = await start_app(
        fake_settings(selftest_path=bad_file),
        factory=FakeClassifier().factory,
        on_fatal=fatal,
        on_ready=lambda: readied.append(False),
        ready=False,
    )
    await asyncio.wait_for(fatal.called.wait(), 30)
    assert "self-test" in fatal.reasons[0] and "5 of 5" in fatal.reasons[0]
    assert (await failing.client.get("/ready")).status_code == 503
    assert readied == [True]


async def test_two_workers_run_two_forward_passes_at_once(start_app, fake_settings, fake) -> None:
    fake.workers = 2
    fake.gate = threading.Event()
    names: list[str] = []
    fake.on_pass = lambda rows: names.append(threading.current_thread().name)
    api = await start_app(fake_settings(), factory=fake.factory)
    first = asyncio.create_task(_post(api.client, "good"))
    await until(lambda: len(fake.batches) == 1)
    second = asyncio.create_task(_post(api.client, "bad"))
    # Neither pass can end before the gate opens: both are inside `forward` at once.
    await until(lambda: len(fake.batches) == 2)
    assert sorted(names) == ["inference_0", "inference_1"]
    fake.gate.set()
    assert (await first).status_code == 200 and (await second).status_code == 200


async def test_a_burst_on_an_idle_server_is_shared_between_the_threads(
    start_app, fake_settings, fake
) -> None:
    fake.workers = 2
    fake.gate = threading.Event()
    names: list[str] = []
    fake.on_pass = lambda rows: names.append(threading.current_thread().name)
    api = await start_app(fake_settings(), factory=fake.factory)
    burst = asyncio.create_task(api.client.post("/predict", json={"texts": TEXTS[:4] * 2}))
    await until(lambda: len(fake.batches) == 2)
    fake.gate.set()
    assert (await burst).status_code == 200
    # Half each, in parallel passes, rather than all eight on one thread.
    assert sorted(count for count, _ in fake.batches) == [4, 4]
    assert sorted(names) == ["inference_0", "inference_1"]

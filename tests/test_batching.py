"""Dynamic batching, admission, deadlines and failure handling, with injected slow or failing
forward passes on a real tiny model (the faults a real model cannot be made to show on demand)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from app.classifier import HFClassifier
from app.config import Settings
from app.lifecycle import Phase

pytestmark = pytest.mark.anyio


class Recorder:
    """Wraps a real classifier's forward pass: records batch sizes, adds delay or faults."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.alone: list[bool] = []
        self.thread_names: list[str] = []
        self.fault: Callable[[int], BaseException | None] = lambda rows: None
        self.gate = threading.Event()
        self.gate.set()

    def loader(self, settings: Settings) -> HFClassifier:
        classifier = HFClassifier(settings)
        real_forward = classifier.forward

        def forward(rows: Any, width: int, alone: bool = False) -> Any:
            self.gate.wait(30)
            self.batches.append(len(rows))
            self.alone.append(alone)
            self.thread_names.append(threading.current_thread().name)
            time.sleep(self.delay_s)
            fault = self.fault(len(rows))
            if fault is not None:
                raise fault
            return real_forward(rows, width, alone)

        classifier.forward = forward  # type: ignore[method-assign]
        return classifier


async def _post(client: Any, text: str) -> Any:
    return await client.post("/predict", json={"text": text})


TEXTS = ["good", "bad film", "I love this movie", "the flight was terrible", "not bad at all"]


async def test_concurrent_requests_share_forward_passes(start_app, settings_for) -> None:
    recorder = Recorder(delay_s=0.03)
    api = await start_app(settings_for(inference_workers=2), loader=recorder.loader)
    alone = {t: (await _post(api.client, t)).json() for t in TEXTS}
    # One at a time, each pass had the cores to itself, always on the same thread.
    assert recorder.alone[-len(TEXTS) :] == [True] * len(TEXTS)
    assert set(recorder.thread_names[-len(TEXTS) :]) == {"inference_0"}
    recorder.batches.clear()
    recorder.alone.clear()
    texts = [TEXTS[i % len(TEXTS)] for i in range(40)]
    responses = await asyncio.gather(*(_post(api.client, t) for t in texts))
    assert all(r.status_code == 200 for r in responses)
    assert sum(recorder.batches) == 40
    assert max(recorder.batches) > 1 and len(recorder.batches) < 40
    assert not all(recorder.alone)  # passes overlapped or left texts queued: cores shared
    for text, response in zip(texts, responses, strict=True):
        body = response.json()
        assert body["label"] == alone[text]["label"]
        for got, want in zip(body["scores"], alone[text]["scores"], strict=True):
            assert got["label"] == want["label"]
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    assert api.metric("textclf_batch_size_count") < 40 + len(TEXTS)
    assert api.metric("textclf_batch_padding_efficiency_count") > 0


async def test_idle_service_runs_a_lone_request_at_once(start_app, settings_for) -> None:
    recorder = Recorder()
    api = await start_app(settings_for(max_batch_wait_ms=1000), loader=recorder.loader)
    await _post(api.client, "warm up")
    start = time.perf_counter()
    for _ in range(3):
        assert (await _post(api.client, "good")).status_code == 200
    # Waiting for company would cost 1 s per request; alone, each runs straight away.
    assert time.perf_counter() - start < 2.5


async def test_full_queue_answers_503_with_retry_after(start_app, settings_for) -> None:
    recorder = Recorder(delay_s=0.2)
    api = await start_app(
        settings_for(max_queue_size=4, max_items_per_request=4, max_batch_size=2),
        loader=recorder.loader,
    )
    responses = await asyncio.gather(*(_post(api.client, "good") for _ in range(20)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) >= 4
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error_type"] == "overloaded"
            assert 1 <= int(response.headers["retry-after"]) <= 60
    assert api.metric("textclf_rejections_total", {"reason": "queue_full"}) == statuses.count(503)


async def test_a_batch_request_counts_every_text_against_the_queue(start_app, settings_for) -> None:
    recorder = Recorder()
    api = await start_app(
        settings_for(max_queue_size=4, max_items_per_request=4, inference_workers=1),
        loader=recorder.loader,
    )
    recorder.gate.clear()  # the model holds its next pass
    running = asyncio.create_task(_post(api.client, "good"))
    await asyncio.sleep(0.2)  # taken by the inference thread, which now waits on the gate
    queued = asyncio.create_task(_post(api.client, "bad"))
    await asyncio.sleep(0.2)
    # One text queued: four more would make five, over the limit of four.
    response = await api.client.post("/predict", json={"texts": ["good"] * 4})
    assert response.status_code == 503 and response.json()["error_type"] == "overloaded"
    recorder.gate.set()
    assert (await running).status_code == 200 and (await queued).status_code == 200
    assert (await api.client.post("/predict", json={"texts": ["good"] * 4})).status_code == 200


async def test_missed_deadline_is_504_and_the_work_is_dropped(start_app, settings_for) -> None:
    recorder = Recorder(delay_s=0.6)
    api = await start_app(
        settings_for(request_timeout_s=0.3, max_batch_size=1), loader=recorder.loader
    )
    recorder.batches.clear()
    first, second = await asyncio.gather(_post(api.client, "good"), _post(api.client, "bad"))
    assert first.status_code == 504 and first.json()["error_type"] == "timeout"
    assert second.status_code == 504
    await asyncio.sleep(0.8)
    assert recorder.batches == [1]  # the queued text was never run after its deadline
    assert api.metric("textclf_rejections_total", {"reason": "deadline"}) == 2


async def test_out_of_memory_splits_the_batch_then_fails_only_one_text(
    start_app, settings_for
) -> None:
    recorder = Recorder(delay_s=0.02)
    api = await start_app(settings_for(), loader=recorder.loader)
    recorder.fault = lambda rows: torch.OutOfMemoryError("CUDA out of memory") if rows > 2 else None
    responses = await asyncio.gather(*(_post(api.client, "good") for _ in range(12)))
    assert all(r.status_code == 200 for r in responses)  # split in halves until it fit
    recorder.fault = lambda rows: torch.OutOfMemoryError("CUDA out of memory")
    failed = await _post(api.client, "good")
    assert failed.status_code == 503 and failed.json()["error_type"] == "resource_exhausted"
    assert "retry-after" in failed.headers and "CUDA" not in failed.text
    recorder.fault = lambda rows: None
    assert (await _post(api.client, "good")).status_code == 200


async def test_model_error_is_500_without_details_and_the_worker_survives(
    start_app, settings_for
) -> None:
    recorder = Recorder()
    api = await start_app(settings_for(), loader=recorder.loader)
    recorder.fault = lambda rows: RuntimeError("/secret/path/kernel.cu: boom")
    failed = await _post(api.client, "good")
    assert failed.status_code == 500 and failed.json()["error_type"] == "internal"
    assert "secret" not in failed.text and "boom" not in failed.text
    recorder.fault = lambda rows: None
    assert (await _post(api.client, "good")).status_code == 200
    assert (await api.client.get("/ready")).status_code == 200


async def test_withdrawn_requests_are_not_run(start_app, settings_for) -> None:
    recorder = Recorder()
    api = await start_app(settings_for(), loader=recorder.loader)
    service = api.app.state.lifecycle.service
    recorder.gate.clear()
    recorder.batches.clear()
    blocker = asyncio.ensure_future(service.classify(["good"], truncate=True, top_k=None))
    await asyncio.sleep(0.1)  # the worker is now stuck inside the first forward pass
    gone = asyncio.ensure_future(service.classify(["bad"] * 3, truncate=True, top_k=None))
    await asyncio.sleep(0.1)
    gone.cancel()  # what the route does when the client disconnects
    recorder.gate.set()
    await blocker
    await asyncio.sleep(0.1)
    assert recorder.batches == [1]
    assert service.batcher.queued == 0


async def test_probes_while_loading_then_ready(start_app, settings_for) -> None:
    release = threading.Event()
    recorder = Recorder()

    def slow_loader(settings: Settings) -> HFClassifier:
        release.wait(30)
        return recorder.loader(settings)

    api = await start_app(settings_for(), loader=slow_loader, ready=False)
    health = (await api.client.get("/health")).json()
    assert health["model_loaded"] is False and health["phase"] == "loading"
    ready = await api.client.get("/ready")
    assert ready.status_code == 503 and ready.json()["error_type"] == "not_ready"
    predict = await _post(api.client, "good")
    assert predict.status_code == 503 and predict.headers["retry-after"] == "5"
    assert (await api.client.get("/model")).status_code == 503
    release.set()
    for _ in range(200):
        if (await api.client.get("/ready")).status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert (await _post(api.client, "good")).status_code == 200


async def test_failed_load_reports_and_never_serves(
    start_app, settings_for, tmp_path: Path
) -> None:
    reasons: list[str] = []
    (tmp_path / "config.json").write_text("{}")
    api = await start_app(settings_for(model_path=tmp_path), on_fatal=reasons.append, ready=False)
    for _ in range(200):
        if api.app.state.lifecycle.phase is Phase.FAILED:
            break
        await asyncio.sleep(0.05)
    assert len(reasons) == 1 and "MODEL_PATH=" in reasons[0] and "\n" not in reasons[0]
    assert (await api.client.get("/ready")).status_code == 503
    response = await _post(api.client, "good")
    assert response.status_code == 503 and "failed to load" in response.json()["error"]


async def test_draining_refuses_new_work(start_app, settings_for) -> None:
    api = await start_app(settings_for())
    api.app.state.lifecycle.begin_drain()
    ready = await api.client.get("/ready")
    assert ready.status_code == 503 and ready.json()["error_type"] == "draining"
    response = await _post(api.client, "good")
    assert response.status_code == 503 and response.json()["error_type"] == "draining"
    assert (await api.client.get("/health")).json()["phase"] == "draining"


async def test_self_test_gates_readiness(
    start_app, settings_for, tiny_model: Path, tmp_path: Path
) -> None:
    classifier = HFClassifier(settings_for())
    encoded = classifier.tokenize(TEXTS, truncate=True)
    scores = classifier.forward([e.ids for e in encoded], max(len(e.ids) for e in encoded))
    right = [
        {"text": t, "label": classifier.labels[int(s.argmax())]}
        for t, s in zip(TEXTS, scores, strict=True)
    ]
    good_file = tmp_path / "good.json"
    good_file.write_text(json.dumps(right))
    api = await start_app(settings_for(selftest_path=good_file))
    assert (await api.client.get("/ready")).status_code == 200

    wrong = [
        dict(case, label="positive" if case["label"] != "positive" else "negative")
        for case in right
    ]
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(wrong))
    reasons: list[str] = []
    failing = await start_app(
        settings_for(selftest_path=bad_file), on_fatal=reasons.append, ready=False
    )
    for _ in range(200):
        if reasons:
            break
        await asyncio.sleep(0.05)
    assert reasons and "self-test" in reasons[0] and "5 of 5" in reasons[0]
    assert (await failing.client.get("/ready")).status_code == 503


async def test_two_workers_run_two_forward_passes_at_once(start_app, settings_for) -> None:
    recorder = Recorder(delay_s=0.1)
    active = {"now": 0, "max": 0}
    lock = threading.Lock()
    api = await start_app(
        settings_for(inference_workers=2, max_batch_size=4), loader=recorder.loader
    )
    forward = api.app.state.lifecycle.service.classifier.forward

    def counting(rows: Any, width: int, alone: bool = False) -> Any:
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
            if active["now"] > 1 and alone:
                active["alone_while_another_ran"] = True
        try:
            return forward(rows, width, alone)
        finally:
            with lock:
                active["now"] -= 1

    api.app.state.lifecycle.service.classifier.forward = counting
    responses = await asyncio.gather(*(_post(api.client, t) for t in TEXTS * 4))
    assert all(r.status_code == 200 for r in responses)
    assert active["max"] == 2
    assert "alone_while_another_ran" not in active  # overlapping passes share the cores


async def test_a_burst_on_an_idle_server_is_shared_between_the_threads(
    start_app, settings_for
) -> None:
    recorder = Recorder(delay_s=0.05)
    api = await start_app(settings_for(inference_workers=2), loader=recorder.loader)
    await asyncio.sleep(0.1)  # idle: thread 0 takes work at once
    recorder.batches.clear()
    recorder.thread_names.clear()
    response = await api.client.post("/predict", json={"texts": TEXTS[:4] * 2})
    assert response.status_code == 200
    # Half each, in parallel one-core passes, rather than all eight on thread 0.
    assert sorted(recorder.batches) == [4, 4]
    assert sorted(recorder.thread_names) == ["inference_0", "inference_1"]
    assert recorder.alone[-2:] == [False, False]

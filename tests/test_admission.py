"""Admission in tokens and time, and the body's bounds before per-item work, through the HTTP
API on the fake classifier (tests/fakes.py): its passes can be held or slowed on demand.

The fake's tokens are its words plus [CLS] and [SEP]: "a" is three tokens, and so is the
bound taken before tokenizing (characters plus two)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import pytest

from app.core.batching import Batcher, BatchLimits
from app.core.passes import ADMIT_SHARE
from app.core.planning import CostModel
from app.metrics import Metrics
from tests.conftest import until
from tests.fakes import FakeClassifier

pytestmark = pytest.mark.anyio

_PASS_S = CostModel().cost(1, 3)  # the default model's guess for one pass of "a"


async def _post(client: Any, body: dict[str, Any]) -> Any:
    return await client.post("/predict", json=body)


def _words(count: int) -> str:
    return " ".join(["w"] * count)


async def _calibrate(api: Any, fake: FakeClassifier, pass_s: float) -> float:
    """One pass of "a" that takes `pass_s`: how much slower than the model the fake runs."""
    fake.pass_seconds = pass_s
    assert (await _post(api.client, {"text": "a"})).status_code == 200
    return api.metric("textclf_inference_seconds_sum") / _PASS_S


async def test_the_queue_is_bounded_in_tokens_not_texts(start_app, fake_settings, fake) -> None:
    fake.gate = threading.Event()
    api = await start_app(fake_settings(max_queue_tokens=64), factory=fake.factory)
    batcher = api.app.state.lifecycle.service.batcher
    running = asyncio.create_task(_post(api.client, {"text": "a"}))
    await until(lambda: len(fake.batches) == 1)
    # Twenty one-word texts (60 tokens) are admitted...
    short = [asyncio.create_task(_post(api.client, {"text": "a"})) for _ in range(20)]
    await until(lambda: batcher.queued == 20)
    assert batcher.queued_tokens == 60 and api.metric("textclf_queue_tokens") == 60
    # ...where a 30-word text (32 tokens) no longer is, though it is one text.
    long = await _post(api.client, {"text": _words(30)})
    assert long.status_code == 503 and long.json()["error_type"] == "overloaded"
    assert "tokens waiting" in long.json()["error"]
    assert 1 <= int(long.headers["retry-after"]) <= 60
    short.append(asyncio.create_task(_post(api.client, {"text": "a"})))  # 63 tokens: fits
    await until(lambda: batcher.queued_tokens == 63)
    assert (await _post(api.client, {"text": "a"})).status_code == 503  # 66 would not
    fake.gate.set()
    assert all(r.status_code == 200 for r in await asyncio.gather(running, *short))
    # Empty again: the long text fits now.
    assert (await _post(api.client, {"text": _words(30)})).status_code == 200


async def test_503_comes_at_once_with_the_time_until_the_work_would_fit(
    start_app, fake_settings, fake
) -> None:
    """A 2 s deadline admits work estimated to end within 1.4 s; each pass of one text takes
    0.5 s, so one running and one queued text are all that fit."""
    api = await start_app(
        fake_settings(request_timeout_s=2.0, max_batch_size=1), factory=fake.factory
    )
    batcher = api.app.state.lifecycle.service.batcher
    slowdown = await _calibrate(api, fake, 0.5)
    per_text = _PASS_S * slowdown  # about 0.5 s
    fake.gate = threading.Event()
    running = asyncio.create_task(_post(api.client, {"text": "a"}))
    await until(lambda: len(fake.batches) == 2)
    queued = asyncio.create_task(_post(api.client, {"text": "a"}))  # 1.0 s ahead with it
    await until(lambda: batcher.queued == 1)
    budget = ADMIT_SHARE * 2.0
    for count in (1, 4):
        started = time.perf_counter()
        refused = await _post(api.client, {"texts": ["a"] * count})
        assert time.perf_counter() - started < 0.4  # at once, not after a wait
        assert refused.status_code == 503 and refused.json()["error_type"] == "overloaded"
        expected = max(1, math.ceil((2 + count) * per_text - budget))
        assert int(refused.headers["retry-after"]) == expected
    fake.gate.set()
    assert (await running).status_code == 200 and (await queued).status_code == 200
    assert api.metric("textclf_rejections_total", {"reason": "queue_full"}) == 5


async def test_413_for_a_request_the_deadline_cannot_hold_even_on_an_idle_server(
    start_app, fake_settings, fake
) -> None:
    """By the warm-up model (here the default: 8 ms a pass, 0.15 ms a token), 64 texts of 62
    tokens take 0.61 s, over the 0.35 s a 0.5 s deadline admits; 16 of them take 0.16 s."""
    runs: list[int] = []
    fake.on_pass = lambda rows: runs.append(len(rows))
    api = await start_app(fake_settings(request_timeout_s=0.5), factory=fake.factory)
    started = time.perf_counter()
    response = await _post(api.client, {"texts": [_words(60)] * 64})
    assert time.perf_counter() - started < 0.3
    assert response.status_code == 413
    error = response.json()
    assert error["error_type"] == "too_large" and "retry-after" not in response.headers
    assert "TEXTCLF_REQUEST_TIMEOUT_S" in error["error"]
    assert "send fewer or shorter texts" in error["error"]
    assert runs == []  # refused before a pass
    assert api.metric("textclf_rejections_total", {"reason": "too_large"}) == 64
    assert (await _post(api.client, {"texts": [_words(60)] * 16})).status_code == 200
    # The bound before tokenizing (64 tokens a text here) never refuses for good: these are
    # three tokens each.
    assert (await _post(api.client, {"texts": ["x" * 200] * 64})).status_code == 200


async def test_contention_makes_a_request_wait_not_too_large(
    start_app, fake_settings, fake
) -> None:
    """The 413 rule prices the request on an idle server: slow passes now give 503."""
    api = await start_app(fake_settings(request_timeout_s=1.0), factory=fake.factory)
    await _calibrate(api, fake, 0.3)  # ~35 times slower than the model
    fake.gate = threading.Event()
    running = asyncio.create_task(_post(api.client, {"text": "a"}))
    await until(lambda: len(fake.batches) == 2)
    response = await _post(api.client, {"texts": [_words(20)] * 8})
    assert response.status_code == 503 and response.json()["error_type"] == "overloaded"
    fake.gate.set()
    assert (await running).status_code == 200


async def test_413_for_a_request_larger_than_the_queue(start_app, fake_settings, fake) -> None:
    api = await start_app(fake_settings(max_queue_tokens=16), factory=fake.factory)
    response = await _post(api.client, {"texts": [_words(10)] * 2})  # 24 tokens
    assert response.status_code == 413 and response.json()["error_type"] == "too_large"
    assert "TEXTCLF_MAX_QUEUE_TOKENS=16" in response.json()["error"]
    assert (await _post(api.client, {"texts": [_words(10)]})).status_code == 200


async def test_no_admitted_request_misses_its_deadline_under_a_4x_overload(
    start_app, fake_settings, fake
) -> None:
    """Passes of two texts take 0.1 s: 20 texts a second. Requests arrive at 80 a second for
    2 s with a 1 s deadline: some are refused, none admitted times out, and the server keeps
    serving at its full rate."""
    fake.pass_seconds = 0.1
    api = await start_app(
        fake_settings(request_timeout_s=1.0, max_batch_size=2), factory=fake.factory
    )
    rate, seconds = 20, 2.0
    tasks = []
    started = time.perf_counter()
    for index in range(int(4 * rate * seconds)):
        await asyncio.sleep(max(0.0, started + index / (4 * rate) - time.perf_counter()))
        tasks.append(asyncio.create_task(_post(api.client, {"text": "a"})))
    responses = await asyncio.gather(*tasks)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 0.9 * rate * seconds
    for response in responses:
        if response.status_code == 503:
            assert 1 <= int(response.headers["retry-after"]) <= 60
    assert api.metric("textclf_rejections_total", {"reason": "deadline"}) == 0


async def test_work_past_its_deadline_is_never_run() -> None:
    """Dropped by the inference thread itself, whether or not the event loop has cancelled
    it yet (a busy loop may be late)."""
    fake = FakeClassifier()
    fake.gate = threading.Event()
    limits = BatchLimits(
        max_rows=8, max_tokens=1000, max_wait_s=0, max_queue_tokens=1000, timeout_s=10
    )
    batcher = Batcher(fake, limits, Metrics(), CostModel())
    batcher.start()
    try:
        held = asyncio.ensure_future(batcher.submit([[7, 7]]))
        await until(lambda: len(fake.batches) == 1)
        late = asyncio.ensure_future(batcher.submit([[8, 8]], time.perf_counter() + 0.1))
        await until(lambda: batcher.queued == 1)
        await asyncio.sleep(0.15)
        fake.gate.set()
        await asyncio.wait_for(held, 5)
        await until(lambda: batcher.queued == 0)
        assert fake.batches == [(1, 2)]  # the late text never ran
        assert not late.done()  # its request's own timeout answers it (504)
        late.cancel()
    finally:
        fake.gate.set()
        await batcher.stop()


async def test_a_cancelled_request_leaves_the_queue_at_once(start_app, fake_settings, fake) -> None:
    fake.gate = threading.Event()
    api = await start_app(fake_settings(), factory=fake.factory)
    service = api.app.state.lifecycle.service
    blocker = asyncio.ensure_future(service.classify(["good"], truncate=True, top_k=None))
    await until(lambda: len(fake.batches) == 1)
    gone = asyncio.ensure_future(service.classify(["bad film"] * 3, truncate=True, top_k=None))
    await until(lambda: service.batcher.queued == 3)
    assert service.batcher.queued_tokens == 12
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    # Gone while the only thread is still held: no thread had to look.
    assert service.batcher.queued == 0 and service.batcher.queued_tokens == 0
    fake.gate.set()
    await blocker


# ---- bounds before per-item work ---------------------------------------------------------


def _megabyte_of(item: bytes) -> bytes:
    count = (1_048_576 - 16) // (len(item) + 1)
    return b'{"texts":[' + b",".join([item] * count) + b"]}"


@pytest.mark.parametrize("item", [b'""', b"0"], ids=["empty strings", "integers"])
async def test_huge_lists_are_refused_without_blocking_the_event_loop(
    start_app, fake_settings, fake, item: bytes
) -> None:
    api = await start_app(fake_settings(), factory=fake.factory)
    body = _megabyte_of(item)
    assert len(body) <= 1_048_576 and body.count(b",") > 300_000
    headers = {"content-type": "application/json"}
    done = asyncio.Event()
    delays: list[float] = []

    async def probe() -> None:
        """How late the event loop runs a 5 ms timer and then answers /health."""
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            assert (await api.client.get("/health")).status_code == 200
            delays.append(time.perf_counter() - started - 0.005)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    posts = [api.client.post("/predict", content=body, headers=headers) for _ in range(8)]
    responses = await asyncio.gather(*posts)
    elapsed = time.perf_counter() - started
    done.set()
    await prober
    for response in responses:
        assert response.status_code == 422 and response.json()["error_type"] == "validation"
        assert "at most 64 items" in response.json()["error"]
    # Validating each item held the loop 1.5 s a body; refusing by the count takes a parse.
    # In process the client's work shares the loop, and all eight arrive at once.
    assert elapsed < 1.0, elapsed
    assert max(delays) < 0.5, max(delays)


async def test_a_too_long_text_is_refused_before_validation(start_app, fake_settings, fake) -> None:
    api = await start_app(fake_settings(max_text_chars=100), factory=fake.factory)
    for body, field in (
        ({"text": "x" * 101}, "text:"),
        ({"texts": ["ok", "x" * 101]}, "texts[1]:"),
    ):
        response = await _post(api.client, body)
        assert response.status_code == 422 and response.json()["error_type"] == "validation"
        assert response.json()["error"].startswith(field)
        assert "at most 100 characters" in response.json()["error"]
    assert (await _post(api.client, {"text": "x" * 100})).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "a", "text": "b"}',
        b'{"texts": ["a"], "texts": ["b", "c"]}',
        b'{"text": "a", "top_k": 1, "top_k" : 2}',
        b'{"text": "a", "t\\u0065xt": "b"}',  # the same name, escaped
    ],
)
async def test_a_repeated_field_is_refused(start_app, fake_settings, fake, body: bytes) -> None:
    api = await start_app(fake_settings(), factory=fake.factory)
    response = await api.client.post(
        "/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["error_type"] == "validation"
    message = response.json()["error"]
    assert "more than once" in message and '"' not in message


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "text"}',
        b'{"texts": ["text", "\\"text\\": 1", "texts"]}',
        b'{"text": "caf\\u00e9 \\u0074ext"}',
        b'{"text" : "a", "truncate": true, "top_k": 2}',
    ],
)
async def test_field_names_inside_texts_are_not_repeats(
    start_app, fake_settings, fake, body: bytes
) -> None:
    api = await start_app(fake_settings(), factory=fake.factory)
    response = await api.client.post(
        "/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text


def test_a_warm_up_on_a_busy_machine_does_not_make_413_permanent() -> None:
    """The 413 rule prices a request on an idle server. A warm-up that ran beside other work
    priced passes 3x too dear; once a second of passes ran at the true pace, the idle price
    follows it, and a slower pace never raises it above the warm-up's."""
    from app.core.passes import TokenRate
    from app.core.planning import Work

    cost = CostModel(per_batch_s=0.03, per_token_s=0.003)
    rate = TokenRate(cost, workers=1, max_rows=32, max_tokens=8192)
    request = Work.of([100] * 4)
    at_warm_up = rate.idle_seconds(request)
    pass_lengths = [100] * 2
    true_pass_s = (0.03 + 0.003 * 200) / 3
    rate.observe(pass_lengths, true_pass_s)
    assert rate.idle_seconds(request) == at_warm_up  # one pass is not yet a window of evidence
    for _ in range(6):
        rate.observe(pass_lengths, true_pass_s)
    assert rate.idle_seconds(request) == pytest.approx(at_warm_up / 3, rel=0.05)
    for _ in range(20):
        rate.observe(pass_lengths, true_pass_s * 10)  # contention now: a wait, never a 413
    assert rate.seconds_for(request) > at_warm_up
    assert rate.idle_seconds(request) == pytest.approx(at_warm_up / 3, rel=0.05)

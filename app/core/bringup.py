"""Bring the model up: load, warm up (and fit the cost model), self-test, start."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from app.config import Settings
from app.core.batching import Batcher, BatchLimits
from app.core.planning import CostModel
from app.core.service import ClassificationService
from app.engine.base import Classifier, ModelLoadError
from app.metrics import Metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")
ClassifierFactory = Callable[[Settings], Classifier]

# (rows, width) shapes timed at warm-up: small ones pin the per-pass cost, the largest the
# per-token slope; under ~1k tokens, so about a second of start-up.
_CALIBRATION_SHAPES = ((1, 8), (1, 32), (2, 16), (4, 32), (8, 32), (16, 48))


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run blocking work without holding up interpreter exit if it never returns."""
    future: Future[T] = Future()

    def target() -> None:
        # Once running the future cannot be cancelled, so setting its result never raises.
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=target, name="model-load", daemon=True).start()
    return await asyncio.wrap_future(future)


def _shapes(classifier: Classifier, settings: Settings) -> list[tuple[int, int]]:
    shapes = []
    for rows, width in _CALIBRATION_SHAPES:
        rows = min(rows, settings.max_batch_size)
        width = min(width, classifier.info.max_length)
        if rows * width <= settings.max_batch_tokens or rows == 1:
            shapes.append((rows, width))
    return shapes


def _timed_pass(classifier: Classifier, rows: int, width: int) -> float:
    filler = [[classifier.filler_id] * width for _ in range(rows)]
    start = time.perf_counter()
    classifier.forward(filler, width)
    return time.perf_counter() - start


def warm_up(classifier: Classifier, settings: Settings) -> CostModel:
    """Warm the kernels up on every worker at once, as passes run when serving, and fit the
    cost model to these passes (the fastest of three each: interference only adds time): the
    padded planner's per-pass and per-token prices, then attention's price from a text at the
    model's limit, which admission needs to tell how long long texts take."""
    workers = max(1, classifier.workers)
    samples: list[tuple[int, int, float]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="warm-up") as pool:

        def median_pass(rows: int, width: int, repeats: int) -> float:
            def timed(_: int) -> float:
                _timed_pass(classifier, rows, width)
                return min(_timed_pass(classifier, rows, width) for _ in range(repeats))

            times = sorted(pool.map(timed, range(workers)))
            return times[len(times) // 2]

        for rows, width in _shapes(classifier, settings):
            samples.append((rows, width, median_pass(rows, width, 3)))
        longest = classifier.info.max_length
        cost = CostModel.fit(samples).with_long_text(longest, median_pass(1, longest, 2))
    logger.info(
        "cost model (%d concurrent workers): %.2f ms per pass + %.4f ms per token "
        "+ %.2f ns per token squared",
        workers,
        cost.per_batch_s * 1000,
        cost.per_token_s * 1000,
        cost.per_token_squared_s * 1e9,
    )
    return cost


def self_test(classifier: Classifier, path: Path) -> None:
    """Known answers must come out right, or the service must not report ready."""
    cases = json.loads(path.read_text())
    texts = [str(case["text"]) for case in cases]
    expected = [str(case["label"]) for case in cases]
    encoded = classifier.tokenize(texts, truncate=True)
    width = max(len(e.ids) for e in encoded)
    scores = classifier.forward([e.ids for e in encoded], width)
    labels = classifier.info.labels
    got = [labels[int(row.argmax())] for row in scores]
    wrong = [i for i, (want, have) in enumerate(zip(expected, got, strict=True)) if want != have]
    if wrong:
        first = wrong[0]
        raise ModelLoadError(
            f"self-test {path} failed for {len(wrong)} of {len(cases)} cases "
            f"(case {first}: expected {expected[first]}, got {got[first]})"
        )
    logger.info("self-test passed: %d known answers", len(cases))


def selftest_file(settings: Settings) -> Path | None:
    if settings.selftest_path is not None:
        return settings.selftest_path
    default = settings.model_path / "selftest.json"
    return default if default.is_file() else None


def prepare(settings: Settings, factory: ClassifierFactory) -> tuple[Classifier, CostModel]:
    """Everything slow, in one blocking call (run off the event loop)."""
    start = time.perf_counter()
    classifier = factory(settings)
    info = classifier.info
    if settings.max_batch_tokens < info.max_length:
        raise ModelLoadError(
            f"TEXTCLF_MAX_BATCH_TOKENS={settings.max_batch_tokens} is below the model's token "
            f"limit {info.max_length}; one long text could never be served"
        )
    loaded = time.perf_counter()
    cost = warm_up(classifier, settings) if settings.warmup else CostModel()
    test = selftest_file(settings)
    if test is not None:
        self_test(classifier, test)
    logger.info(
        "model %s ready on %s/%s: loaded in %.1f s, warmed up in %.1f s",
        info.name,
        info.device,
        info.dtype,
        loaded - start,
        time.perf_counter() - loaded,
    )
    return classifier, cost


def build_service(
    classifier: Classifier, cost: CostModel, settings: Settings, metrics: Metrics
) -> ClassificationService:
    limits = BatchLimits(
        max_rows=settings.max_batch_size,
        max_tokens=settings.max_batch_tokens,
        max_wait_s=settings.max_batch_wait_ms / 1000,
        max_queue_tokens=settings.max_queue_tokens,
        timeout_s=settings.request_timeout_s,
    )
    batcher = Batcher(classifier, limits, metrics, cost)
    batcher.start()
    info = classifier.info
    metrics.model_info.labels(info.name, info.device, info.dtype, info.revision or "").set(1)
    return ClassificationService(classifier, batcher, metrics, settings)

"""Bring the model up: load, warm up and calibrate batching, self-test, start the batcher."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from app.batching import Batcher, BatchLimits
from app.classifier import HFClassifier, ModelLoadError
from app.config import Settings
from app.metrics import Metrics
from app.planning import CostModel
from app.service import ClassificationService

logger = logging.getLogger(__name__)

T = TypeVar("T")
ClassifierLoader = Callable[[Settings], HFClassifier]

# (rows, width) shapes timed at warm-up. Small ones pin the per-pass cost, the largest the
# per-token slope; kept under ~1k tokens so calibration stays about a second of start-up.
_CALIBRATION_SHAPES = ((1, 8), (1, 32), (2, 16), (4, 32), (8, 32), (16, 48))


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run blocking work without holding up interpreter exit if it never returns."""
    future: Future[T] = Future()

    def target() -> None:
        # Once running, the future cannot be cancelled (a shutdown during the load only
        # cancels the awaiting side), so setting the result below never raises.
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


def _warmup_shapes(classifier: HFClassifier, settings: Settings) -> list[tuple[int, int]]:
    """The calibration shapes, cut to this deployment's row, width and token limits."""
    shapes = []
    for rows, width in _CALIBRATION_SHAPES:
        rows = min(rows, settings.max_batch_size)
        width = min(width, classifier.max_length)
        if rows * width <= settings.max_batch_tokens or rows == 1:
            shapes.append((rows, width))
    return shapes


def warm_up(classifier: HFClassifier, settings: Settings) -> None:
    """One pass per shape: enough to warm the kernels when no cost model is needed."""
    for rows, width in _warmup_shapes(classifier, settings):
        classifier.timed_forward(rows, width)
    logger.info("warmed up; padding-free batches need no batching cost model")


def warm_up_and_calibrate(classifier: HFClassifier, settings: Settings) -> CostModel:
    """The planner's cost model, fitted only when the planner uses it (padded forward)."""
    if classifier.padding_free:
        warm_up(classifier, settings)
        return CostModel()
    return calibrate(classifier, settings)


def calibrate(classifier: HFClassifier, settings: Settings) -> CostModel:
    """Warm the kernels up, then fit the planner's cost model to measured forward passes.

    Each shape is timed on every inference worker at once, as the passes run when serving:
    concurrent passes share the GIL, caches and memory bandwidth, and the per-pass cost
    measured alone understates what a pass costs under load.
    """
    workers = max(1, classifier.workers)
    samples: list[tuple[int, int, float]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="calibrate") as pool:
        for rows, width in _warmup_shapes(classifier, settings):

            def timed(_: int, rows: int = rows, width: int = width) -> float:
                classifier.timed_forward(rows, width)  # warm-up for this shape
                # The fastest of three: interference from other processes only adds time.
                return min(classifier.timed_forward(rows, width) for _ in range(3))

            times = sorted(pool.map(timed, range(workers)))
            samples.append((rows, width, times[len(times) // 2]))
    cost = CostModel.fit(samples)
    logger.info(
        "batching cost model (%d concurrent workers): %.2f ms per pass + %.4f ms per padded token",
        workers,
        cost.per_batch_s * 1000,
        cost.per_token_s * 1000,
    )
    return cost


def self_test(classifier: HFClassifier, path: Path) -> None:
    """Known answers must come out right, or the service must not report ready."""
    cases = json.loads(path.read_text())
    texts = [str(case["text"]) for case in cases]
    expected = [str(case["label"]) for case in cases]
    encoded = classifier.tokenize(texts, truncate=True)
    width = max(len(e.ids) for e in encoded)
    scores = classifier.forward([e.ids for e in encoded], width)
    got = [classifier.labels[int(row.argmax())] for row in scores]
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


# Requests allocate and free many small containers. With CPython's gen0 threshold of 700 a
# collection ran every few requests and promoted the objects of requests still in flight,
# which then fed the slow older generations; 20,000 lets almost all of them die by refcount
# first (GC time under overload 2.2 s -> 0.04-0.08 s in 16 s, BENCHMARKS.md).
GC_GEN0_THRESHOLD = 20_000


def settle_heap() -> None:
    """Put the loaded model's Python objects out of the cyclic collector's reach.

    torch and transformers leave ~400,000 container objects behind. Every full collection
    walked them all: a 250-300 ms pause with the GIL held, which stalls the event loop and
    the inference threads between passes, every ~20 s at concurrency 32 and every few seconds
    under overload. Frozen, they are never scanned again (a full collection: ~1 ms)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, older, oldest)


def prepare(settings: Settings, loader: ClassifierLoader) -> tuple[HFClassifier, CostModel]:
    """Everything slow, in one blocking call (run off the event loop)."""
    start = time.perf_counter()
    classifier = loader(settings)
    if settings.max_batch_tokens < classifier.max_length:
        raise ModelLoadError(
            f"MAX_BATCH_TOKENS={settings.max_batch_tokens} is below the model's token limit "
            f"{classifier.max_length}; one long text could never be served"
        )
    loaded = time.perf_counter()
    cost = warm_up_and_calibrate(classifier, settings) if settings.warmup else CostModel()
    test = selftest_file(settings)
    if test is not None:
        self_test(classifier, test)
    settle_heap()
    logger.info(
        "model %s ready on %s/%s: loaded in %.1f s, warmed up in %.1f s",
        classifier.info.name,
        classifier.info.device,
        classifier.info.dtype,
        loaded - start,
        time.perf_counter() - loaded,
    )
    return classifier, cost


def build_service(
    classifier: HFClassifier, cost: CostModel, settings: Settings, metrics: Metrics
) -> ClassificationService:
    limits = BatchLimits(
        max_rows=settings.max_batch_size,
        max_tokens=settings.max_batch_tokens,
        max_wait_s=settings.max_batch_wait_ms / 1000,
        max_queue=settings.max_queue_size,
        pad_multiple=8 if classifier.device.type == "cuda" else 1,
        max_width=classifier.max_length,
        workers=classifier.workers,
        padding_free=classifier.padding_free,
    )
    # An inference thread needs the GIL for a moment between passes (hand back results, take
    # the next batch); with CPython's 5 ms switch interval it sat idle that long behind a busy
    # event loop: 0.2 ms halved the idle CPU at concurrency 32 (BENCHMARKS.md).
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    batcher = Batcher(classifier, limits, metrics, cost)
    batcher.start()
    info = classifier.info
    metrics.model_info.labels(info.name, info.device, info.dtype, info.revision or "").set(1)
    return ClassificationService(classifier, batcher, metrics, settings)

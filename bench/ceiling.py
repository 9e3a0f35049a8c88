"""The model-only ceiling: the app's own engine, built in this process with the settings the
server reports in GET /model, running its forward on the corpus with no HTTP and no queue.

Same work as the server: the same forward path, weights, workers and threads; batches of
32 texts sorted by token length (the best a batcher can do), and lone texts (latency).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from bench.stats import percentile

Rows = list[list[int]]


class Engine(Protocol):
    """What the ceiling uses of the app's classifier (app.engine.loader.load_classifier)."""

    workers: int
    threads: int
    info: Any

    def forward(self, rows: Sequence[Sequence[int]], width: int) -> Any: ...

    def tokenize(self, texts: Sequence[str], truncate: bool) -> list[Any]: ...


def settings_from_model_info(
    info: dict[str, Any], model_path: Path, known: Collection[str]
) -> dict[str, Any]:
    """Settings fields that reproduce the served engine; `known` = the Settings fields."""
    batching = info.get("batching", {})
    values = {
        "model_path": model_path,
        "device": info.get("device"),
        "dtype": info.get("dtype"),
        "quantize": info.get("quantize"),
        "forward": info.get("forward"),
        "max_length": info.get("max_length"),
        "inference_workers": batching.get("inference_workers"),
        "torch_threads": batching.get("torch_threads"),
        "warmup": False,
    }
    return {k: v for k, v in values.items() if k in known and v is not None}


def sorted_batches(rows: Sequence[list[int]], size: int) -> list[Rows]:
    """Batches of `size` rows after sorting by length; interleaved long and short, so a
    time-bounded partial pass over them is not all short batches."""
    ordered = sorted(rows, key=len)
    batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    half = (len(batches) + 1) // 2
    mixed = itertools.zip_longest(batches[:half], reversed(batches[half:]))
    return [b for pair in mixed for b in pair if b is not None]


class Ceiling:
    """Load once, measure as often as the run repeats."""

    def __init__(self, info: dict[str, Any], model_path: Path, texts: Sequence[str]) -> None:
        from app.config import Settings
        from app.engine.loader import load_classifier

        fields = settings_from_model_info(info, model_path, Settings.model_fields)
        self.engine = cast(Engine, load_classifier(Settings(**fields)))
        engine = self.engine.info
        self.describe = {k: str(v) for k, v in fields.items()} | {
            "engine_forward": str(engine.forward),
            "workers": int(self.engine.workers),
            "threads": int(self.engine.threads),
        }
        rows = [list(e.ids) for e in self.engine.tokenize(list(texts), truncate=True)]
        self.batches = sorted_batches(rows, 32)
        self.singles = [[row] for row in rows]

    def _passes(
        self, batches: Sequence[Rows], workers: int, seconds: float
    ) -> tuple[int, float, list[float]]:
        """`workers` threads take the next batch in turn until `seconds` are over:
        (texts done, wall seconds, every pass's seconds)."""
        cursor, lock = itertools.count(), threading.Lock()
        durations: list[float] = []
        done = [0]
        start = time.perf_counter()

        def work() -> None:
            while time.perf_counter() - start < seconds:
                with lock:
                    batch = batches[next(cursor) % len(batches)]
                t0 = time.perf_counter()
                self.engine.forward(batch, max(len(r) for r in batch))
                with lock:
                    durations.append(time.perf_counter() - t0)
                    done[0] += len(batch)

        threads = [threading.Thread(target=work) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return done[0], time.perf_counter() - start, durations

    def measure(self, seconds: float, warmup_s: float = 1.0) -> dict[str, Any]:
        workers = int(self.engine.workers)
        self._passes(self.batches, workers, warmup_s)
        texts, wall, batch_s = self._passes(self.batches, workers, seconds)
        self._passes(self.singles, 1, warmup_s / 2)
        singles, single_wall, single_s = self._passes(self.singles, 1, seconds / 2)
        return {
            "sorted_batch32_sentences_per_s": round(texts / wall, 2),
            "batch32_pass_p50_ms": round(percentile(batch_s, 50) * 1000, 2),
            "batch1_p50_ms": round(percentile(single_s, 50) * 1000, 2),
            "batch1_sentences_per_s": round(singles / single_wall, 2),
        }

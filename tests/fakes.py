"""A fake classifier that speaks the engine protocol: deterministic, observable, breakable."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from app.config import Settings
from app.engine.base import (
    DeviceOutOfMemory,
    Encoded,
    FloatArray,
    ModelInfo,
    activate,
    activation_for,
)

_CLS, _SEP = 101, 102


class FakeClassifier:
    """Scores are a function of the token ids alone, so the same text always gets the same
    answer whatever batch it ran in. Every pass is recorded; a pass can be slowed, blocked,
    made to fail, or made to run out of memory above a batch size."""

    def __init__(
        self,
        labels: Sequence[str] = ("negative", "neutral", "positive"),
        *,
        problem_type: str | None = None,
        workers: int = 1,
        padding_free: bool = True,
        max_length: int = 64,
        pass_seconds: float = 0.0,
    ) -> None:
        self.workers = workers
        self.threads = 1
        self.padding_free = padding_free
        self.pad_multiple = 1
        self.filler_id = 1
        self.pass_seconds = pass_seconds
        self.batches: list[tuple[int, int]] = []  # (rows, width) of every pass
        self.error: BaseException | None = None  # raised by every pass while set
        self.oom_above: int | None = None  # passes of more rows run out of memory
        self.released = 0
        self.gate: threading.Event | None = None  # passes wait for it while set
        self.on_pass: Callable[[Sequence[Sequence[int]]], None] | None = None
        activation = activation_for(problem_type, len(labels))
        self.info = ModelInfo(
            name="fake",
            path="fake",
            folder_sha256="0" * 64,
            revision=None,
            architecture="FakeClassifier",
            labels=list(labels),
            problem_type=problem_type or "single_label_classification",
            activation=activation,
            max_length=max_length,
            device="cpu",
            dtype="float32",
            quantize="none",
            parameters=0,
            forward="padded",
            forward_reason="a fake",
        )

    def factory(self, settings: Settings) -> FakeClassifier:
        """For `create_app(factory=...)`: this instance, whatever the settings."""
        return self

    def tokenize(self, texts: Sequence[str], truncate: bool) -> list[Encoded]:
        encoded = []
        for text in texts:
            ids = [_CLS, *(1000 + sum(map(ord, word)) % 20_000 for word in text.split()), _SEP]
            cut = truncate and len(ids) > self.info.max_length
            kept = [*ids[: self.info.max_length - 1], _SEP] if cut else ids
            encoded.append(Encoded(ids=kept, num_tokens=len(ids), truncated=cut))
        return encoded

    def forward(self, rows: Sequence[Sequence[int]], width: int) -> FloatArray:
        self.batches.append((len(rows), width))
        if self.on_pass is not None:
            self.on_pass(rows)
        if self.gate is not None:
            self.gate.wait()
        if self.pass_seconds:
            time.sleep(self.pass_seconds)
        if self.error is not None:
            raise self.error
        if self.oom_above is not None and len(rows) > self.oom_above:
            raise DeviceOutOfMemory(f"fake: no memory for {len(rows)} rows")
        return activate(np.stack([self.logits(row) for row in rows]), self.info.activation)

    def logits(self, row: Sequence[int]) -> FloatArray:
        count = len(self.info.labels)
        values = [((sum(row) * (k + 3) + len(row) * (k + 1)) % 97) / 20.0 for k in range(count)]
        return np.asarray(values, dtype=np.float32)

    def release_cached_memory(self) -> None:
        self.released += 1


def fake_factory(fake: FakeClassifier) -> Callable[[Settings], Any]:
    return fake.factory


class LeakingFakeClassifier(FakeClassifier):
    """Keeps `leak_kb` KiB of written (so resident) memory per text it scores, forever: the
    negative control that the soak scenario's memory check must catch."""

    def __init__(self, leak_kb: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.leak_bytes = leak_kb * 1024
        self.kept: list[bytes] = []

    def forward(self, rows: Sequence[Sequence[int]], width: int) -> FloatArray:
        self.kept.extend(b"\x01" * self.leak_bytes for _ in rows)
        return super().forward(rows, width)

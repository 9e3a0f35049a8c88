"""Forward passes as the batcher runs them: width, out-of-memory splitting, token rate."""

from __future__ import annotations

import math
from collections.abc import Sequence

from app.core.planning import padded_width
from app.engine.base import Classifier, DeviceOutOfMemory, FloatArray


def batch_width(model: Classifier, rows: Sequence[Sequence[int]]) -> int:
    """The longest row, rounded up to the model's multiple but never past its limit."""
    longest = max(len(row) for row in rows)
    return max(longest, min(padded_width(longest, model.pad_multiple), model.info.max_length))


def forward_splitting(
    model: Classifier, rows: Sequence[Sequence[int]]
) -> tuple[list[FloatArray | None], bool]:
    """Scores per row and whether memory ran out. On out-of-memory the batch is retried in
    halves, each padded to its own longest row; a row that fails alone gets None."""
    try:
        result: list[FloatArray | None] | None = list(model.forward(rows, batch_width(model, rows)))
    except DeviceOutOfMemory:
        result = None
    if result is None:
        model.release_cached_memory()
        if len(rows) == 1:
            return [None], True
        half = len(rows) // 2
        left, _ = forward_splitting(model, rows[:half])
        right, _ = forward_splitting(model, rows[half:])
        return left + right, True
    if len(result) != len(rows):  # fail the batch now, not at each request's deadline
        raise RuntimeError(f"the model returned {len(result)} rows for {len(rows)} texts")
    return result, False


class TokenRate:
    """Real tokens per second over all workers, and tokens per text, both smoothed. Texts
    differ a hundredfold in length, so tokens, not texts, measure the queue's work."""

    SMOOTHING = 0.2

    def __init__(self) -> None:
        self.tokens_per_second = 0.0
        self.tokens_per_text = 0.0

    def observe(self, tokens: int, texts: int, seconds: float, workers: int) -> None:
        if seconds <= 0 or texts <= 0:
            return
        self.tokens_per_second = self._smooth(self.tokens_per_second, tokens / seconds * workers)
        self.tokens_per_text = self._smooth(self.tokens_per_text, tokens / texts)

    def seconds_for(self, queued: Sequence[int], extra_texts: int = 0) -> int:
        """Seconds until `queued` token counts plus `extra_texts` of the mean length should
        have run, 1 to 60 (one text per second before anything was measured)."""
        if self.tokens_per_second <= 0:
            return max(1, min(60, len(queued) + extra_texts))
        work = sum(queued) + extra_texts * self.tokens_per_text
        return max(1, min(60, math.ceil(work / self.tokens_per_second)))

    def _smooth(self, old: float, new: float) -> float:
        return new if old == 0 else (1 - self.SMOOTHING) * old + self.SMOOTHING * new

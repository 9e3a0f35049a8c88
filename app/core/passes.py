"""One forward pass as the batcher runs it: padded width, out-of-memory splitting, checks."""

from __future__ import annotations

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

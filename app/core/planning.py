"""Batch formation: which waiting texts make the next forward pass.

On a CPU a forward pass costs roughly a fixed overhead plus a price per padded token, so one
batch of texts of very different lengths pays for padding, while many tiny batches pay the
overhead again and again. Sorting by length and cutting the sorted list where a dynamic
program says it is cheapest gets both right, within the row and token limits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

_MIN_PASS_SHARE = 0.25


@dataclass(frozen=True)
class Work:
    """Texts as the time estimates count them: how many, their tokens, and the sum of each
    text's tokens squared (attention's share of a text grows with its length)."""

    texts: int = 0
    tokens: int = 0
    squares: int = 0

    @classmethod
    def of(cls, lengths: Iterable[int]) -> Work:
        counted = list(lengths)
        return cls(len(counted), sum(counted), sum(n * n for n in counted))

    def __add__(self, other: Work) -> Work:
        return Work(
            self.texts + other.texts, self.tokens + other.tokens, self.squares + other.squares
        )

    def __sub__(self, other: Work) -> Work:
        return Work(
            self.texts - other.texts, self.tokens - other.tokens, self.squares - other.squares
        )


@dataclass(frozen=True)
class CostModel:
    """Estimated seconds of a forward pass: `per_batch + per_token * rows * width` for the
    planner; admission adds `per_token_squared` per token and token of its text's length."""

    per_batch_s: float = 0.008
    per_token_s: float = 0.00015
    per_token_squared_s: float = 0.0

    def cost(self, rows: int, width: int) -> float:
        return self.per_batch_s + self.per_token_s * rows * width

    def with_long_text(self, length: int, seconds: float) -> CostModel:
        """This model plus attention's price, from one pass of a text `length` tokens long:
        what it took beyond the linear model, per token squared."""
        extra = max(0.0, seconds - self.cost(1, length))
        return replace(self, per_token_squared_s=extra / (length * length))

    def seconds_for(self, work: Work, *, workers: int, max_rows: int, max_tokens: int) -> float:
        """Seconds `workers` idle inference threads need for `work`: its passes, within the
        row and token limits, shared between the threads (one text runs on one thread)."""
        if work.texts <= 0:
            return 0.0
        passes = max(-(-work.texts // max_rows), -(-work.tokens // max_tokens))
        lanes = max(1, min(workers, work.texts))
        compute = self.per_token_s * work.tokens + self.per_token_squared_s * work.squares
        return -(-passes // lanes) * self.per_batch_s + compute / lanes

    @classmethod
    def fit(cls, samples: Sequence[tuple[int, int, float]]) -> CostModel:
        """Least squares over (rows, width, seconds); falls back to defaults if degenerate.

        Relative error, not absolute: otherwise the few large passes dominate and leave the
        per-pass cost, which decides between one batch and two, to noise. That cost is kept at
        no less than a quarter of the smallest sample's time: a busy machine can put the
        intercept near zero, and a planner that believes passes are free runs one text per
        pass. Overestimating it only costs some padding.
        """
        if len(samples) < 2:
            return cls()
        tokens = np.array([rows * width for rows, width, _ in samples], dtype=np.float64)
        seconds = np.array([s for _, _, s in samples], dtype=np.float64)
        if not np.all(seconds > 0):
            return cls()
        design = np.stack([np.ones_like(tokens), tokens], axis=1) / seconds[:, None]
        (per_batch, per_token), *_ = np.linalg.lstsq(design, np.ones_like(seconds), rcond=None)
        if not (per_token > 0 and math.isfinite(per_batch)):
            return cls()
        floor = _MIN_PASS_SHARE * float(seconds[np.argmin(tokens)])
        return cls(per_batch_s=max(float(per_batch), floor), per_token_s=float(per_token))


def padded_width(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def plan_batches(
    lengths: Sequence[int],
    *,
    max_rows: int,
    max_tokens: int,
    cost: CostModel,
    pad_multiple: int = 1,
) -> list[list[int]]:
    """Partition the indices of `lengths` into batches with the least estimated total time.

    Each batch is a run of the length-sorted order; a batch has at most `max_rows` rows and
    at most `max_tokens` padded tokens, except that a single row is always allowed.
    Batches come back shortest first, indices in ascending length within a batch.
    """
    count = len(lengths)
    order = sorted(range(count), key=lambda i: lengths[i])
    widths = [padded_width(max(lengths[i], 1), pad_multiple) for i in order]
    best = [0.0] + [math.inf] * count
    start_of = [0] * (count + 1)
    for end in range(1, count + 1):
        width = widths[end - 1]
        for start in range(end - 1, max(end - max_rows, 0) - 1, -1):
            rows = end - start
            if rows > 1 and rows * width > max_tokens:
                break
            total = best[start] + cost.cost(rows, width)
            if total < best[end]:
                best[end] = total
                start_of[end] = start
    batches: list[list[int]] = []
    end = count
    while end > 0:
        start = start_of[end]
        batches.append(order[start:end])
        end = start
    batches.reverse()
    return batches


def oldest_first(lengths: Sequence[int], *, max_rows: int, max_tokens: int) -> int:
    """How many of the oldest texts make the next padding-free batch: without padding cost
    the fullest batch is the cheapest, up to the row limit and `rows x longest <= max_tokens`
    (which bounds the attention buffers; a single text always fits)."""
    longest = 0
    for count, length in enumerate(lengths):
        width = max(longest, length)
        if count and (count >= max_rows or (count + 1) * width > max_tokens):
            return count
        longest = width
    return len(lengths)

"""What the core needs from a model: the `Classifier` protocol and the types it speaks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

Activation = Literal["softmax", "sigmoid", "none"]
FloatArray = npt.NDArray[np.float32]


class ModelLoadError(Exception):
    """The model folder cannot be served; the message says what to fix."""


class DeviceOutOfMemory(Exception):
    """The device had no memory for this batch; a smaller one may still fit."""


@dataclass(frozen=True)
class Encoded:
    """One tokenized text, already cut to the model's limit when truncation was asked for."""

    ids: list[int]
    num_tokens: int
    truncated: bool


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str  # the model folder's name, not where it lies on the host
    folder_sha256: str
    revision: str | None
    architecture: str
    labels: list[str]
    problem_type: str
    activation: Activation
    max_length: int
    device: str
    dtype: str
    quantize: str
    parameters: int
    forward: str
    forward_reason: str


class Classifier(Protocol):
    """A loaded model on one device. `forward` may run on `workers` threads at once."""

    info: ModelInfo
    workers: int
    threads: int
    # Pass cost depends on real tokens only: the batcher need not group texts by length.
    padding_free: bool
    # Batch widths are rounded up to this (tensor cores like multiples of 8).
    pad_multiple: int
    # Any token id the model accepts, for synthetic warm-up batches.
    filler_id: int

    def tokenize(self, texts: Sequence[str], truncate: bool) -> list[Encoded]: ...

    def forward(self, rows: Sequence[Sequence[int]], width: int) -> FloatArray:
        """Scores after the model's activation; raises DeviceOutOfMemory."""
        ...

    def release_cached_memory(self) -> None: ...


def activation_for(problem_type: str | None, num_labels: int) -> Activation:
    """Same rule as the transformers text-classification pipeline."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def activate(logits: FloatArray, kind: Activation) -> FloatArray:
    logits = logits.astype(np.float32, copy=False)
    if kind == "softmax":
        exp: FloatArray = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs: FloatArray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
        return probs
    if kind == "sigmoid":
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return logits

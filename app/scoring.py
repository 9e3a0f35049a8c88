"""Turn logits into scores the way the model was trained, and scores into a decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Activation = Literal["softmax", "sigmoid", "none"]
FloatArray = npt.NDArray[np.float32]


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


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class Decision:
    label: str
    confidence: float
    scores: list[LabelScore]
    predicted_labels: list[str]


def decide(
    scores: FloatArray,
    labels: list[str],
    kind: Activation,
    threshold: float,
    top_k: int | None,
) -> Decision:
    """Top label, the label set (threshold for sigmoid models) and the scores, best first."""
    order = np.argsort(-scores, kind="stable")
    ranked = [LabelScore(labels[i], float(scores[i])) for i in order]
    best = ranked[0]
    if kind == "sigmoid":
        chosen = [item.label for item in ranked if item.score >= threshold]
    else:
        chosen = [best.label]
    return Decision(
        label=best.label,
        confidence=best.score,
        scores=ranked[:top_k] if top_k else ranked,
        predicted_labels=chosen,
    )

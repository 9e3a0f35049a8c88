"""Scores into a decision: ranked labels, `top_k`, and the label set of multi-label models."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from app.engine.base import Activation, Encoded, FloatArray


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="probability (softmax or sigmoid, as the model was trained)")


class Prediction(BaseModel):
    """One text's answer, from scoring to the response body."""

    label: str = Field(description="the highest-scoring label")
    confidence: float = Field(description="score of `label`")
    scores: list[LabelScore] = Field(description="label scores, best first (top_k of them)")
    predicted_labels: list[str] = Field(
        description="the decision: the top label, or for a multi-label model every label "
        "whose score reaches the threshold"
    )
    num_tokens: int = Field(description="tokens of the text before any truncation")
    truncated: bool = Field(description="whether the text was cut to the model's limit")


def decide(
    scores: FloatArray,
    encoded: Encoded,
    labels: list[str],
    kind: Activation,
    threshold: float,
    top_k: int | None,
) -> Prediction:
    """Top label, the label set (threshold for sigmoid models) and the scores, best first."""
    order = np.argsort(-scores, kind="stable")
    ranked = [LabelScore(label=labels[i], score=float(scores[i])) for i in order]
    best = ranked[0]
    if kind == "sigmoid":
        chosen = [item.label for item in ranked if item.score >= threshold]
    else:
        chosen = [best.label]
    return Prediction(
        label=best.label,
        confidence=best.score,
        scores=ranked[:top_k] if top_k else ranked,
        predicted_labels=chosen,
        num_tokens=encoded.num_tokens,
        truncated=encoded.truncated,
    )

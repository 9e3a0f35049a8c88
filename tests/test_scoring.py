from __future__ import annotations

import numpy as np
import pytest

from app.core.scoring import LabelScore, Prediction, decide
from app.engine.base import Encoded, activate, activation_for

SHORT = Encoded(ids=[101, 7, 102], num_tokens=3, truncated=False)


@pytest.mark.parametrize(
    ("problem_type", "num_labels", "expected"),
    [
        ("single_label_classification", 3, "softmax"),
        (None, 3, "softmax"),
        ("multi_label_classification", 4, "sigmoid"),
        (None, 1, "sigmoid"),
        ("regression", 1, "none"),
    ],
)
def test_activation_follows_the_model_config(problem_type, num_labels, expected) -> None:
    assert activation_for(problem_type, num_labels) == expected


def test_softmax_is_stable_for_extreme_logits() -> None:
    logits = np.array([[1000.0, -1000.0, 999.0]], dtype=np.float32)
    probs = activate(logits, "softmax")
    assert np.isfinite(probs).all()
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)
    assert probs[0, 0] > probs[0, 2] > probs[0, 1]


def test_sigmoid_scores_are_independent() -> None:
    probs = activate(np.array([[0.0, 2.0, -2.0]], dtype=np.float32), "sigmoid")
    assert probs[0].tolist() == pytest.approx([0.5, 0.880797, 0.119203], abs=1e-6)


def test_decide_ranks_scores_and_applies_top_k() -> None:
    scores = np.array([0.1, 0.7, 0.2], dtype=np.float32)
    decision = decide(scores, SHORT, ["a", "b", "c"], "softmax", 0.5, top_k=2)
    assert isinstance(decision, Prediction)
    assert decision.label == "b"
    assert decision.confidence == pytest.approx(0.7)
    assert [s.label for s in decision.scores] == ["b", "c"]
    assert decision.predicted_labels == ["b"]


def test_decide_multi_label_uses_the_threshold() -> None:
    scores = np.array([0.9, 0.2, 0.6], dtype=np.float32)
    decision = decide(scores, SHORT, ["a", "b", "c"], "sigmoid", 0.5, top_k=None)
    assert decision.predicted_labels == ["a", "c"]
    assert len(decision.scores) == 3
    low = np.array([0.1, 0.2], dtype=np.float32)
    nothing = decide(low, SHORT, ["a", "b"], "sigmoid", 0.5, None)
    assert nothing.predicted_labels == []
    assert nothing.label == "b"


def test_decide_reports_the_token_count_and_truncation() -> None:
    cut = Encoded(ids=[101, 7, 102], num_tokens=40, truncated=True)
    decision = decide(np.array([0.25, 0.75], dtype=np.float32), cut, ["a", "b"], "softmax", 0.5, 1)
    assert decision == Prediction(
        label="b",
        confidence=0.75,
        scores=[LabelScore(label="b", score=0.75)],
        predicted_labels=["b"],
        num_tokens=40,
        truncated=True,
    )


def test_ties_keep_the_label_order_and_the_threshold_is_inclusive() -> None:
    scores = np.array([0.5, 0.5, 0.25], dtype=np.float32)
    decision = decide(scores, SHORT, ["a", "b", "c"], "sigmoid", 0.5, None)
    assert [s.label for s in decision.scores] == ["a", "b", "c"]
    assert decision.label == "a" and decision.predicted_labels == ["a", "b"]


def test_regression_scores_pass_through() -> None:
    logits = np.array([[-3.5], [2.0]], dtype=np.float32)
    assert activate(logits, "none").tolist() == [[-3.5], [2.0]]

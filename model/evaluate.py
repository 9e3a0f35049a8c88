"""Held-out evaluation: predictions from a save_pretrained folder and the metrics report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def compute_report(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``confusion_matrix[i][j]`` counts examples of true class i predicted as class j.
    """
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    k = len(label_names)
    matrix = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[t][p] += 1
    n = len(y_true)
    per_class: dict[str, dict[str, float | int]] = {}
    for c, name in enumerate(label_names):
        tp = matrix[c][c]
        predicted = sum(matrix[r][c] for r in range(k))
        support = sum(matrix[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": round(precision, 6),
            "recall": round(recall, 6),
            "f1": round(f1, 6),
            "support": support,
        }
    correct = sum(matrix[c][c] for c in range(k))
    macro_f1 = sum(float(v["f1"]) for v in per_class.values()) / k if k else 0.0
    return {
        "n_examples": n,
        "accuracy": round(correct / n, 6) if n else 0.0,
        "macro_f1": round(macro_f1, 6),
        "labels": list(label_names),
        "per_class": per_class,
        "confusion_matrix": matrix,
    }


def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
) -> list[int]:
    """Argmax class ids, in input order."""
    scores = logits(model, tokenizer, texts, batch_size, max_length)
    return [int(p) for p in scores.argmax(dim=-1).tolist()]


def logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
) -> torch.Tensor:
    """One row of class logits per text, batched by token count (sorted), in input order."""
    import torch

    model.train(False)
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(texts), int(model.config.num_labels or 0))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            out[idx] = model(**enc).logits.float()
    return out


def label_ids(labels: Sequence[int | str], label2id: dict[str, int]) -> list[int]:
    return [label2id[x] if isinstance(x, str) else int(x) for x in labels]


def evaluate_loaded(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[int | str],
) -> dict[str, Any]:
    id2label = {int(k): v for k, v in (model.config.id2label or {}).items()}
    names = [id2label[i] for i in range(len(id2label))]
    y_true = label_ids(labels, {name: i for i, name in enumerate(names)})
    start = time.perf_counter()
    y_pred = predict(model, tokenizer, texts)
    report = compute_report(y_true, y_pred, names)
    report["eval_seconds"] = round(time.perf_counter() - start, 3)
    return report


def evaluate(
    model_dir: str | Path, texts: Sequence[str], labels: Sequence[int | str]
) -> dict[str, Any]:
    """Evaluate a save_pretrained classifier folder; labels are class ids or label names."""
    model, tokenizer = load_folder(model_dir)
    return evaluate_loaded(model, tokenizer, texts, labels)


def load_folder(model_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The classifier and tokenizer of a save_pretrained folder, as a consumer loads them."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    return model, tokenizer

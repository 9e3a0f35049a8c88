"""The padding-free forward (app/engine/unpadded.py) against the model's own padded forward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from app.engine.base import FloatArray
from app.engine.hf import HFClassifier
from app.engine.unpadded import UnpaddedForward, supports
from tests.conftest import one_thread_settings
from tests.sharp_model import random_rows

# dtype/quantize settings, and how close to the padded forward the scores must be: float32
# to float rounding; bfloat16 to its rounding; int8 quantizes activations per batch with one
# scale over the whole tensor, and the padded batch has pad tokens in it.
VARIANTS = {
    "float32": ({}, 1e-5),
    "bfloat16": ({"dtype": "bfloat16"}, 1e-2),
    "int8": ({"quantize": "int8"}, 3e-2),
}


def _same_length(count: int, length: int) -> list[list[int]]:
    rows = [row[:length] for row in random_rows(8 * count, seed=5) if len(row) >= length][:count]
    assert len(rows) == count
    return rows


@pytest.fixture(params=["scripted", "eager"])
def compiled(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether TorchScript compiles the forward; `eager` makes it fail, as on a model it
    cannot compile."""
    if request.param == "eager":

        def refuse(module: Any) -> Any:
            raise RuntimeError("TorchScript cannot compile this")

        monkeypatch.setattr(torch.jit, "script", refuse)
    return bool(request.param == "scripted")


def _both(classifier: HFClassifier) -> tuple[UnpaddedForward, Any]:
    """The padding-free forward, and a function giving (padded, padding-free) scores."""
    forward = UnpaddedForward(classifier.model)

    def run(rows: list[list[int]]) -> tuple[FloatArray, FloatArray]:
        width = max(map(len, rows))
        classifier.use_forward("padded", None)
        padded = classifier.forward(rows, width)
        classifier.use_forward("unpadded", forward)
        assert classifier.padding_free
        return padded, classifier.forward(rows, width)

    return forward, run


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fixture", ["single", "multi", "logit"])
def test_scores_equal_the_padded_forward(
    sharp_models: dict[str, Path], fixture: str, variant: str, compiled: bool
) -> None:
    overrides, tolerance = VARIANTS[variant]
    classifier = HFClassifier(one_thread_settings(sharp_models[fixture], **overrides))
    forward, run = _both(classifier)
    assert forward.scripted == compiled and forward.onednn_layers == 0
    for count in (1, 2, 7, 16):
        padded, got = run(random_rows(count, seed=count))
        np.testing.assert_allclose(got, padded, atol=tolerance)
    # A text's scores do not depend on what it is batched with.
    rows = random_rows(7, seed=7)
    alone = np.stack([run([row])[1][0] for row in rows])
    np.testing.assert_allclose(run(rows)[1], alone, atol=tolerance)
    # Texts of one length take the path without scatter or mask.
    padded, got = run(_same_length(6, 9))
    np.testing.assert_allclose(got, padded, atol=tolerance)
    if fixture == "tiny_model":  # the texts' scores differ far more than float rounding
        assert np.ptp(padded, axis=0).max() > 0.1


@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_the_scripted_forward_equals_the_eager_one(
    sharp_models: dict[str, Path], variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides, _ = VARIANTS[variant]
    classifier = HFClassifier(one_thread_settings(sharp_models["single"], **overrides))
    scripted = UnpaddedForward(classifier.model)
    monkeypatch.setattr(torch.jit, "script", _refuse)
    eager = UnpaddedForward(classifier.model)
    assert scripted.scripted and not eager.scripted
    rows_sets = (
        random_rows(7, seed=1),
        _same_length(6, 9),
        random_rows(1, seed=2),
        random_rows(40, seed=3),
    )
    with torch.inference_mode():
        for rows in rows_sets:
            torch.testing.assert_close(scripted(rows), eager(rows), rtol=0, atol=1e-6)


def _refuse(module: Any) -> Any:
    raise RuntimeError("TorchScript cannot compile this")


def test_float_layers_project_query_key_value_in_one_pass(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.jit, "script", _refuse)  # the eager module, to look in
    float_layers = UnpaddedForward(HFClassifier(one_thread_settings(tiny_model)).model)._run.layers
    assert len(float_layers) == 2
    assert all(
        type(layer.qkv) is nn.Linear and layer.qkv.out_features == 96 for layer in float_layers
    )
    # int8 layers keep their own kernels (and scales): no fused float copy of their weights.
    quantized = HFClassifier(one_thread_settings(tiny_model, quantize="int8")).model
    int8_layers = UnpaddedForward(quantized)._run.layers
    assert all(not isinstance(layer.qkv, nn.Linear) for layer in int8_layers)


def _bert(**overrides: Any) -> Any:
    options: dict[str, Any] = {
        "vocab_size": 50,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    } | overrides
    return BertForSequenceClassification(BertConfig(**options)).eval()


def test_only_the_bert_it_reproduces_is_supported() -> None:
    assert supports(_bert())
    assert not supports(_bert(position_embedding_type="relative_key"))
    assert not supports(_bert(hidden_act="gelu_new"))
    assert not supports(_bert(is_decoder=True))
    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    assert not supports(DistilBertForSequenceClassification(config))
    assert not supports(object())
    with pytest.raises(ValueError, match="not a BERT classifier"):
        UnpaddedForward(DistilBertForSequenceClassification(config))

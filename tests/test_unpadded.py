"""The padding-free forward (app/unpadded.py) against the model's own padded forward."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from app.batching import Batcher, BatchLimits, _Item
from app.classifier import HFClassifier
from app.metrics import Metrics
from app.planning import CostModel
from app.unpadded import supports
from tests.conftest import make_settings


def _rows(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    # Ids inside the tiny vocabulary; first and last are [CLS]/[SEP]-like specials.
    return [
        [2] + [rng.randrange(5, 60) for _ in range(rng.randrange(1, 40))] + [3]
        for _ in range(count)
    ]


@pytest.mark.parametrize(
    "fixture", ["tiny_model", "tiny_multilabel_model", "tiny_single_logit_model"]
)
def test_scores_equal_the_padded_forward(fixture: str, request: Any) -> None:
    path: Path = request.getfixturevalue(fixture)
    unpadded = HFClassifier(make_settings(path))
    padded = HFClassifier(make_settings(path, unpadded="off"))
    assert unpadded.padding_free and not padded.padding_free
    for count in (1, 2, 7, 16):
        rows = _rows(count, seed=count)
        width = max(map(len, rows))
        got = unpadded.forward(rows, width)
        want = padded.forward(rows, width)
        np.testing.assert_allclose(got, want, atol=1e-5)
        # A text's scores do not depend on what it is batched with.
        alone = np.stack([unpadded.forward([row], len(row))[0] for row in rows])
        np.testing.assert_allclose(got, alone, atol=1e-5)
    # Texts of one length take the path without scatter or mask.
    same = [row[:9] for row in _rows(40, seed=5) if len(row) >= 9][:6]
    assert len(same) == 6
    np.testing.assert_allclose(unpadded.forward(same, 9), padded.forward(same, 9), atol=1e-5)


def test_float_layers_project_query_key_value_in_one_pass(tiny_model: Path) -> None:
    unpadded = HFClassifier(make_settings(tiny_model))._unpadded
    assert unpadded is not None and len(unpadded.fused_qkv) == 2  # one per layer


def test_other_architectures_keep_the_padded_forward() -> None:
    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    assert not supports(DistilBertForSequenceClassification(config))
    assert not supports(object())


def test_int8_model_runs_padding_free_too(tiny_model: Path) -> None:
    quantized = HFClassifier(make_settings(tiny_model, quantize="int8"))
    reference = HFClassifier(make_settings(tiny_model, quantize="int8", unpadded="off"))
    assert quantized.padding_free
    # int8 Linear layers keep their own kernels: no fused float copy of their weights.
    assert quantized._unpadded is not None and not quantized._unpadded.fused_qkv
    rows = _rows(5, seed=1)
    width = max(map(len, rows))
    np.testing.assert_allclose(
        quantized.forward(rows, width), reference.forward(rows, width), atol=1e-4
    )


class _NoModel:
    def forward(self, rows: Any, width: int, alone: bool = False) -> Any:
        raise AssertionError("not called")

    def release_cached_memory(self) -> None:
        pass


def _batcher(max_rows: int, max_tokens: int) -> Batcher:
    limits = BatchLimits(max_rows, max_tokens, max_wait_s=0, max_queue=10, padding_free=True)
    return Batcher(_NoModel(), limits, Metrics(), CostModel())


def test_padding_free_batches_take_the_oldest_texts_up_to_the_limits() -> None:
    future: Any = None
    items = [_Item(ids=[1] * n, future=future) for n in (5, 40, 6, 7, 8)]
    # Lengths do not matter for the cost, so arrival order decides, up to 3 rows.
    assert _batcher(3, 1000)._plan(items, 3) == items[:3]
    assert _batcher(3, 1000)._plan(items, 2) == items[:2]  # a share for another thread
    # 3 rows x 40 tokens would pass 100: the token bound stops at 2 rows.
    assert _batcher(3, 100)._plan(items, 3) == items[:2]
    # A single text always fits, however long.
    huge = _Item(ids=[1] * 500, future=future)
    assert _batcher(3, 100)._plan([huge, *items], 3) == [huge]


@pytest.mark.parametrize("onednn_linear", ["auto", "off"])
def test_the_scripted_forward_equals_the_eager_one(tiny_model: Path, onednn_linear: str) -> None:
    scripted = HFClassifier(make_settings(tiny_model, onednn_linear=onednn_linear))
    eager = HFClassifier(make_settings(tiny_model, onednn_linear=onednn_linear, scripted="off"))
    assert scripted.scripted and not eager.scripted
    assert eager._unpadded is not None and eager._unpadded.scripted is None
    # Mixed lengths (scatter and mask), one length (neither), a lone text, and more rows
    # than one oneDNN chunk.
    same = [row[:9] for row in _rows(60, seed=5) if len(row) >= 9][:6]
    for rows in (_rows(7, seed=1), same, _rows(1, seed=2), _rows(40, seed=3)):
        width = max(map(len, rows))
        np.testing.assert_allclose(
            scripted.forward(rows, width), eager.forward(rows, width), atol=1e-5
        )


def test_the_scripted_int8_forward_equals_the_eager_one(tiny_model: Path) -> None:
    # Dynamic int8 layers script too: their query, key and value stay three layers.
    scripted = HFClassifier(make_settings(tiny_model, quantize="int8"))
    eager = HFClassifier(make_settings(tiny_model, quantize="int8", scripted="off"))
    assert scripted.scripted and not eager.scripted
    assert scripted._unpadded is not None and not scripted._unpadded.fused_qkv
    for rows in (_rows(7, seed=1), _rows(1, seed=2), _rows(40, seed=3)):
        width = max(map(len, rows))
        np.testing.assert_allclose(
            scripted.forward(rows, width), eager.forward(rows, width), atol=1e-5
        )

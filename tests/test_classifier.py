"""The real transformers code path on tiny random models: parity with the pipeline."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import pipeline

from app.classifier import HFClassifier, ModelLoadError, cgroup_cpu_quota, folder_digest
from tests.conftest import make_settings

TEXTS = [
    "I love this movie",
    "the flight was terrible and the food was awful",
    "not bad",
    "it was a very very very good day and the service was the best ever",
]


def _scores(classifier: HFClassifier, texts: list[str]) -> np.ndarray:
    encoded = classifier.tokenize(texts, truncate=True)
    width = max(len(e.ids) for e in encoded)
    return classifier.forward([e.ids for e in encoded], width)


@pytest.mark.parametrize(
    ("fixture", "activation"),
    [
        ("tiny_model", "softmax"),
        ("tiny_multilabel_model", "sigmoid"),
        ("tiny_single_logit_model", "sigmoid"),
    ],
)
def test_scores_match_the_transformers_pipeline(fixture, activation, request) -> None:
    path: Path = request.getfixturevalue(fixture)
    classifier = HFClassifier(make_settings(path))
    assert classifier.activation == activation
    ours = _scores(classifier, TEXTS)  # padded batch, as the batcher runs it
    reference = pipeline("text-classification", model=str(path), top_k=None, device="cpu")
    expected_rows: list[Any] = reference(TEXTS)
    for row, expected in zip(ours, expected_rows, strict=True):
        by_label = {item["label"]: item["score"] for item in expected}
        for index, label in enumerate(classifier.labels):
            assert row[index] == pytest.approx(by_label[label], abs=1e-5)


def test_labels_come_from_the_config(tiny_multilabel_model: Path) -> None:
    classifier = HFClassifier(make_settings(tiny_multilabel_model))
    assert classifier.labels == ["toxic", "insult", "threat", "spam"]
    assert classifier.info.problem_type == "multi_label_classification"


def test_truncation_reports_the_full_token_count(tiny_model: Path) -> None:
    classifier = HFClassifier(make_settings(tiny_model, max_length=16))
    long_text = " ".join(["good"] * 40)
    cut, short = classifier.tokenize([long_text, "good film"], truncate=True)
    assert cut.truncated and cut.num_tokens == 42 and len(cut.ids) == 16
    assert cut.ids[-1] == short.ids[-1]  # the closing special token survives the cut
    assert not short.truncated and short.num_tokens == 4
    kept = classifier.tokenize([long_text], truncate=False)[0]
    assert not kept.truncated and len(kept.ids) == 42


def test_max_length_cannot_exceed_the_model(tiny_model: Path) -> None:
    with pytest.raises(ModelLoadError, match="exceeds the model's limit 64"):
        HFClassifier(make_settings(tiny_model, max_length=65))


def test_broken_weights_give_one_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot load the model from MODEL_PATH="):
        HFClassifier(make_settings(broken))


def test_folder_digest_changes_with_content(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert folder_digest(copy) == folder_digest(tiny_model)
    config = json.loads((copy / "config.json").read_text())
    config["id2label"]["0"] = "renamed"
    (copy / "config.json").write_text(json.dumps(config))
    assert folder_digest(copy) != folder_digest(tiny_model)


def test_int8_quantization_keeps_the_labels_close(tiny_model: Path) -> None:
    exact = HFClassifier(make_settings(tiny_model))
    quantized = HFClassifier(make_settings(tiny_model, quantize="int8"))
    assert quantized.info.dtype == "float32+int8"
    assert np.abs(_scores(exact, TEXTS) - _scores(quantized, TEXTS)).max() < 0.05


def test_tokenize_is_safe_from_two_threads(tiny_model: Path) -> None:
    # The event loop and the tokenizer thread tokenize at once. Through the transformers
    # wrapper (which reconfigures truncation on its one backend per call) this gave 36 wrong
    # lengths in 6,000 calls: long texts left uncut, uncut texts cut.
    classifier = HFClassifier(make_settings(tiny_model, max_length=8))
    long_text = " ".join(["good"] * 30)
    wrong: list[str] = []

    def tokenize(truncate: bool, length: int) -> None:
        for _ in range(3000):
            encoded = classifier.tokenize([long_text] * 4, truncate=truncate)
            if any(len(e.ids) != length for e in encoded):
                wrong.append(f"truncate={truncate}")

    threads = [
        threading.Thread(target=tokenize, args=(True, 8)),
        threading.Thread(target=tokenize, args=(False, 32)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong, (len(wrong), wrong[:3])


def test_wrapper_fallback_gives_the_same_ids(tiny_model: Path) -> None:
    classifier = HFClassifier(make_settings(tiny_model, max_length=8))
    assert classifier._encoders is not None  # the fast path is the one in use
    texts = ["good film", " ".join(["bad"] * 20), "odd\ttabs  and   spaces"]
    fast = classifier.tokenize(texts, truncate=True)
    classifier._encoders = None
    assert classifier.tokenize(texts, truncate=True) == fast


def test_a_pass_alone_uses_more_threads_in_its_own_thread_only(tiny_model: Path) -> None:
    classifier = HFClassifier(
        make_settings(tiny_model, torch_threads=1, inference_workers=2, alone_pass_threads=2)
    )
    encoded = classifier.tokenize(TEXTS, truncate=True)
    rows, width = [e.ids for e in encoded], max(len(e.ids) for e in encoded)
    seen: dict[str, Any] = {}
    wide_done, narrow_done = threading.Event(), threading.Event()

    def wide() -> None:
        seen["wide"] = classifier.forward(rows, width, alone=True)
        wide_done.set()
        narrow_done.wait(30)  # the other thread's narrow pass must not shrink this one's count
        seen["wide_threads"] = torch.get_num_threads()

    def narrow() -> None:
        wide_done.wait(30)
        seen["narrow"] = classifier.forward(rows, width, alone=False)
        seen["narrow_threads"] = torch.get_num_threads()
        narrow_done.set()

    threads = [threading.Thread(target=wide), threading.Thread(target=narrow)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (seen["wide_threads"], seen["narrow_threads"]) == (2, 1)
    np.testing.assert_allclose(seen["wide"], seen["narrow"], atol=1e-5)


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 cores of time: two threads, not one
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota_caps_the_core_count(
    tmp_path: Path, files: dict[str, str], cores: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == cores

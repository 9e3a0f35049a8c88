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
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from transformers import pipeline

from app.engine.base import Encoded, FloatArray, ModelLoadError
from app.engine.hf import HFClassifier, build_revision, folder_digest, resolve_device, resolve_dtype
from app.engine.loader import load_classifier
from tests.conftest import one_thread_settings

TEXTS = [
    "I love this movie",
    "the flight was terrible and the food was awful",
    "not bad",
    "it was a very very very good day and the service was the best ever",
]


def _scores(classifier: HFClassifier, texts: list[str]) -> FloatArray:
    encoded = classifier.tokenize(texts, truncate=True)
    width = max(len(e.ids) for e in encoded)
    return classifier.forward([e.ids for e in encoded], width)


@pytest.mark.parametrize(
    ("kind", "activation"), [("single", "softmax"), ("multi", "sigmoid"), ("logit", "sigmoid")]
)
@pytest.mark.parametrize("forward", ["padded", "unpadded"])
def test_scores_match_the_transformers_pipeline(
    sharp_models: dict[str, Path], kind: str, activation: str, forward: str
) -> None:
    path = sharp_models[kind]
    classifier = load_classifier(one_thread_settings(path, forward=forward))
    assert classifier.info.activation == activation and classifier.info.forward == forward
    ours = _scores(classifier, TEXTS)  # one batch of mixed lengths, as the batcher runs it
    reference = pipeline("text-classification", model=str(path), top_k=None, device="cpu")
    expected_rows: list[Any] = reference(TEXTS)
    for row, expected in zip(ours, expected_rows, strict=True):
        by_label = {item["label"]: item["score"] for item in expected}
        for index, label in enumerate(classifier.info.labels):
            assert row[index] == pytest.approx(by_label[label], abs=1e-5)
    if kind != "logit":  # the scores depend on the text: the comparison could see a mistake
        assert np.ptp(ours, axis=0).max() > 0.05


def test_labels_and_problem_type_come_from_the_config(tiny_multilabel_model: Path) -> None:
    classifier = load_classifier(one_thread_settings(tiny_multilabel_model, forward="padded"))
    assert classifier.info.labels == ["toxic", "insult", "threat", "spam"]
    assert classifier.info.problem_type == "multi_label_classification"
    assert classifier.info.architecture == "BertForSequenceClassification"
    assert classifier.info.max_length == 64
    assert classifier.info.device == "cpu" and classifier.info.dtype == "float32"
    assert classifier.info.quantize == "none"
    assert classifier.info.revision is None  # no build_info.json in a test folder
    assert classifier.info.parameters == sum(p.numel() for p in classifier.model.parameters())


def test_truncation_reports_the_full_token_count(tiny_model: Path) -> None:
    classifier = HFClassifier(one_thread_settings(tiny_model, max_length=16))
    long_text = " ".join(["good"] * 40)
    cut, short = classifier.tokenize([long_text, "good film"], truncate=True)
    assert cut.truncated and cut.num_tokens == 42 and len(cut.ids) == 16
    assert cut.ids[-1] == short.ids[-1]  # the closing special token survives the cut
    assert short == Encoded(ids=short.ids, num_tokens=4, truncated=False)
    kept = classifier.tokenize([long_text], truncate=False)[0]
    assert not kept.truncated and len(kept.ids) == 42


def test_many_texts_tokenize_like_few(tiny_model: Path) -> None:
    # Up to 8 texts are encoded one by one, more in one batch call: the same ids either way.
    classifier = HFClassifier(one_thread_settings(tiny_model, max_length=8))
    texts = [" ".join(["good"] * n) for n in range(12)]
    many = classifier.tokenize(texts, truncate=True)
    assert many == [classifier.tokenize([text], truncate=True)[0] for text in texts]


def test_max_length_defaults_to_the_model_and_cannot_exceed_it(tiny_model: Path) -> None:
    assert HFClassifier(one_thread_settings(tiny_model)).max_length == 64
    assert HFClassifier(one_thread_settings(tiny_model, max_length=16)).max_length == 16
    with pytest.raises(ModelLoadError, match="TEXTCLF_MAX_LENGTH=65 exceeds the model's limit 64"):
        HFClassifier(one_thread_settings(tiny_model, max_length=65))


@pytest.mark.parametrize(
    ("damage", "file"),
    [
        (b"not a safetensors file", "model.safetensors"),
        (b"{ not json", "config.json"),
        (b"{ not json", "tokenizer.json"),
    ],
)
def test_a_broken_folder_gives_one_clear_line(
    tiny_model: Path, tmp_path: Path, damage: bytes, file: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / file).write_bytes(damage)
    with pytest.raises(ModelLoadError, match="cannot load the model from MODEL_PATH=") as caught:
        load_classifier(one_thread_settings(broken))
    assert "\n" not in str(caught.value)


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="TEXTCLF_DTYPE=float16 is not supported on CPU"):
        resolve_dtype("float16", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ModelLoadError, match="TEXTCLF_DEVICE=cuda but no CUDA device"):
            resolve_device("cuda")


def test_bfloat16_keeps_the_scores_close(sharp_models: dict[str, Path]) -> None:
    exact = load_classifier(one_thread_settings(sharp_models["single"], forward="padded"))
    half = load_classifier(
        one_thread_settings(sharp_models["single"], forward="padded", dtype="bfloat16")
    )
    assert half.info.dtype == "bfloat16" and half.model.dtype == torch.bfloat16
    scores = _scores(half, TEXTS)
    assert scores.dtype == np.float32  # scores leave the engine as float32 whatever the model
    assert np.abs(_scores(exact, TEXTS) - scores).max() < 0.05


def test_int8_quantization_keeps_the_scores_close(sharp_models: dict[str, Path]) -> None:
    exact = load_classifier(one_thread_settings(sharp_models["single"], forward="padded"))
    quantized = load_classifier(
        one_thread_settings(sharp_models["single"], forward="padded", quantize="int8")
    )
    assert (quantized.info.dtype, quantized.info.quantize) == ("float32", "int8")
    modules = list(quantized.model.modules())
    assert any(isinstance(m, DynamicInt8Linear) for m in modules)
    assert not any(type(m) is torch.nn.Linear for m in modules)
    assert np.abs(_scores(exact, TEXTS) - _scores(quantized, TEXTS)).max() < 0.05


def test_folder_digest_changes_with_content(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert folder_digest(copy) == folder_digest(tiny_model)
    config = json.loads((copy / "config.json").read_text())
    config["id2label"]["0"] = "renamed"
    (copy / "config.json").write_text(json.dumps(config))
    assert folder_digest(copy) != folder_digest(tiny_model)
    loaded = load_classifier(one_thread_settings(copy, forward="padded"))
    assert loaded.info.folder_sha256 == folder_digest(copy)


def test_build_revision_reads_the_cache_key(tmp_path: Path) -> None:
    assert build_revision(tmp_path) is None
    (tmp_path / "build_info.json").write_text(json.dumps({"cache_key": "abc123"}))
    assert build_revision(tmp_path) == "abc123"
    (tmp_path / "build_info.json").write_text("[1, 2]")
    assert build_revision(tmp_path) is None


def test_tokenize_is_safe_from_two_threads(tiny_model: Path) -> None:
    # The event loop and the tokenizer thread tokenize at once. Through the transformers
    # wrapper (which reconfigures truncation on its one backend per call) this gave 36 wrong
    # lengths in 6,000 calls: long texts left uncut, uncut texts cut.
    classifier = HFClassifier(one_thread_settings(tiny_model, max_length=8))
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
    classifier = HFClassifier(one_thread_settings(tiny_model, max_length=8))
    encoder = classifier.encoder
    assert encoder._backends is not None  # the fast path is the one in use
    texts = ["good film", " ".join(["bad"] * 20), "odd\ttabs  and   spaces"]
    fast = classifier.tokenize(texts, truncate=True)
    untruncated = classifier.tokenize(texts, truncate=False)
    encoder._backends = None
    assert classifier.tokenize(texts, truncate=True) == fast
    assert classifier.tokenize(texts, truncate=False) == untruncated


def test_a_pass_sets_its_thread_count_in_its_own_thread(tiny_model: Path) -> None:
    classifier = HFClassifier(one_thread_settings(tiny_model, torch_threads=1, inference_workers=2))
    assert (classifier.workers, classifier.threads) == (2, 1)
    rows = [e.ids for e in classifier.tokenize(TEXTS, truncate=True)]
    seen: dict[str, Any] = {}

    def work() -> None:
        torch.set_num_threads(2)
        seen["scores"] = classifier.forward(rows, max(map(len, rows)))
        seen["threads"] = torch.get_num_threads()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert seen["threads"] == 1
    np.testing.assert_allclose(seen["scores"], _scores(classifier, TEXTS), atol=1e-6)

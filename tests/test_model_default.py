"""Integration tests of the built default model at model/default.

The test run always builds it first (`make test` depends on `make model`), so a missing build is
a failure, never a skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model.build import HELDOUT_FILE, INFO_FILE, REPORT_FILE, is_complete, machine_recipe
from model.cachekey import cache_key, key_inputs
from model.data import LABELS, dedup_key, load_split

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "model" / "default"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_dir() -> Path:
    assert (MODEL_DIR / INFO_FILE).is_file(), (
        f"{MODEL_DIR} has no built model: run `make model` (python -m model.build --out "
        "model/default) before the integration tests"
    )
    return MODEL_DIR


@pytest.fixture(scope="module")
def report(model_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((model_dir / REPORT_FILE).read_text())
    return data


@pytest.fixture(scope="module")
def classifier(model_dir: Path) -> Any:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    model.train(False)
    return tokenizer, model


def test_built_model_matches_the_current_code_and_recipe(model_dir: Path) -> None:
    # The recipe with the precision this machine trains in (bf16 only with native bf16).
    recipe, _ = machine_recipe()
    key = cache_key(key_inputs(recipe))
    assert is_complete(model_dir, key), "model/default is stale: run `make model`"
    info = json.loads((model_dir / INFO_FILE).read_text())
    assert info["recipe"]["precision"] == info["precision"]["precision"] == recipe.precision


def test_folder_is_a_complete_save_pretrained_classifier(model_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (model_dir / name).is_file(), name
    assert not any(p.is_symlink() for p in model_dir.iterdir())
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert config["label2id"] == {name: i for i, name in enumerate(LABELS)}
    assert config["problem_type"] == "single_label_classification"


def test_tokenizer_knows_ordinary_words(classifier: Any) -> None:
    tokenizer, _ = classifier
    ids = tokenizer("I love this, it is wonderful")["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_report_matches_a_re_evaluation_on_the_heldout_split(
    model_dir: Path, report: dict[str, Any]
) -> None:
    from model.evaluate import evaluate

    split_info = report["split"]
    _, heldout = load_split(split_info["seed"], split_info["heldout_fraction"])
    again = evaluate(model_dir, [ex.text for ex in heldout], [ex.label for ex in heldout])
    for field in ("n_examples", "accuracy", "macro_f1", "per_class", "confusion_matrix"):
        assert again[field] == report[field], field


def test_heldout_ids_match_the_recomputed_split_and_never_overlap_training(
    model_dir: Path, report: dict[str, Any]
) -> None:
    seed = report["split"]["seed"]
    train, heldout = load_split(seed, report["split"]["heldout_fraction"])
    saved = json.loads((model_dir / HELDOUT_FILE).read_text())
    assert saved["seed"] == seed
    assert saved["uids"] == sorted(ex.uid for ex in heldout)
    assert len(heldout) == report["n_examples"]
    assert not {ex.uid for ex in train} & {ex.uid for ex in heldout}
    # No near-duplicate text crosses the split either.
    assert not {dedup_key(ex.text) for ex in train} & {dedup_key(ex.text) for ex in heldout}
    # Same seed, same split.
    assert [ex.uid for ex in load_split(seed)[1]] == [ex.uid for ex in heldout]


def test_metrics_stay_at_the_measured_level(report: dict[str, Any]) -> None:
    # Issue 3 asks for >= 0.82 accuracy and >= 0.80 macro-F1. The recipe measures 0.8186 / 0.8090
    # (model/README.md): the macro-F1 goal is met, the accuracy goal is not. These floors catch
    # a regression of the build without pretending the accuracy goal is reached.
    assert report["macro_f1"] >= 0.80
    assert report["accuracy"] >= 0.80


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I love this, it is wonderful", "positive"),
        ("This is terrible, I hate it", "negative"),
        ("Best flight ever, the crew was amazing, thank you!", "positive"),
        ("My flight was cancelled and nobody helped me. Worst service.", "negative"),
    ],
)
def test_obvious_sentences_are_labelled_right(classifier: Any, text: str, label: str) -> None:
    import torch

    tokenizer, model = classifier
    with torch.inference_mode():
        logits = model(**tokenizer(text, return_tensors="pt")).logits
    assert model.config.id2label[int(logits.argmax(-1))] == label


def test_build_ships_a_self_test_the_service_passes(model_dir: Path) -> None:
    from app.config import Settings
    from app.core.bringup import selftest_file

    cases = json.loads((model_dir / "selftest.json").read_text())
    assert {case["label"] for case in cases} == {"negative", "neutral", "positive"}
    assert selftest_file(Settings(model_path=model_dir)) == model_dir / "selftest.json"


def test_model_card_documents_data_licences_and_metrics(
    model_dir: Path, report: dict[str, Any]
) -> None:
    card = (model_dir / "README.md").read_text()
    info = json.loads((model_dir / INFO_FILE).read_text())
    assert "CC BY-NC-SA 4.0" in card
    assert "Apache-2.0" in card
    assert f"accuracy {100 * report['accuracy']:.2f}%" in card
    assert info["cache_key"] in card
    assert f"Training precision: **{info['recipe']['precision']}**" in card
    assert "seed" in card

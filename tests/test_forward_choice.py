"""The forward pass chosen at start-up (app/engine/loader.py): what is offered, what is
forced, what is timed, and that every choice gives the padded forward's scores."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from app.config import ForwardPath
from app.engine import loader, onednn
from app.engine.base import ModelLoadError
from app.engine.loader import forward_candidates, load_classifier
from app.engine.unpadded import UnpaddedForward
from tests.conftest import one_thread_settings
from tests.sharp_model import random_rows

ALL: list[ForwardPath] = ["padded", "unpadded", "unpadded_onednn"]
needs_onednn = pytest.mark.skipif(not onednn.available(), reason="torch built without oneDNN")


@pytest.fixture(scope="module")
def distilbert_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier the padding-free forward does not reproduce, with the tiny tokenizer."""
    path = tmp_path_factory.mktemp("distil") / "model"
    shutil.copytree(tiny_model, path)
    for name in ("config.json", "model.safetensors"):
        (path / name).unlink()
    config = DistilBertConfig(
        vocab_size=100,
        dim=16,
        n_layers=1,
        n_heads=2,
        hidden_dim=32,
        max_position_embeddings=64,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    DistilBertForSequenceClassification(config).eval().save_pretrained(path)
    return path


@needs_onednn
def test_auto_keeps_the_fastest_candidate_and_says_why(tiny_model: Path) -> None:
    classifier = load_classifier(one_thread_settings(tiny_model, forward="auto"))
    candidates, why_not = forward_candidates(classifier)
    assert (candidates, why_not) == (ALL, "")
    info = classifier.info
    assert info.forward in candidates and classifier.path == info.forward
    assert classifier.padding_free == (info.forward != "padded")
    assert info.forward_reason.startswith("fastest at start-up (batch of 32 + one text): ")
    for path in candidates:  # every candidate's timings, full batch + lone text
        assert re.search(rf"\b{path} \d+\.\d\+\d+\.\d ms", info.forward_reason), path


@pytest.mark.parametrize("forward", ALL)
def test_a_forced_forward_is_used_as_asked(tiny_model: Path, forward: ForwardPath) -> None:
    if forward == "unpadded_onednn" and not onednn.available():
        pytest.skip("torch built without oneDNN")
    classifier = load_classifier(one_thread_settings(tiny_model, forward=forward))
    assert (classifier.info.forward, classifier.path) == (forward, forward)
    assert classifier.info.forward_reason == "set by TEXTCLF_FORWARD"
    assert classifier.padding_free == (forward != "padded")
    unpadded = classifier._unpadded
    layers = unpadded.onednn_layers if isinstance(unpadded, UnpaddedForward) else None
    assert layers == {"padded": None, "unpadded": 0, "unpadded_onednn": 10}[forward]


@pytest.mark.parametrize(
    ("overrides", "offered"),
    [
        ({"quantize": "int8"}, ["padded", "unpadded"]),
        ({"dtype": "bfloat16"}, ["padded", "unpadded"]),
    ],
)
def test_onednn_is_not_offered_for_int8_or_bfloat16_weights(
    tiny_model: Path, overrides: dict[str, str], offered: list[str]
) -> None:
    classifier = load_classifier(one_thread_settings(tiny_model, forward="padded", **overrides))
    candidates, why_not = forward_candidates(classifier)
    assert candidates == offered and "oneDNN" in why_not
    with pytest.raises(ModelLoadError, match="TEXTCLF_FORWARD=unpadded_onednn is unavailable"):
        load_classifier(one_thread_settings(tiny_model, forward="unpadded_onednn", **overrides))
    chosen = load_classifier(
        one_thread_settings(tiny_model, forward="auto", **overrides)
    ).info.forward
    assert chosen in offered


def test_a_model_without_a_padding_free_forward_serves_padded(distilbert_model: Path) -> None:
    classifier = load_classifier(one_thread_settings(distilbert_model, forward="auto"))
    assert classifier.info.architecture == "DistilBertForSequenceClassification"
    assert (classifier.info.forward, classifier.padding_free) == ("padded", False)
    assert classifier.info.forward_reason == (
        "the only one: no padding-free forward for DistilBertForSequenceClassification"
    )
    for forward in ("unpadded", "unpadded_onednn"):
        with pytest.raises(ModelLoadError, match=f"TEXTCLF_FORWARD={forward} is unavailable: no"):
            load_classifier(one_thread_settings(distilbert_model, forward=forward))


@pytest.mark.parametrize("forward", ["auto", *ALL])
def test_every_forward_gives_the_padded_scores(sharp_model: Path, forward: str) -> None:
    if forward == "unpadded_onednn" and not onednn.available():
        pytest.skip("torch built without oneDNN")
    padded = load_classifier(one_thread_settings(sharp_model, forward="padded"))
    chosen = load_classifier(one_thread_settings(sharp_model, forward=forward))
    for rows in (random_rows(9, seed=1), random_rows(1, seed=2), random_rows(40, seed=3)):
        width = max(map(len, rows))
        want = padded.forward(rows, width)
        np.testing.assert_allclose(chosen.forward(rows, width), want, atol=1e-5)
    assert np.ptp(want, axis=0).max() > 0.1  # scores that depend on the text


def test_a_short_token_limit_still_times_the_candidates(tiny_model: Path) -> None:
    # The probe batch once took its lengths modulo (limit - 7): a limit of 7 divided by zero.
    classifier = load_classifier(one_thread_settings(tiny_model, forward="auto", max_length=7))
    assert classifier.info.forward_reason.startswith("fastest at start-up")


class _TimedFake:
    """Stands in for the classifier in `_fastest`: each forward advances a fake clock by a
    known cost per token of its path, so the timings are exact."""

    def __init__(self, per_token_ms: dict[ForwardPath, float], max_length: int = 64) -> None:
        self.per_token_ms = per_token_ms
        self.filler_id = 1
        self.max_length = max_length
        self.now = 0.0
        self.path: ForwardPath = "padded"
        self.calls: list[tuple[ForwardPath, int]] = []  # (path, rows)
        self.longest = 0
        self.slow_calls: set[int] = set()  # these calls (by index) take 100 times longer

    def use_forward(self, path: ForwardPath, forward: object) -> None:
        self.path = path

    def forward(self, rows: Sequence[Sequence[int]], width: int) -> None:
        tokens = sum(map(len, rows))
        self.longest = max(self.longest, width, *map(len, rows))
        seconds = self.per_token_ms[self.path] * tokens / 1000
        if len(self.calls) in self.slow_calls:
            seconds *= 100
        self.calls.append((self.path, len(rows)))
        self.now += seconds

    def choose(self, monkeypatch: pytest.MonkeyPatch, max_rows: int = 32) -> tuple[str, str]:
        monkeypatch.setattr(loader, "time", SimpleNamespace(perf_counter=lambda: self.now))
        built = dict.fromkeys(self.per_token_ms)
        return loader._fastest(cast(Any, self), cast(Any, built), max_rows)


@pytest.mark.parametrize(
    ("per_token_ms", "chosen"),
    [
        ({"padded": 1.0, "unpadded": 0.5, "unpadded_onednn": 0.4}, "unpadded_onednn"),
        ({"padded": 1.0, "unpadded": 0.5, "unpadded_onednn": 0.6}, "unpadded"),
        ({"padded": 1.0, "unpadded": 1.2, "unpadded_onednn": 1.1}, "padded"),
        # A more elaborate forward must win by 3 %.
        ({"padded": 1.0, "unpadded": 0.98}, "padded"),
        ({"padded": 1.0, "unpadded": 0.96}, "unpadded"),
        ({"padded": 1.0, "unpadded": 0.5, "unpadded_onednn": 0.49}, "unpadded"),
        ({"padded": 1.0, "unpadded": 0.5, "unpadded_onednn": 0.48}, "unpadded_onednn"),
        # Measured against the one chosen so far, not the next simpler one.
        ({"padded": 1.0, "unpadded": 0.98, "unpadded_onednn": 0.96}, "unpadded_onednn"),
    ],
)
def test_the_fastest_wins_and_a_more_elaborate_one_by_three_percent(
    monkeypatch: pytest.MonkeyPatch, per_token_ms: dict[ForwardPath, float], chosen: str
) -> None:
    fake = _TimedFake(per_token_ms)
    path, reason = fake.choose(monkeypatch)
    assert path == chosen
    # The lone text is 12 tokens: its time shows each path's cost per token exactly.
    for name, ms in per_token_ms.items():
        assert f"{name} " in reason and f"+{ms * 12:.1f} ms" in reason


def test_candidates_are_timed_interleaved_and_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _TimedFake({"padded": 1.0, "unpadded": 0.5})
    # The first round only warms up, and a busy moment later on counts for nothing: the
    # best of three rounds is kept. Here the slow calls hit the faster forward only.
    fake.slow_calls = {2, 3, 10}
    path, reason = fake.choose(monkeypatch)
    timings = {
        name: (float(full), float(lone))
        for name, full, lone in re.findall(r"(\w+) (\d+\.\d)\+(\d+\.\d) ms", reason)
    }
    assert path == "unpadded"
    assert timings["unpadded"] == pytest.approx(tuple(t / 2 for t in timings["padded"]), abs=0.1)
    # Rounds of every path on the full batch (32 texts), then on one text.
    assert fake.calls == [
        (p, rows) for _ in range(4) for p in ("padded", "unpadded") for rows in (32, 1)
    ]


@pytest.mark.parametrize("max_length", [2, 7, 8, 20, 512])
def test_probe_texts_keep_within_the_token_limit(
    monkeypatch: pytest.MonkeyPatch, max_length: int
) -> None:
    fake = _TimedFake({"padded": 1.0, "unpadded": 0.5}, max_length=max_length)
    fake.choose(monkeypatch, max_rows=4)
    assert 0 < fake.longest <= max_length
    assert {rows for _, rows in fake.calls} == {4, 1}

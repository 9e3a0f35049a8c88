"""The benchmark corpus: deterministic, varied, within the length bounds."""

from __future__ import annotations

import json
from pathlib import Path

from bench.corpus import MAX_WORDS, MIN_WORDS, build_corpus, describe, write_bodies


def test_same_seed_same_corpus() -> None:
    assert build_corpus(200, seed=7) == build_corpus(200, seed=7)


def test_different_seed_different_corpus() -> None:
    assert [s.text for s in build_corpus(50, seed=1)] != [s.text for s in build_corpus(50, seed=2)]


def test_default_corpus_shape() -> None:
    corpus = build_corpus()
    texts = [s.text for s in corpus]
    assert len(corpus) == 600
    assert len(set(texts)) == len(texts), "sentences must be distinct"
    assert all(MIN_WORDS <= s.words <= MAX_WORDS for s in corpus)
    info = describe(corpus)
    # Varied lengths: short and long inputs both present, mean in the 20s (~30 tokens).
    assert info["min_words"] <= 8
    assert info["max_words"] >= 50
    assert 18 <= info["mean_words"] <= 32
    mix = info["sentiment_mix"]
    assert isinstance(mix, dict)
    assert set(mix) == {"positive", "negative", "neutral", "mixed"}
    assert mix["positive"] > 100 and mix["negative"] > 100


def test_sentences_look_like_sentences() -> None:
    for s in build_corpus(300):
        assert s.text[0].isupper()
        assert s.text.endswith((".", "!", "?"))
        assert ",," not in s.text and " ," not in s.text


def test_bodies_one_json_text_per_line(tmp_path: Path) -> None:
    path = write_bodies(tmp_path / "b.jsonl", ["x y z", 'say "hi"\nnow'])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"text": "x y z"}, {"text": 'say "hi"\nnow'}]

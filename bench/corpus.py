"""Deterministic corpus of English review-style sentences for load generation.

Sentences are assembled from hand-written phrase banks with a seeded RNG, so every
run (and every machine) sends exactly the same texts in the same order. Lengths
follow a clipped log-normal (5..60 words, median ~20) so that batches mix short
and long inputs the way real traffic does; that is what makes padding matter.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_WORDS = 5
MAX_WORDS = 60
DEFAULT_SIZE = 600
DEFAULT_SEED = 20240611

Sentiment = str  # "positive" | "negative" | "neutral" | "mixed"


def _bank(phrases: str) -> list[str]:
    return phrases.split("|")


_DOMAINS: dict[str, list[str]] = {
    "restaurant": _bank(
        "the pasta|the service|our waiter|the dessert menu|the tomato soup|the wine list|"
        "the grilled fish|the corner table by the window|the kitchen|the breakfast special"
    ),
    "movie": _bank(
        "the plot|the soundtrack|the lead actor|the ending|the second half of the film|"
        "the dialogue|the special effects|the director's latest project|the supporting cast"
    ),
    "product": _bank(
        "the battery|the screen|this blender|the charger|the zipper on this jacket|the keyboard|"
        "these headphones|the vacuum cleaner|the packaging|the instruction manual"
    ),
    "hotel": _bank(
        "the room|the front desk|the breakfast buffet|the pool|the view from our balcony|the bed|"
        "the shower|the hotel gym"
    ),
    "software": _bank(
        "the latest update|the mobile app|the login page|customer support|the new dashboard|"
        "the sync feature|the search function|the installer"
    ),
    "travel": _bank(
        "the flight|the night train|our tour guide|the airport lounge|the ferry crossing|"
        "the rental car|the walking tour"
    ),
}

_PREDICATES: dict[Sentiment, list[str]] = {
    "positive": _bank(
        "was absolutely delicious|exceeded every expectation we had|works exactly as described|"
        "made the whole evening feel special|is the best I have tried in years|"
        "was friendly, quick and genuinely helpful|feels solid and well made|"
        "turned out to be a pleasant surprise|was worth every single penny|"
        "left us smiling for days|is fast, reliable and easy to use|"
        "kept me hooked from start to finish|was spotless|handled everything we threw at it"
    ),
    "negative": _bank(
        "was cold and bland|stopped working after two days|felt like a complete waste of money|"
        "was rude and completely unhelpful|is slow, buggy and confusing|fell apart within a week|"
        "was a huge disappointment|crashed every time I opened it|"
        "smelled strange and looked dirty|dragged on for far too long|"
        "was delayed by almost four hours|never did what the advert promised|"
        "broke on the very first use|made the whole trip miserable"
    ),
    "neutral": _bank(
        "arrived on Tuesday|comes in three different colours|is located near the main station|"
        "was about what I expected|is available in two sizes|was replaced last month|"
        "takes roughly twenty minutes to set up|opens at nine in the morning|"
        "uses the same parts as the older model|was mentioned in the weekly newsletter|"
        "is listed on the second page of the catalogue|had a few other customers waiting"
    ),
}

_OPENERS = _bank(
    "Last weekend|On our second visit|After three weeks of daily use|To be honest|Overall|"
    "For what it is worth|Surprisingly|As expected|According to my partner|Right from the start|"
    "Compared to last year|In short"
)

_ELABORATIONS: dict[Sentiment, list[str]] = {
    "positive": _bank(
        "I would happily recommend it to anyone|we are already planning to come back|"
        "the staff went out of their way to help us|my kids loved every minute of it|"
        "it has quickly become part of my routine|I ordered a second one for my sister|"
        "the price felt more than fair|everything was ready before we even asked"
    ),
    "negative": _bank(
        "I will not be ordering again|nobody bothered to reply to my emails|"
        "we had to ask three times for the bill|the refund still has not arrived|"
        "I regret not reading the reviews first|the noise kept us awake all night|"
        "half of the features simply do not work|the whole experience left a bad taste"
    ),
    "neutral": _bank(
        "I have not decided yet whether to keep it|the package included a printed manual|"
        "we paid by card at the counter|the website lists the opening hours|"
        "it was the first time we tried this place|the delivery needed a signature|"
        "there is a newer version coming next spring|most people around us ordered the same thing"
    ),
}

_CONNECTORS: dict[Sentiment, list[str]] = {
    "same": _bank(", and|, and honestly|; in fact,|, so|, which is why|, and also"),
    "contrast": _bank(", but|, although|; however,|, even though|, yet"),
}

_TAILS = _bank(
    "for the price|in my opinion|to be fair|at least for now|compared to the previous model|"
    "given how busy it was|on a rainy Sunday afternoon|after a very long week|despite the crowds|"
    "as far as I can tell"
)

_SHORT: dict[Sentiment, list[str]] = {
    "positive": _bank(
        "Absolutely loved it, highly recommended.|Great value and very friendly staff.|"
        "Five stars, would buy again.|Works perfectly, no complaints at all.|"
        "Best coffee in town, hands down."
    ),
    "negative": _bank(
        "Terrible service, never going back.|Broke after one week of use.|"
        "Complete waste of money, avoid it.|Cold food and very long wait.|"
        "The app keeps crashing on startup."
    ),
    "neutral": _bank(
        "The parcel arrived on Monday morning.|It comes with a standard charger.|"
        "The shop closes at six today.|We sat near the back door.|"
        "The update was installed last night."
    ),
}

_SENTIMENT_WEIGHTS: list[tuple[Sentiment, float]] = [
    ("positive", 0.38),
    ("negative", 0.38),
    ("neutral", 0.16),
    ("mixed", 0.08),
]


@dataclass(frozen=True)
class Sentence:
    """One corpus entry; `sentiment` is the intended tone (metadata, not a label)."""

    text: str
    sentiment: Sentiment

    @property
    def words(self) -> int:
        return len(self.text.split())


def _pick_sentiment(rng: random.Random) -> Sentiment:
    names = [name for name, _ in _SENTIMENT_WEIGHTS]
    weights = [w for _, w in _SENTIMENT_WEIGHTS]
    return rng.choices(names, weights=weights, k=1)[0]


def _target_words(rng: random.Random) -> int:
    # Log-normal: most sentences are 12-35 words, with a tail up to MAX_WORDS.
    value = rng.lognormvariate(math.log(20.0), 0.5)
    return max(MIN_WORDS, min(MAX_WORDS, round(value)))


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _main_clause(rng: random.Random, tone: Sentiment, domain: str) -> str:
    subject = rng.choice(_DOMAINS[domain])
    return f"{subject} {rng.choice(_PREDICATES[tone])}"


def _extend(
    rng: random.Random,
    words: list[str],
    target: int,
    tone: Sentiment,
    contrast: Sentiment | None,
    domain: str,
) -> None:
    """Append clauses/tails to `words` until the target length is reached (never past MAX)."""
    used_contrast = False
    while len(words) < target:
        room = MAX_WORDS - len(words)
        if room < 4:
            break
        roll = rng.random()
        if contrast is not None and not used_contrast:
            clause_tone, kind = contrast, "contrast"
            used_contrast = True
        else:
            clause_tone = tone
            kind = "same"
        if roll < 0.2 or target - len(words) <= 4:
            piece = rng.choice(_TAILS)
            words[-1] = words[-1].rstrip(",")
            candidate = piece.split()
        elif roll < 0.6:
            connector = rng.choice(_CONNECTORS[kind])
            clause = _main_clause(rng, clause_tone, domain)
            candidate = [*connector.split()[1:], *clause.split()]
            words[-1] = words[-1] + connector.split()[0]
        else:
            connector = rng.choice(_CONNECTORS[kind])
            clause = rng.choice(_ELABORATIONS[clause_tone])
            candidate = [*connector.split()[1:], *clause.split()]
            words[-1] = words[-1] + connector.split()[0]
        if len(candidate) > room:
            # Undo a dangling connector mark and stop: better short than over the cap.
            words[-1] = words[-1].rstrip(",;")
            break
        words.extend(candidate)


def make_sentence(rng: random.Random) -> Sentence:
    """Build one sentence with a target length drawn from the length distribution."""
    tone = _pick_sentiment(rng)
    target = _target_words(rng)
    base_tone = rng.choice(["positive", "negative"]) if tone == "mixed" else tone
    if target <= 7:
        return Sentence(rng.choice(_SHORT[base_tone]), base_tone)
    contrast: Sentiment | None = None
    if tone == "mixed":
        contrast = "negative" if base_tone == "positive" else "positive"
    # One topic per sentence keeps the text plausible (pasta is not "buggy").
    domain = rng.choice(sorted(_DOMAINS))
    words: list[str] = []
    if rng.random() < 0.45:
        words.extend((rng.choice(_OPENERS) + ",").split())
    words.extend(_main_clause(rng, base_tone, domain).split())
    _extend(rng, words, target, base_tone, contrast, domain)
    text = " ".join(words).rstrip(",;")
    if not text.endswith((".", "!", "?")):
        text += rng.choice([".", ".", ".", "!"])
    return Sentence(_capitalise(text), tone)


def build_corpus(size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> list[Sentence]:
    """`size` distinct sentences, identical for identical (size, seed)."""
    if size < 1:
        raise ValueError("corpus size must be >= 1")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Sentence] = []
    attempts = 0
    while len(out) < size:
        attempts += 1
        if attempts > size * 50:
            raise RuntimeError(f"could only build {len(out)} distinct sentences")
        sentence = make_sentence(rng)
        if sentence.text in seen or not MIN_WORDS <= sentence.words <= MAX_WORDS:
            continue
        seen.add(sentence.text)
        out.append(sentence)
    return out


def write_bodies(path: Path, texts: Sequence[str]) -> Path:
    """One POST /predict JSON body per line, `{"text": ...}`: what wrk_corpus.lua reads."""
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def describe(corpus: Sequence[Sentence]) -> dict[str, Any]:
    """Length and sentiment summary, recorded in every report."""
    lengths = sorted(s.words for s in corpus)
    mix: dict[str, int] = {}
    for s in corpus:
        mix[s.sentiment] = mix.get(s.sentiment, 0) + 1
    return {
        "size": len(corpus),
        "min_words": lengths[0],
        "max_words": lengths[-1],
        "mean_words": round(sum(lengths) / len(lengths), 2),
        "median_words": lengths[len(lengths) // 2],
        "sentiment_mix": dict(sorted(mix.items())),
    }

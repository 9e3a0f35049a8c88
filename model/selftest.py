"""Known answers shipped with the default model as ``selftest.json``.

The service checks them before it reports ready (SELFTEST_PATH), so a folder whose weights,
tokenizer or label map went wrong never serves. The build refuses a model that misses one.
"""

from __future__ import annotations

import json
from pathlib import Path

SELFTEST_FILE = "selftest.json"

# Unambiguous on purpose: a failure means a broken model, not a hard example.
CASES: tuple[tuple[str, str], ...] = (
    ("I love this, it is wonderful", "positive"),
    ("Best flight ever, the crew was amazing, thank you!", "positive"),
    ("This is terrible, I hate it", "negative"),
    ("My flight was cancelled and nobody helped me. Worst service.", "negative"),
    ("What time does the flight to Chicago board?", "neutral"),
    ("The meeting is scheduled for Tuesday.", "neutral"),
)


def write_selftest(folder: Path) -> Path:
    path = folder / SELFTEST_FILE
    cases = [{"text": text, "label": label} for text, label in CASES]
    path.write_text(json.dumps(cases, indent=2) + "\n")
    return path

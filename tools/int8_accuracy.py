"""Held-out accuracy of a model folder in fp32 and with dynamic int8 Linear layers.

    .venv/bin/python -m tools.int8_accuracy [MODEL_DIR]   (default model/default)

Quantizes with the service's own `TEXTCLF_QUANTIZE=int8` function (app.engine.hf.quantize_int8) and
scores both on the folder's own held-out split (the seed in its eval_report.json). Prints one
JSON line; the "int8" rows in BENCHMARKS.md and README.md come from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def measure(model_dir: Path) -> dict[str, Any]:
    import torch

    from app.engine.hf import quantize_int8
    from model.data import load_split
    from model.evaluate import evaluate_loaded, load_folder

    torch.set_num_threads(2)
    split = json.loads((model_dir / "eval_report.json").read_text())["split"]
    _, heldout = load_split(split["seed"], split["heldout_fraction"])
    texts, labels = [ex.text for ex in heldout], [ex.label for ex in heldout]
    model, tokenizer = load_folder(model_dir)
    out: dict[str, Any] = {"model": str(model_dir), "n_examples": len(texts)}
    fp32 = evaluate_loaded(model, tokenizer, texts, labels)
    int8_model = quantize_int8(model)
    int8 = evaluate_loaded(int8_model, tokenizer, texts, labels)
    for name, report in (("fp32", fp32), ("int8", int8)):
        out[name] = {k: report[k] for k in ("accuracy", "macro_f1", "eval_seconds")}
    out["accuracy_change_points"] = round(100 * (int8["accuracy"] - fp32["accuracy"]), 2)
    return out


def main(argv: list[str]) -> int:
    model_dir = Path(argv[0]) if argv else Path("model/default")
    sys.stdout.write(json.dumps(measure(model_dir)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

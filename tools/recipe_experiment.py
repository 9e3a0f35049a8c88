"""Train one recipe variant outside the model cache and append its scores to a JSONL file.

    .venv/bin/python -m tools.recipe_experiment NAME '{"label_smoothing": 0.1}'

The variant is the default Recipe with the given fields replaced; the folder goes to
/tmp/recipe-experiments/NAME and its cache to /tmp/recipe-experiments/.cache (the pinned wheels
are read from the normal cache), so the default model's cache is never touched. This is how
the "Recipe search" table in model/README.md was made.

    .venv/bin/python -m tools.recipe_experiment NAME '{"train_seed": 14}'

trains the default recipe with another training seed on the same held-out split (the spread
of one recipe from run to run).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from model.build import build
from model.recipe import Recipe
from model.wheels import cache_dir

ROOT = Path("/tmp/recipe-experiments")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(__doc__ or "")
        return 2
    name, overrides = argv[0], json.loads(argv[1])
    # "train_seed" changes only the training's randomness (the batch order and what torch draws),
    # not the held-out split: the run-to-run spread of one recipe on the same split.
    train_seed = overrides.pop("train_seed", None)
    if train_seed is not None:
        _train_with_seed(int(train_seed))
    cache = ROOT / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = cache / "wheels"
    if not wheels.exists():
        wheels.symlink_to(cache_dir() / "wheels", target_is_directory=True)
    out = ROOT / name
    start = time.perf_counter()
    build(out, Recipe(**overrides), cache=cache, force=True, progress=False)
    info = json.loads((out / "build_info.json").read_text())
    report = json.loads((out / "eval_report.json").read_text())
    line = {
        "name": name,
        "overrides": overrides,
        "train_seed": train_seed,
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "per_class_f1": {k: v["f1"] for k, v in report["per_class"].items()},
        "timing": info["timing"],
        "train_examples": info["data"]["train"],
        "wall_s": round(time.perf_counter() - start, 1),
    }
    with (ROOT / "results.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")
    sys.stdout.write(json.dumps(line) + "\n")
    return 0


def _train_with_seed(seed: int) -> None:
    """Make model.build's training call use `seed`; the split keeps the recipe's seed."""
    from dataclasses import replace

    import model.train

    original = model.train.train

    def train(*args: Any, **kwargs: Any) -> Any:
        args_list = list(args)
        args_list[4] = replace(args_list[4], seed=seed)  # (model, tokenizer, texts, labels, recipe)
        return original(*args_list, **kwargs)

    model.train.train = train


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

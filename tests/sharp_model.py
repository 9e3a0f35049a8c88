"""Tiny models whose scores depend on the text.

A freshly initialised BERT (weights ~N(0, 0.02)) gives almost the same logits for every
input: scores differ between texts by about 1e-5, as little as the tolerances the parity
tests use, so a lost token or a shifted position would still pass them. Redrawn at unit
scale, texts differ in their scores by tenths and those tests can see a mistake."""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification


def sharpen(model: Any, seed: int = 0) -> Any:
    """Redraw `model`'s Linear and Embedding weights at unit scale, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                weight = torch.randn(module.weight.shape, generator=generator)
                module.weight.copy_(weight / math.sqrt(module.in_features))
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
    return model


def sharpened_copy(source: Path, dest: Path, seed: int = 0) -> Path:
    """A copy of the save_pretrained folder `source` with sharpened weights."""
    shutil.copytree(source, dest)
    model: Any = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=True)
    sharpen(model, seed).save_pretrained(dest)
    return dest


def random_rows(count: int, seed: int) -> list[list[int]]:
    """Token-id rows of mixed lengths inside the tiny vocabulary, [CLS]/[SEP]-like ends."""
    rng = random.Random(seed)
    return [
        [2] + [rng.randrange(5, 60) for _ in range(rng.randrange(1, 40))] + [3]
        for _ in range(count)
    ]

"""The training recipe: every knob that changes the built model, and so part of the cache key."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from model.data import DEFAULT_SEED, HELDOUT_FRACTION

FP32 = "float32"
BF16 = "bfloat16"
PRECISIONS = (FP32, BF16)


@dataclass(frozen=True)
class Recipe:
    seed: int = DEFAULT_SEED
    heldout_fraction: float = HELDOUT_FRACTION
    # 99.9% of the corpus fits in 64 word pieces (max 75), so 64 truncates almost nothing.
    max_length: int = 64
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    schedule: str = "linear"  # linear or cosine decay after warmup
    # Batches are drawn from windows of this many batches sorted by length, to cut padding
    # while keeping the order random.
    bucket_window: int = 50
    # The embedding matrix is half the parameters; freezing it saves its backward and update.
    freeze_embeddings: bool = True
    # Lowest encoder layers kept frozen (0 trains all six).
    frozen_layers: int = 0
    # "bfloat16" (bf16 autocast for the matmuls; weights, optimizer and loss in fp32) or "float32".
    # The build sets it per machine (model/precision.py): bf16 only where the CPU runs bf16
    # matmuls in hardware, as emulated bf16 is tens of times slower than fp32.
    precision: str = FP32
    # Scale each example's loss by the annotators' agreement (the CSV's confidence column;
    # missing counts as 1), so ambiguous tweets pull less.
    weight_by_confidence: bool = False
    # Soft targets: the label gets the annotators' confidence c, the other labels share 1 - c
    # (label smoothing is applied on top). +0.4 points over hard labels (model/README.md).
    confidence_targets: bool = True
    max_grad_norm: float = 1.0
    # Layer-wise learning-rate decay: encoder layer i (of n) trains at
    # learning_rate * layer_lr_decay ** (n - 1 - i); 1.0 gives every layer the same rate.
    layer_lr_decay: float = 1.0
    # Noisy labels (a third of the tweets had annotator agreement below 0.7): 0.1 was the best
    # of the variants tried (model/README.md).
    label_smoothing: float = 0.1
    # Training examples whose annotator confidence is below this are left out (never the
    # held-out ones; a missing confidence counts as 1).
    min_confidence: float = 0.0
    # Dropout of the encoder and the head while training (BERT's default is 0.1).
    dropout: float = 0.0
    torch_threads: int = 2

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {PRECISIONS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

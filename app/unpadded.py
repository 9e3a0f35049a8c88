"""Padding-free forward pass for BERT-style classifiers on the CPU.

A padded batch pays for every pad token in every linear layer, which is almost all of a small
encoder's work on short texts. Here the texts of a batch are concatenated into one
(tokens x hidden) matrix: embeddings, projections, feed-forward and LayerNorm run on real
tokens only, and only the attention itself is laid out per text (padded, masked), which costs
little at these lengths. The planner can then batch texts of any lengths together, so batches
get large without wasting work. The weights are the Hugging Face model's own modules; scores
match the model's padded forward to float rounding (tests/test_unpadded.py).

Only `BertForSequenceClassification` with absolute positions qualifies (the default model's
architecture); anything else runs the stock padded forward.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def supports(model: Any) -> bool:
    """Whether `model` is a BERT classifier this module reproduces exactly."""
    if type(model).__name__ != "BertForSequenceClassification":
        return False
    config = model.config
    bert = getattr(model, "bert", None)
    return (
        bert is not None
        and bert.pooler is not None
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(config, "is_decoder", False)
        and not getattr(config, "add_cross_attention", False)
    )


class UnpaddedBert:
    """Runs a BertForSequenceClassification on concatenated, unpadded token rows."""

    def __init__(self, model: Any) -> None:
        if not supports(model):
            raise ValueError("not a BertForSequenceClassification with absolute positions")
        self._model = model
        self._bert = model.bert
        config = model.config
        self._heads = int(config.num_attention_heads)
        self._head_dim = int(config.hidden_size) // self._heads
        # One (3*hidden x hidden) projection per layer instead of three: one GEMM, one scatter
        # into the padded layout. Float Linear layers only (int8 ones keep their own kernels);
        # empty unless every layer qualifies. A module list, so app/onednn.py can swap them.
        fused = [_fused_qkv(layer.attention.self) for layer in self._bert.encoder.layer]
        self.fused_qkv = nn.ModuleList(
            [f for f in fused if f is not None] if all(f is not None for f in fused) else []
        )
        # The whole forward compiled with TorchScript (app/scripted.py), once the Linear
        # layers have their final kernels: `script()`.
        self.scripted: Any = None

    def replaced_projections(self) -> list[nn.Module]:
        """The separate query, key and value layers the fused projections stand in for:
        this class never calls them."""
        if not self.fused_qkv:
            return []
        return [
            projection
            for layer in self._bert.encoder.layer
            for projection in (
                layer.attention.self.query,
                layer.attention.self.key,
                layer.attention.self.value,
            )
        ]

    def script(self) -> bool:
        """Run the whole forward as one TorchScript call from now on, when supported."""
        from app.scripted import script_forward, supports_scripting

        if not supports_scripting(self._model, self.fused_qkv):
            return False
        self.scripted = script_forward(self._model, self.fused_qkv)
        return True

    def logits(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits (batch x labels) for token-id rows of any lengths (each at least 1).

        The CPU only (the classifier builds this class for CPU devices alone)."""
        layout = _layout(rows)
        if self.scripted is not None:
            logits: torch.Tensor = self.scripted(*layout)
            return logits
        ids, positions, starts, slots, key_mask, batch, width = layout
        # Without slots (a lone text, or texts of one length) the concatenation already is the
        # (batch x width) layout: no scatter and no mask.
        emb = self._bert.embeddings
        hidden = (
            emb.word_embeddings(ids)
            + emb.token_type_embeddings.weight[0]
            + emb.position_embeddings(positions)
        )
        hidden = emb.LayerNorm(hidden)
        for index, layer in enumerate(self._bert.encoder.layer):
            qkv = self.fused_qkv[index] if self.fused_qkv else None
            hidden = self._layer(layer, qkv, hidden, slots, key_mask, batch, width)
        first = hidden.index_select(0, starts)
        pooled = self._bert.pooler.activation(self._bert.pooler.dense(first))
        out: torch.Tensor = self._model.classifier(pooled)
        return out

    def _layer(
        self,
        layer: Any,
        qkv: nn.Module | None,
        hidden: torch.Tensor,
        slots: torch.Tensor | None,
        key_mask: torch.Tensor | None,
        batch: int,
        width: int,
    ) -> torch.Tensor:
        attn = layer.attention
        if qkv is not None:
            grid = self._grid(qkv(hidden), slots, batch, width)
            # (batch, width, 3, heads, head_dim) -> three (batch, heads, width, head_dim) views
            q, k, v = grid.view(batch, width, 3, self._heads, self._head_dim).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = (
                self._heads_view(self._grid(proj(hidden), slots, batch, width), batch, width)
                for proj in (attn.self.query, attn.self.key, attn.self.value)
            )
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        context = context.transpose(1, 2).reshape(batch * width, -1)
        if slots is not None:
            context = context.index_select(0, slots)
        attended = attn.output.LayerNorm(attn.output.dense(context) + hidden)
        inner = layer.intermediate(attended)
        out: torch.Tensor = layer.output.LayerNorm(layer.output.dense(inner) + attended)
        return out

    @staticmethod
    def _grid(
        tokens: torch.Tensor, slots: torch.Tensor | None, batch: int, width: int
    ) -> torch.Tensor:
        """(tokens x features) -> (batch*width x features), zeros where padded."""
        if slots is None:
            return tokens
        grid = tokens.new_zeros(batch * width, tokens.shape[-1])
        grid.index_copy_(0, slots, tokens)
        return grid

    def _heads_view(self, grid: torch.Tensor, batch: int, width: int) -> torch.Tensor:
        """(batch*width x hidden) -> (batch x heads x width x head_dim)."""
        return grid.view(batch, width, self._heads, self._head_dim).transpose(1, 2)


def _layout(
    rows: Sequence[Sequence[int]],
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, int, int
]:
    """The forward's inputs (CPU), built with numpy: a torch call per index tensor would
    take the GIL back once each, which is what the scripted forward avoids.

    ids and positions of the concatenated tokens, each text's first token, and, unless all
    texts have one length, each token's slot in the padded (batch x width) layout and the
    key mask."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    batch, width, total = len(rows), int(lengths.max()), int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
    starts = np.cumsum(lengths) - lengths
    positions = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    slots = key_mask = None
    if int(lengths.min()) < width:
        slot_array = np.repeat(np.arange(batch, dtype=np.int64), lengths) * width + positions
        mask = np.zeros(batch * width, dtype=np.bool_)
        mask[slot_array] = True
        slots = torch.from_numpy(slot_array)
        key_mask = torch.from_numpy(mask.reshape(batch, 1, 1, width))
    return (
        torch.from_numpy(ids),
        torch.from_numpy(positions),
        torch.from_numpy(starts),
        slots,
        key_mask,
        batch,
        width,
    )


def _fused_qkv(self_attention: Any) -> nn.Linear | None:
    """Query, key and value stacked into one projection, or None if not plain float."""
    projections = (self_attention.query, self_attention.key, self_attention.value)
    if not all(
        type(p) is nn.Linear and p.bias is not None and p.weight.is_floating_point()
        for p in projections
    ):
        return None
    first = projections[0]
    fused = nn.Linear(
        first.in_features,
        3 * first.out_features,
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in projections]))
        fused.bias.copy_(torch.cat([p.bias for p in projections]))
    return fused.eval().requires_grad_(False)

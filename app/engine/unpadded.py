"""The padding-free forward pass of a BERT classifier on the CPU, as one TorchScript graph.

A padded batch pays for every pad token in every Linear layer, almost all of a small
encoder's work on short texts. Here the texts of a batch are concatenated into one
(tokens x hidden) matrix; only attention is laid out per text (padded and masked). The
weights are the Hugging Face model's own; float32 scores match its padded forward to float
rounding (int8 quantizes each batch with one scale, so its scores move by ~1e-2). Compiled
with TorchScript, a pass runs without taking the GIL, so the event loop never stalls it; a
model TorchScript cannot compile runs the same module eagerly.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.nn import functional as F

from app.engine.onednn import PackedLinear, pack_linear_layers

logger = logging.getLogger(__name__)


def _linear_like(module: Any) -> bool:
    return isinstance(module, PackedLinear | DynamicInt8Linear) or type(module) is nn.Linear


def supports(model: Any) -> bool:
    """A BERT classifier with absolute positions, exact GELU and plain (or int8) Linears."""
    if type(model).__name__ != "BertForSequenceClassification":
        return False
    config = model.config
    bert = getattr(model, "bert", None)
    if bert is None or bert.pooler is None:
        return False
    layers = bert.encoder.layer
    linears = [bert.pooler.dense, model.classifier] + [
        module
        for layer in layers
        for module in (
            layer.attention.self.query,
            layer.attention.self.key,
            layer.attention.self.value,
            layer.attention.output.dense,
            layer.intermediate.dense,
            layer.output.dense,
        )
    ]
    return (
        getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(config, "is_decoder", False)
        and not getattr(config, "add_cross_attention", False)
        and getattr(config, "hidden_act", None) == "gelu"
        and all(_linear_like(m) for m in linears)
    )


class _SeparateQKV(nn.Module):
    """Query, key and value side by side, like the fused projection's output (int8 layers
    are not fused: each keeps its own scale)."""

    def __init__(self, self_attention: Any) -> None:
        super().__init__()
        self.query = self_attention.query
        self.key = self_attention.key
        self.value = self_attention.value

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.cat([self.query(hidden), self.key(hidden), self.value(hidden)], 1)


def _projection(self_attention: Any) -> nn.Module:
    """Query, key and value as one (3*hidden x hidden) float projection: one matrix multiply."""
    parts = (self_attention.query, self_attention.key, self_attention.value)
    if not all(type(p) is nn.Linear and p.bias is not None for p in parts):
        return _SeparateQKV(self_attention)
    first = parts[0]
    fused = nn.Linear(
        first.in_features,
        3 * first.out_features,
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused.eval().requires_grad_(False)


class _Layer(nn.Module):
    def __init__(self, layer: Any, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.eps = eps
        self.qkv = _projection(layer.attention.self)
        self.out = layer.attention.output.dense
        self.ln1_w: Tensor = layer.attention.output.LayerNorm.weight.detach()
        self.ln1_b: Tensor = layer.attention.output.LayerNorm.bias.detach()
        self.up = layer.intermediate.dense
        self.down = layer.output.dense
        self.ln2_w: Tensor = layer.output.LayerNorm.weight.detach()
        self.ln2_b: Tensor = layer.output.LayerNorm.bias.detach()

    def forward(
        self, hidden: Tensor, slots: Tensor | None, key_mask: Tensor | None, batch: int, width: int
    ) -> Tensor:
        size = hidden.size(1)
        tokens = self.qkv(hidden)
        if slots is not None:  # scatter into the padded (batch x width) layout
            grid = tokens.new_zeros(batch * width, tokens.size(1))
            grid.index_copy_(0, slots, tokens)
            tokens = grid
        parts = tokens.view(batch, width, 3, self.heads, size // self.heads).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(parts[0], parts[1], parts[2], attn_mask=key_mask)
        context = context.transpose(1, 2).reshape(batch * width, size)
        if slots is not None:
            context = context.index_select(0, slots)
        attended = F.layer_norm(
            self.out(context) + hidden, [size], self.ln1_w, self.ln1_b, self.eps
        )
        inner = F.gelu(self.up(attended))
        return F.layer_norm(self.down(inner) + attended, [size], self.ln2_w, self.ln2_b, self.eps)


class _Forward(nn.Module):
    """Embeddings, encoder layers, pooler and head on concatenated tokens."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        config = model.config
        bert = model.bert
        emb = bert.embeddings
        self.word: Tensor = emb.word_embeddings.weight.detach()
        self.position: Tensor = emb.position_embeddings.weight.detach()
        self.token_type: Tensor = emb.token_type_embeddings.weight.detach()[0]
        self.ln_w: Tensor = emb.LayerNorm.weight.detach()
        self.ln_b: Tensor = emb.LayerNorm.bias.detach()
        self.eps = float(emb.LayerNorm.eps)
        heads, eps = int(config.num_attention_heads), float(config.layer_norm_eps)
        self.layers = nn.ModuleList([_Layer(layer, heads, eps) for layer in bert.encoder.layer])
        self.pooler = bert.pooler.dense
        self.head = model.classifier

    def forward(
        self,
        ids: Tensor,
        positions: Tensor,
        starts: Tensor,
        slots: Tensor | None,
        key_mask: Tensor | None,
        batch: int,
        width: int,
    ) -> Tensor:
        hidden = (
            F.embedding(ids, self.word) + self.token_type + F.embedding(positions, self.position)
        )
        hidden = F.layer_norm(hidden, [hidden.size(1)], self.ln_w, self.ln_b, self.eps)
        for layer in self.layers:
            hidden = layer(hidden, slots, key_mask, batch, width)
        pooled = torch.tanh(self.pooler(hidden.index_select(0, starts)))
        logits: Tensor = self.head(pooled)
        return logits


class UnpaddedForward:
    """Logits for token-id rows of any lengths, without padding. `onednn`: float32 Linear
    layers run oneDNN's matrix multiply on weights packed once (app/engine/onednn.py)."""

    def __init__(self, model: Any, onednn: bool = False) -> None:
        if not supports(model):
            raise ValueError("not a BERT classifier the padding-free forward reproduces")
        module = _Forward(model).eval()
        self.onednn_layers = pack_linear_layers(module) if onednn else 0
        self.scripted = True
        try:
            with warnings.catch_warnings():  # deprecated in torch 2.13; torch is pinned
                warnings.simplefilter("ignore", DeprecationWarning)
                self._run: Any = torch.jit.script(module)
        except Exception:
            logger.warning("TorchScript cannot compile this model; it runs eagerly", exc_info=True)
            self._run = module
            self.scripted = False

    def __call__(self, rows: Sequence[Sequence[int]]) -> Tensor:
        logits: Tensor = self._run(*_layout(rows))
        return logits


def _layout(
    rows: Sequence[Sequence[int]],
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, int, int]:
    """Token ids and positions of the concatenated texts, each text's first token, and (unless
    all texts have one length) each token's slot in the padded layout and the key mask.
    Built with numpy: a torch call per index tensor would take the GIL once each."""
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

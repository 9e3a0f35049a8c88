"""The padding-free forward compiled with TorchScript, so a pass runs without the GIL.

Run eagerly, every operation of a pass goes back to Python and must take the GIL, which the
event loop holds while it handles HTTP: at concurrency 32 the inference threads waited for it
about a fifth of the time (BENCHMARKS.md). A TorchScript call releases the GIL for the whole
graph. The layers here are the same computation as `app/unpadded.py` (same weights, same
kernels: oneDNN float32 or dynamic int8) plus the embeddings, pooler and head; the index
tensors are built with numpy.

`torch.jit.script` is deprecated in torch 2.13 in favour of `torch.compile` / `torch.export`,
which need a C++ compiler at run time (compile) or an ahead-of-time build step (AOTInductor);
torch is pinned here, and a failed compilation falls back to the eager forward.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.nn import functional as F

from app.onednn import PackedLinear


class _Layer(nn.Module):
    def __init__(self, layer: Any, qkv: nn.Module, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.eps = eps
        # PackedLinear, nn.Linear or dynamic int8 Linear modules, all of which TorchScript
        # compiles; qkv is one fused layer or a _SeparateQKV.
        self.qkv = qkv
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
        if slots is not None:
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
    """Embeddings, encoder layers, pooler and head: `UnpaddedBert.logits` in one graph."""

    def __init__(self, model: Any, layers: list[_Layer]) -> None:
        super().__init__()
        bert = model.bert
        emb = bert.embeddings
        self.word: Tensor = emb.word_embeddings.weight.detach()
        self.position: Tensor = emb.position_embeddings.weight.detach()
        self.token_type: Tensor = emb.token_type_embeddings.weight.detach()[0]
        self.ln_w: Tensor = emb.LayerNorm.weight.detach()
        self.ln_b: Tensor = emb.LayerNorm.bias.detach()
        self.eps = float(emb.LayerNorm.eps)
        self.layers = nn.ModuleList(layers)
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


class _SeparateQKV(nn.Module):
    """Query, key and value as three layers, side by side like the fused projection's output.

    For dynamic int8 layers (`QUANTIZE=int8`), which are not fused: each keeps its own scale."""

    def __init__(self, self_attention: Any) -> None:
        super().__init__()
        self.query = self_attention.query
        self.key = self_attention.key
        self.value = self_attention.value

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.cat([self.query(hidden), self.key(hidden), self.value(hidden)], 1)


def _linear_like(module: Any) -> bool:
    return isinstance(module, PackedLinear | DynamicInt8Linear) or type(module) is nn.Linear


def supports_scripting(model: Any, fused_qkv: nn.ModuleList) -> bool:
    """Float or dynamic-int8 Linear layers, BERT's exact GELU and a plain head. The query,
    key and value projections are fused (float) or all three separate layers (int8)."""
    config = model.config
    layers = model.bert.encoder.layer
    if fused_qkv:
        projections_ok = len(fused_qkv) == len(layers) and all(_linear_like(m) for m in fused_qkv)
    else:
        projections_ok = all(
            _linear_like(getattr(layer.attention.self, name))
            for layer in layers
            for name in ("query", "key", "value")
        )
    return (
        projections_ok
        and getattr(config, "hidden_act", None) == "gelu"
        and all(
            _linear_like(layer.attention.output.dense)
            and _linear_like(layer.intermediate.dense)
            and _linear_like(layer.output.dense)
            for layer in layers
        )
        and _linear_like(model.bert.pooler.dense)
        and _linear_like(model.classifier)
    )


def script_forward(model: Any, fused_qkv: nn.ModuleList) -> torch.jit.ScriptModule:
    config = model.config
    encoder_layers = model.bert.encoder.layer
    projections: list[nn.Module] = (
        list(fused_qkv)
        if fused_qkv
        else [_SeparateQKV(layer.attention.self) for layer in encoder_layers]
    )
    layers = [
        _Layer(layer, qkv, int(config.num_attention_heads), float(config.layer_norm_eps))
        for layer, qkv in zip(encoder_layers, projections, strict=True)
    ]
    with warnings.catch_warnings():  # deprecated in favour of torch.compile/export: see above
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted: torch.jit.ScriptModule = torch.jit.script(_Forward(model, layers).eval())
    return scripted

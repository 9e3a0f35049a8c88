"""oneDNN matrix multiplies for the float32 Linear layers of a model on the CPU.

`nn.Linear` on the CPU runs MKL's sgemm; oneDNN's kernel on a weight reordered once is faster
on some CPUs and slower on others, so the loader times both at start-up
(app/engine/loader.py). torch exposes that kernel only as private ops
(`mkldnn::_reorder_linear_weight`, `mkldnn::_linear_pointwise`): a layer is swapped only after
its output matched `nn.Linear`'s on a probe, and a torch without them keeps `nn.Linear`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

# Rows the weight layout is tuned for; any row count works.
_LAYOUT_ROWS = 32
# oneDNN builds a kernel per row count: chunks of at most 128 rows, rounded by `bucket_rows`,
# keep it to 16 row counts, all cached (runtime.configure_process sizes the cache).
CHUNK_ROWS = 128


def available() -> bool:
    """Whether this torch build has the oneDNN ops (CPU builds with MKLDNN do)."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    ops = torch.ops.mkldnn
    try:
        return callable(ops._reorder_linear_weight) and callable(ops._linear_pointwise)
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """`nn.Linear` with its weight in oneDNN's layout; same outputs. TorchScript compiles it."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(
                linear.weight.detach(), _LAYOUT_ROWS
            )
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.chunk_rows = CHUNK_ROWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.size(0) <= self.chunk_rows:
            out = self._bucketed(flat)
        else:
            out = torch.cat([self._bucketed(part) for part in torch.split(flat, self.chunk_rows)])
        shape = list(x.shape[:-1])  # built step by step: TorchScript has no [*a, b]
        shape.append(self.out_features)
        return out.reshape(shape)

    def _bucketed(self, flat: torch.Tensor) -> torch.Tensor:
        rows = flat.size(0)
        padded = bucket_rows(rows)
        if padded != rows:
            flat = F.pad(flat, [0, 0, 0, padded - rows])
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            flat, self.packed, self.bias, "none", [], ""
        )
        return out[:rows] if padded != rows else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN"


def bucket_rows(rows: int) -> int:
    """Rows rounded up to one of a few counts (a multiple of 8 up to 64, then eight per
    doubling): a padding-free batch has a new row count almost every pass, and each new count
    costs a kernel build."""
    if rows <= 64:
        return max(8, (rows + 7) // 8 * 8)
    half = 64  # the largest power of two below rows
    while half * 2 < rows:
        half *= 2
    step = half // 8
    return (rows + step - 1) // step * step


def _packable(module: nn.Module) -> bool:
    return (
        type(module) is nn.Linear
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
    )


def _matches(linear: nn.Linear, packed: PackedLinear) -> bool:
    probe = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = F.linear(probe, linear.weight, linear.bias)
        got = packed(probe)
    return bool(got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-4))


def pack_linear_layers(root: nn.Module, skip: Collection[nn.Module] = ()) -> int:
    """Swap every float32 CPU `nn.Linear` under `root` for a `PackedLinear`, in place.

    `skip`: layers that never run (a packed copy would only cost memory and a probe).
    Returns how many were swapped; 0 when the ops are missing. A layer whose probe output
    differs keeps `nn.Linear` (and a warning says so)."""
    if not available():
        return 0
    skipped = {id(module) for module in skip}
    swapped = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or not _packable(child) or id(child) in skipped:
                continue
            try:
                packed = PackedLinear(child)
                matches = _matches(child, packed)
            except Exception as exc:  # a build whose ops exist but fail: keep torch's own
                logger.warning("oneDNN linear unavailable (%s); keeping nn.Linear", exc)
                return swapped
            if not matches:
                logger.warning("oneDNN linear differs from nn.Linear at %s; kept nn.Linear", name)
                continue
            setattr(parent, name, packed)
            swapped += 1
    return swapped

"""oneDNN Linear kernels: same outputs as nn.Linear, swapped only where they match."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from app.engine import onednn
from app.engine.hf import HFClassifier
from app.engine.onednn import PackedLinear, pack_linear_layers
from app.engine.unpadded import UnpaddedForward
from tests.conftest import make_settings
from tests.sharp_model import random_rows

pytestmark = pytest.mark.skipif(not onednn.available(), reason="torch built without oneDNN")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (2, 5, 48)])
def test_packed_linear_matches_nn_linear(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 80)
    x = torch.randn(*shape)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)


def test_a_linear_without_bias_packs_too() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(16, 8, bias=False)
    x = torch.randn(5, 16)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)


def test_the_packed_forward_keeps_the_scores(sharp_model: Path) -> None:
    classifier = HFClassifier(make_settings(sharp_model, torch_threads=1))
    plain = UnpaddedForward(classifier.model)
    packed = UnpaddedForward(classifier.model, onednn=True)
    # Per BERT layer the fused query/key/value, attention output, up and down projections,
    # then the pooler and the head: the separate query/key/value layers never run.
    assert (plain.onednn_layers, packed.onednn_layers) == (0, 2 * 4 + 2)
    assert packed.scripted
    # The model itself keeps its nn.Linear layers (the padded forward still uses them).
    assert not any(isinstance(m, PackedLinear) for m in classifier.model.modules())
    # Mixed lengths, a lone text, and more rows than one oneDNN chunk (40 texts, ~800 tokens).
    with torch.inference_mode():
        for rows in (random_rows(7, seed=1), random_rows(1, seed=2), random_rows(40, seed=3)):
            torch.testing.assert_close(packed(rows), plain(rows), rtol=1e-5, atol=1e-5)


def test_int8_and_bfloat16_layers_are_not_packed(tiny_model: Path) -> None:
    for overrides in ({"quantize": "int8"}, {"dtype": "bfloat16"}):
        classifier = HFClassifier(make_settings(tiny_model, torch_threads=1, **overrides))
        assert UnpaddedForward(classifier.model, onednn=True).onednn_layers == 0


def test_a_layer_that_does_not_match_keeps_nn_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    monkeypatch.setattr(onednn, "_matches", lambda linear, packed: linear.out_features == 2)
    assert pack_linear_layers(model) == 1
    assert type(model[0]) is nn.Linear and type(model[2]) is PackedLinear


def test_skipped_layers_stay_as_they_are() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert pack_linear_layers(model, skip=[model[0]]) == 1
    assert type(model[0]) is nn.Linear and type(model[2]) is PackedLinear


def test_ops_that_fail_leave_nn_linear_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(8, 2))

    def broken(*args: Any) -> Any:
        raise NotImplementedError("no kernel for this CPU")

    monkeypatch.setattr(onednn, "_matches", broken)
    assert pack_linear_layers(model) == 0 and type(model[0]) is nn.Linear


def test_without_the_ops_nothing_is_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(8, 2))
    monkeypatch.setattr(onednn, "available", lambda: False)
    assert pack_linear_layers(model) == 0 and type(model[0]) is nn.Linear


def test_two_threads_share_the_packed_weights(sharp_model: Path) -> None:
    classifier = HFClassifier(make_settings(sharp_model, torch_threads=1, inference_workers=2))
    classifier.use_forward("unpadded_onednn", UnpaddedForward(classifier.model, onednn=True))
    rows = random_rows(6, seed=9)
    width = max(map(len, rows))
    want = classifier.forward(rows, width)
    results: list[Any] = []

    def work() -> None:
        results.extend(classifier.forward(rows, width) for _ in range(20))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 40
    for got in results:
        np.testing.assert_allclose(got, want, atol=1e-6)


_GROWTH_SCRIPT = """
import os
from app.engine import runtime

runtime.configure_process()  # sets the cache bounds before torch loads, as `python -m app` does
print(os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"], os.environ["LRU_CACHE_CAPACITY"])
import torch
from torch import nn
from app.engine.onednn import PackedLinear

torch.set_num_threads(1)

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

layers = [PackedLinear(nn.Linear(384, n)) for n in (1152, 384, 1536)]
with torch.inference_mode():
    for rows in range(1, 129):
        [layer(torch.randn(rows, 384)) for layer in layers]
    start = rss_mib()
    for rows in range(129, 1200, 6):  # a new row count every pass, as padding-free batches have
        [layer(torch.randn(rows, 384)) for layer in layers]
print(rss_mib() - start)
"""


@pytest.mark.slow
def test_memory_stays_bounded_across_row_counts() -> None:
    # Unbucketed, each row count cost ~1.5 MiB here: 179 counts would grow it ~250 MiB.
    out = subprocess.run(
        [sys.executable, "-c", _GROWTH_SCRIPT],
        env={k: v for k, v in os.environ.items() if not k.endswith("CACHE_CAPACITY")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    bounds, growth = out.stdout.strip().splitlines()[-2:]
    assert bounds.split() == ["256", "256"]
    assert float(growth) < 100, growth


def test_row_counts_fall_into_few_buckets() -> None:
    counts = {onednn.bucket_rows(rows) for rows in range(1, onednn.CHUNK_ROWS + 1)}
    assert len(counts) == 16 and max(counts) == onednn.CHUNK_ROWS
    assert [onednn.bucket_rows(rows) for rows in (1, 8, 9, 64, 65, 72, 73, 128)] == [
        8, 8, 16, 64, 72, 72, 80, 128,
    ]  # fmt: skip
    for rows in range(1, 9000):
        assert rows <= onednn.bucket_rows(rows) <= rows + max(7, rows // 8)


@pytest.mark.parametrize("rows", [1, 9, 64, 65, 128, 129, 300])
def test_rounded_and_chunked_rows_give_the_same_outputs(rows: int) -> None:
    torch.manual_seed(rows)
    linear = nn.Linear(24, 40)
    x = torch.randn(rows, 24)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)

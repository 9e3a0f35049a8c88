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

from app import onednn
from app.classifier import HFClassifier
from app.onednn import PackedLinear, pack_linear_layers
from tests.conftest import make_settings

pytestmark = pytest.mark.skipif(not onednn.available(), reason="torch built without oneDNN")

TEXTS = ["I love this movie", "the flight was terrible and late", "not bad", "ok"]


def _scores(classifier: HFClassifier, texts: list[str]) -> Any:
    rows = [e.ids for e in classifier.tokenize(texts, truncate=True)]
    return classifier.forward(rows, max(map(len, rows)))


@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (2, 5, 48)])
def test_packed_linear_matches_nn_linear(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 80)
    x = torch.randn(*shape)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("unpadded", ["auto", "off"])
def test_the_service_swaps_every_float_linear_and_keeps_its_scores(
    tiny_model: Path, unpadded: str
) -> None:
    packed = HFClassifier(make_settings(tiny_model, unpadded=unpadded))
    plain = HFClassifier(make_settings(tiny_model, unpadded=unpadded, onednn_linear="off"))
    linears = [m for m in plain._model.modules() if type(m) is nn.Linear]
    fused = len(packed._unpadded.fused_qkv) if packed._unpadded is not None else 0
    # With fused projections the separate query/key/value layers never run: left unpacked.
    unused = 3 * fused
    assert packed.onednn_layers == len(linears) - unused + fused and plain.onednn_layers == 0
    left = [m for m in packed._model.modules() if type(m) is nn.Linear]
    assert len(left) == unused
    if packed._unpadded is not None:
        assert {id(m) for m in left} == {id(m) for m in packed._unpadded.replaced_projections()}
    assert packed.info.parameters == plain.info.parameters
    np.testing.assert_allclose(_scores(packed, TEXTS), _scores(plain, TEXTS), atol=1e-5)


def test_int8_layers_keep_their_own_kernels(tiny_model: Path) -> None:
    assert HFClassifier(make_settings(tiny_model, quantize="int8")).onednn_layers == 0


def test_a_layer_that_does_not_match_keeps_nn_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    monkeypatch.setattr(onednn, "_matches", lambda linear, packed: linear.out_features == 2)
    assert pack_linear_layers(model) == 1
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


def test_two_threads_share_the_packed_weights(tiny_model: Path) -> None:
    classifier = HFClassifier(make_settings(tiny_model, inference_workers=2))
    want = _scores(classifier, TEXTS)
    results: list[Any] = []

    def work() -> None:
        results.extend(_scores(classifier, TEXTS) for _ in range(20))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 40
    for got in results:
        np.testing.assert_allclose(got, want, atol=1e-6)


_GROWTH_SCRIPT = """
import app  # sets the cache bounds before torch loads, as the service does
import torch
from torch import nn
from app.onednn import PackedLinear

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

layers = [PackedLinear(nn.Linear(384, n)) for n in (1152, 384, 1536)]
with torch.inference_mode():
    for rows in range(1, 129):
        [layer(torch.randn(rows, 384)) for layer in layers]
    start = rss_mib()
    for rows in range(129, 1200, 3):  # a new row count every pass, as padding-free batches have
        [layer(torch.randn(rows, 384)) for layer in layers]
print(rss_mib() - start)
"""


def test_memory_stays_bounded_across_row_counts() -> None:
    # Unbucketed, each row count cost ~1.5 MiB here: 357 counts grew the process ~500 MiB.
    out = subprocess.run(
        [sys.executable, "-c", _GROWTH_SCRIPT],
        env={k: v for k, v in os.environ.items() if not k.endswith("CACHE_CAPACITY")},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    growth_mib = float(out.stdout.strip().splitlines()[-1])
    assert growth_mib < 100, growth_mib


def test_row_counts_fall_into_few_buckets() -> None:
    counts = {onednn.bucket_rows(rows) for rows in range(1, onednn.CHUNK_ROWS + 1)}
    assert len(counts) == 16 and max(counts) == onednn.CHUNK_ROWS
    for rows in range(1, 9000):
        assert rows <= onednn.bucket_rows(rows) <= rows + max(7, rows // 8)


@pytest.mark.parametrize("rows", [1, 9, 64, 65, 128, 129, 300])
def test_rounded_and_chunked_rows_give_the_same_outputs(rows: int) -> None:
    torch.manual_seed(rows)
    linear = nn.Linear(24, 40)
    x = torch.randn(rows, 24)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)

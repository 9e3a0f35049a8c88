"""A broken model folder never serves: loading names the cause in one line.

The broken folders are copies of the tiny model with one thing wrong; the integration tests
(tests/integration/test_broken_models.py) start the real server on the same folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.engine.base import ModelLoadError
from app.engine.folder import MAX_SPARE_ROWS, check_vocabulary
from app.engine.loader import load_classifier
from tests.conftest import one_thread_settings

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "model.safetensors"
RESIZED = "bert.encoder.layer.1.output.dense.weight"  # (32, 64) in the tiny model


def _rewrite_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(folder / WEIGHTS)
    change(tensors)
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})


def _edit_json(file: Path, **fields: object) -> None:
    file.write_text(json.dumps(json.loads(file.read_text()) | fields))


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()


def _foreign_tokenizer(folder: Path) -> None:
    """Another model's tokenizer: more tokens than the embedding table has rows."""
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    for i in range(100):
        vocab[f"extra{i}"] = len(vocab)
    (folder / "tokenizer.json").write_text(json.dumps(data))


def _no_head(folder: Path) -> None:
    def drop_head(tensors: dict[str, torch.Tensor]) -> None:
        for name in [k for k in tensors if k.startswith("classifier.")]:
            del tensors[name]

    _rewrite_weights(folder, drop_head)


def _shape_mismatch(folder: Path) -> None:
    def resize(tensors: dict[str, torch.Tensor]) -> None:
        rows, columns = tensors[RESIZED].shape
        tensors[RESIZED] = torch.zeros(rows, columns - 16)

    _rewrite_weights(folder, resize)


def _unreadable(folder: Path) -> None:
    (folder / WEIGHTS).chmod(0)


def _truncated(folder: Path) -> None:
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])


def _corrupt(folder: Path) -> None:
    size = (folder / WEIGHTS).stat().st_size
    (folder / WEIGHTS).write_bytes((bytes(range(256)) * (size // 256 + 1))[:size])


def _other_architecture(folder: Path) -> None:
    _edit_json(
        folder / "config.json", model_type="vit", architectures=["ViTForImageClassification"]
    )


def _masked_lm(folder: Path) -> None:
    _edit_json(folder / "config.json", architectures=["BertForMaskedLM"])
    _no_head(folder)


def _other_model_type(folder: Path) -> None:
    _edit_json(
        folder / "config.json",
        model_type="roberta",
        architectures=["RobertaForSequenceClassification"],
    )


def _no_weights(folder: Path) -> None:
    (folder / WEIGHTS).unlink()


def _bad_tokenizer_config(folder: Path) -> None:
    (folder / "tokenizer_config.json").write_text("{ not json")


# case -> (how to break the folder, what the one line must say after "MODEL_PATH=...: ")
BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "no_tokenizer": (
        _no_tokenizer,
        "the tokenizer is not the model's own: 5 tokens (ids up to 4) for an embedding table "
        "of 61 rows (the folder has no tokenizer.json)",
    ),
    "foreign_tokenizer": (
        _foreign_tokenizer,
        "the tokenizer is not the model's own: 161 tokens (ids up to 160) for an embedding "
        "table of 61 rows",
    ),
    "no_head": (
        _no_head,
        "model.safetensors lacks 2 weights of the model, which would start at random: "
        "classifier.bias, classifier.weight",
    ),
    "shape_mismatch": (
        _shape_mismatch,
        f"model.safetensors: {RESIZED} has shape [32, 48], the model in config.json needs [32, 64]",
    ),
    "unreadable": (
        _unreadable,
        "cannot read model.safetensors: Permission denied for the server's user (uid ",
    ),
    "truncated": (_truncated, "model.safetensors is truncated: "),
    "corrupt": (_corrupt, "model.safetensors is not a safetensors file or is cut short: "),
    "other_architecture": (
        _other_architecture,
        "not a sequence-classification model: config.json has model_type 'vit' "
        "(ViTForImageClassification), for which transformers has no sequence classifier",
    ),
    "masked_lm": (
        _masked_lm,
        "not a sequence-classification model: config.json names BertForMaskedLM and "
        "model.safetensors lacks classifier.bias, classifier.weight",
    ),
    "other_model_type": (
        _other_model_type,
        "model.safetensors lacks 41 weights of the model, which would start at random: "
        "classifier.dense.bias, classifier.dense.weight, classifier.out_proj.bias, ...; it holds "
        "41 the model does not use (bert.embeddings.LayerNorm.bias, "
        "bert.embeddings.LayerNorm.weight, bert.embeddings.position_embeddings.weight, ...): "
        "does config.json's model_type match the weights?",
    ),
    "no_weights": (
        _no_weights,
        "no weights: the folder has none of model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin, pytorch_model.bin.index.json",
    ),
    "bad_tokenizer_config": (
        _bad_tokenizer_config,
        "tokenizer_config.json is not valid JSON: Expecting property name enclosed in double "
        "quotes: line 1 column 3 (char 2)",
    ),
}


def broken_copy(source: Path, dest: Path, case: str) -> Path:
    shutil.copytree(source, dest)
    BROKEN[case][0](dest)
    return dest


def reader_prefix() -> list[str]:
    """A command prefix under which a mode-000 file cannot be opened, as for a file of another
    user: nothing for a non-root user; for root, setpriv takes away the capabilities that let
    root open any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [setpriv or "setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if setpriv is None or subprocess.run([*prefix, "true"], check=False).returncode != 0:
        pytest.skip("root, and setpriv cannot drop the capabilities that read any file")
    return prefix


def assert_one_line_naming(message: str, folder: Path, cause: str) -> None:
    prefix = f"cannot load the model from MODEL_PATH={folder}: "
    assert message.startswith(prefix), message
    rest = message.removeprefix(prefix)
    assert rest.startswith(cause), rest
    assert "\n" not in message
    assert str(folder) not in rest and str(folder.resolve()) not in rest  # file names only


_LOAD_IN_CHILD = """
import sys
from pathlib import Path
from app.config import Settings
from app.engine.base import ModelLoadError
from app.engine.loader import load_classifier
settings = Settings(_env_file=None, model_path=Path(sys.argv[1]), torch_threads=1, warmup=False)
try:
    load_classifier(settings)
except ModelLoadError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_folder_fails_to_load_with_one_line_naming_the_cause(
    tiny_model: Path, tmp_path: Path, case: str, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = broken_copy(tiny_model, tmp_path / case, case)
    if case == "unreadable":  # loaded in a child that, like another user, cannot read it
        child = subprocess.run(
            [*reader_prefix(), sys.executable, "-c", _LOAD_IN_CHILD, str(folder)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert child.returncode == 3, child.stderr
        message = child.stdout.strip()
    else:
        with pytest.raises(ModelLoadError) as caught:
            load_classifier(one_thread_settings(folder))
        message = str(caught.value)
    assert_one_line_naming(message, folder, BROKEN[case][1])
    assert "LOAD REPORT" not in capfd.readouterr().err  # transformers' table is not logged


def test_a_folder_that_lost_its_config_after_the_settings_check(
    tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model, folder)
    settings = one_thread_settings(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError) as caught:
        load_classifier(settings)
    assert_one_line_naming(str(caught.value), folder, "no config.json")


def test_a_missing_shard_is_named(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_model, folder)
    names = list(load_file(folder / WEIGHTS))
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / WEIGHTS).unlink()
    with pytest.raises(ModelLoadError) as caught:
        load_classifier(one_thread_settings(folder))
    assert_one_line_naming(
        str(caught.value),
        folder,
        "model-00001-of-00001.safetensors, listed in model.safetensors.index.json, is missing",
    )


def test_a_whole_folder_loads_without_warnings(
    tiny_model: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    classifier = load_classifier(one_thread_settings(tiny_model, forward="padded"))
    assert classifier.info.path == tiny_model.name == "single"  # the folder's name, not its path
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert "LOAD REPORT" not in capfd.readouterr().err


class _Sized:
    """Just what check_vocabulary reads: the size and the ids."""

    def __init__(self, count: int, highest: int | None = None) -> None:
        self.count = count
        top = count - 1 if highest is None else highest
        self.vocab = {f"t{i}": i for i in range(count - 1)} | {"last": top}

    def __len__(self) -> int:
        return self.count

    def get_vocab(self) -> dict[str, int]:
        return self.vocab


@pytest.mark.parametrize(
    ("tokens", "rows"),
    [
        (30522, 30522),  # BERT: exact
        (50257, 50304),  # GPT-2: padded to a multiple of 64
        (50295, 51200),  # Phi-2: padded to a multiple of 1024
        (32100, 32128),  # T5: padded to a multiple of 128
        (100, 128),  # a small vocabulary padded to a multiple of 64
    ],
)
def test_a_table_padded_to_a_round_size_is_the_tokenizers_own(tokens: int, rows: int) -> None:
    check_vocabulary(_Sized(tokens), rows, has_tokenizer_file=True)


@pytest.mark.parametrize(
    ("tokens", "rows", "highest"),
    [
        (5, 30522, None),  # the stand-in transformers builds when tokenizer files are missing
        (5, 61, None),  # the same against the tiny model: the table is over twice the tokenizer
        (28996, 30522, None),  # a cased BERT tokenizer for an uncased model
        (30522, 30522 - 1, None),  # one token has no row
        (1000, 1000, 1000),  # an id past the table, though the counts agree
        (50000, 50000 + MAX_SPARE_ROWS, None),  # more spare rows than any padding explains
    ],
)
def test_a_tokenizer_that_does_not_fit_the_table_is_refused(
    tokens: int, rows: int, highest: int | None
) -> None:
    with pytest.raises(ModelLoadError, match="the tokenizer is not the model's own"):
        check_vocabulary(_Sized(tokens, highest), rows, has_tokenizer_file=True)

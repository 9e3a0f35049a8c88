"""Loading a `save_pretrained` folder so that a broken one never serves: every file readable,
the weights whole and all used, the tokenizer the model's own; each failure one line."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from app.engine.base import ModelLoadError

logger = logging.getLogger(__name__)

T = TypeVar("T")


# Weight files transformers reads, in its order of preference.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# JSON files transformers reads: a broken one is named here rather than deep in a parser.
JSON_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# Spare embedding rows a tokenizer may leave: tables are padded to a round size
# (GPT-2 50257 -> 50304, Phi-2 50295 -> 51200), never by this many or past twice the vocabulary.
MAX_SPARE_ROWS = 1024
_LISTED = 3  # weight names quoted in a message


def load_pretrained(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """The folder's tokenizer and sequence classifier, checked to belong together with no
    weight left at random; anything else is a ModelLoadError of one line naming the cause."""
    try:
        weights = check_folder(path)
        config = _load_step("config.json", path, lambda: _config(path))
        tokenizer: Any = _load_step(
            "tokenizer", path, lambda: AutoTokenizer.from_pretrained(path, local_files_only=True)
        )
        with _without_load_report():
            model, loading = _load_step(
                weights,
                path,
                lambda: AutoModelForSequenceClassification.from_pretrained(
                    path,
                    config=config,
                    local_files_only=True,
                    dtype=dtype,
                    output_loading_info=True,
                    ignore_mismatched_sizes=True,  # reported below, in one line
                ),
            )
        check_weights(weights, config, loading)
        rows = int(model.get_input_embeddings().weight.shape[0])
        check_vocabulary(tokenizer, rows, has_tokenizer_file=(path / "tokenizer.json").is_file())
    except ModelLoadError as exc:
        raise ModelLoadError(f"cannot load the model from MODEL_PATH={path}: {exc}") from exc
    return tokenizer, model


def check_folder(path: Path) -> str:
    """Every file readable, its JSON parsing and the weights whole; returns the weights
    file's name."""
    try:
        files = sorted(p for p in path.iterdir() if p.is_file())
    except OSError as exc:
        raise ModelLoadError(_os_error(exc, path)) from exc
    for file in files:
        try:
            with file.open("rb"):
                pass
        except OSError as exc:
            raise ModelLoadError(_os_error(exc, path)) from exc
    names = {file.name for file in files}
    if "config.json" not in names:
        raise ModelLoadError("no config.json: not a save_pretrained folder")
    for name in JSON_FILES:
        if name in names:
            check_json(path / name)
    weights = next((name for name in WEIGHT_FILES if name in names), None)
    if weights is None:
        raise ModelLoadError(f"no weights: the folder has none of {', '.join(WEIGHT_FILES)}")
    for shard in _safetensors_files(path, weights):
        check_safetensors(path / shard)
    return weights


def check_json(file: Path) -> None:
    try:
        json.loads(file.read_bytes())
    except ValueError as exc:
        raise ModelLoadError(f"{file.name} is not valid JSON: {exc}") from exc


def _safetensors_files(path: Path, weights: str) -> list[str]:
    if weights == "model.safetensors":
        return [weights]
    if weights != "model.safetensors.index.json":
        return []
    try:
        shards = sorted(set(json.loads((path / weights).read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{weights} is not a weight index (no weight_map)") from exc
    for shard in shards:
        if not (path / shard).is_file():
            raise ModelLoadError(f"{shard}, listed in {weights}, is missing")
    return [str(shard) for shard in shards]


def check_safetensors(file: Path) -> None:
    """A header that parses and tensors that all lie inside the file (the header is read,
    not the tensors): a cut copy or another file under the name fails here."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if length <= 0 or length > size - 8:
            raise ModelLoadError(
                f"{file.name} is not a safetensors file or is cut short: {size} bytes, "
                "no valid header"
            )
        try:
            header = json.loads(handle.read(length))
            end = max(
                (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ModelLoadError(f"{file.name} is not a safetensors file: bad header") from exc
    if 8 + length + end > size:
        raise ModelLoadError(
            f"{file.name} is truncated: {size} bytes, its header describes {8 + length + end}"
        )


def _config(path: Path) -> Any:
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        named = ", ".join(config.architectures or []) or "no architecture"
        raise ModelLoadError(
            f"not a sequence-classification model: config.json has model_type "
            f"{config.model_type!r} ({named}), for which transformers has no sequence classifier"
        )
    return config


def check_weights(weights: str, config: Any, loading: dict[str, Any]) -> None:
    """No weight of the model may be newly initialised: a missing classification head or a
    weight of another shape would serve random scores."""
    mismatched = sorted(loading.get("mismatched_keys") or (), key=lambda entry: str(entry[0]))
    if mismatched:
        name, found, needed = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ModelLoadError(
            f"{weights}: {name} has shape {list(found)}, the model in config.json needs "
            f"{list(needed)}{more}"
        )
    missing = sorted(loading.get("missing_keys") or ())
    if not missing:
        unexpected = sorted(loading.get("unexpected_keys") or ())
        if unexpected:
            logger.warning(
                "%s has %d weights the model does not use (%s); they are ignored",
                weights,
                len(unexpected),
                _some(unexpected),
            )
        return
    architecture = (config.architectures or [""])[0]
    if architecture and not architecture.endswith("ForSequenceClassification"):
        raise ModelLoadError(
            f"not a sequence-classification model: config.json names {architecture} and "
            f"{weights} lacks {_some(missing)}"
        )
    unexpected = sorted(loading.get("unexpected_keys") or ())
    hint = (
        f"; it holds {len(unexpected)} the model does not use ({_some(unexpected)}): "
        "does config.json's model_type match the weights?"
        if unexpected
        else ""
    )
    raise ModelLoadError(
        f"{weights} lacks {len(missing)} weights of the model, which would start at random: "
        f"{_some(missing)}{hint}"
    )


def check_vocabulary(tokenizer: Any, rows: int, *, has_tokenizer_file: bool) -> None:
    """The tokenizer is the model's own: all its ids fit the embedding table, and it covers the
    table but for the padding some models round the table up with."""
    count = len(tokenizer)
    highest = max(tokenizer.get_vocab().values(), default=-1)
    spare = rows - count
    if highest < rows and 0 <= spare < min(MAX_SPARE_ROWS, count):
        return
    hint = "" if has_tokenizer_file else " (the folder has no tokenizer.json)"
    raise ModelLoadError(
        f"the tokenizer is not the model's own: {count} tokens (ids up to {highest}) for an "
        f"embedding table of {rows} rows{hint}"
    )


def _load_step(what: str, path: Path, step: Callable[[], T]) -> T:
    """Run one loading step; its failure becomes one line that names `what` failed."""
    try:
        return step()
    except ModelLoadError:
        raise
    except OSError as exc:
        if exc.filename:
            raise ModelLoadError(_os_error(exc, path)) from exc
        raise ModelLoadError(f"{what}: {_first_line(exc, path)}") from exc
    except Exception as exc:  # any broken folder must end in one clear line
        raise ModelLoadError(f"{what}: {_first_line(exc, path)}") from exc


def _os_error(exc: OSError, path: Path) -> str:
    name = _file_name(str(exc.filename), path) if exc.filename else "MODEL_PATH"
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, PermissionError):
        reason = f"{reason} for the server's user (uid {os.getuid()})"
    return f"cannot read {name}: {reason}"


def _first_line(exc: BaseException, path: Path) -> str:
    text = str(exc).strip()
    return _relative(text.splitlines()[0], path) if text else type(exc).__name__


def _file_name(filename: str, path: Path) -> str:
    """A file's name relative to the model folder (the folder itself is MODEL_PATH); links
    are not followed, so a cache snapshot's file keeps its name rather than its blob's."""
    file, folder = Path(os.path.abspath(filename)), Path(os.path.abspath(path))
    if file == folder:
        return "MODEL_PATH"
    return str(file.relative_to(folder)) if file.is_relative_to(folder) else file.name


def _relative(text: str, path: Path) -> str:
    """The folder's files by their names within it: a message carries no absolute path."""
    for folder in sorted({str(path.resolve()), str(path)}, key=len, reverse=True):
        if os.sep in folder:  # a bare name like "." could match anywhere
            text = text.replace(folder + os.sep, "").replace(folder, "MODEL_PATH")
    return text


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return f"{shown}, ..." if len(names) > _LISTED else shown


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextmanager
def _without_load_report() -> Iterator[None]:
    """transformers logs a table of missing or mismatched weights; check_weights says it
    in one line instead."""
    source = logging.getLogger("transformers.modeling_utils")
    quiet = _DropLoadReport()
    source.addFilter(quiet)
    try:
        yield
    finally:
        source.removeFilter(quiet)

"""A Hugging Face `save_pretrained` sequence classifier: load it, tokenize, run it."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from app.config import ForwardPath, Settings
from app.engine.base import (
    DeviceOutOfMemory,
    Encoded,
    FloatArray,
    ModelInfo,
    ModelLoadError,
    activate,
    activation_for,
)
from app.engine.folder import load_pretrained
from app.engine.runtime import cpu_count, default_workers, trim_heap
from app.engine.tokenizer import TextEncoder
from app.engine.unpadded import UnpaddedForward

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SANE_MAX_LENGTH = 100_000  # tokenizers without a limit report ~1e30


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelLoadError("TEXTCLF_DEVICE=cuda but no CUDA device is visible to torch")
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype: torch.dtype = getattr(torch, requested)
    if device.type == "cpu" and dtype == torch.float16:
        raise ModelLoadError(
            "TEXTCLF_DTYPE=float16 is not supported on CPU; use float32 or bfloat16"
        )
    return dtype


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 weights for every Linear layer; activations are quantized per batch."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # the eager API is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]


def folder_digest(path: Path) -> str:
    """sha256 over the names and bytes of the folder's files: identifies what is served."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def build_revision(path: Path) -> str | None:
    """The build's cache key when the folder records one (model/build.py)."""
    try:
        data = json.loads((path / "build_info.json").read_text())
    except (OSError, ValueError):
        return None
    value = data.get("cache_key") if isinstance(data, dict) else None
    return str(value) if value else None


class HFClassifier:
    """The model on one device, with the padded forward or the padding-free one."""

    info: ModelInfo  # set by app.engine.loader once the forward pass is chosen

    def __init__(self, settings: Settings) -> None:
        path = settings.model_path
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        if settings.quantize == "int8" and self.device.type != "cpu":
            raise ModelLoadError("TEXTCLF_QUANTIZE=int8 is a CPU option; use float16 on CUDA")
        self.quantize = settings.quantize
        self.workers = settings.inference_workers or default_workers(self.device.type)
        self.threads = settings.torch_threads or max(1, cpu_count() // self.workers)
        torch.set_num_threads(self.threads)
        logger.info(
            "%d inference workers x %d threads (%d CPU cores usable; torch %s, CPU capability %s)",
            self.workers,
            self.threads,
            cpu_count(),
            torch.__version__,
            torch.backends.cpu.get_cpu_capability(),
        )
        self._per_thread = threading.local()
        tokenizer, model = load_pretrained(path, self.dtype)
        self.model: Any = model.to(self.device).eval()
        if settings.quantize == "int8":
            self.model = quantize_int8(self.model)
        config = self.model.config
        id2label = {int(k): str(v) for k, v in config.id2label.items()}
        self.labels = [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]
        self.problem_type = config.problem_type or (
            "single_label_classification" if config.num_labels > 1 else "regression"
        )
        self.activation = activation_for(config.problem_type, config.num_labels)
        self.max_length = self._max_length(tokenizer, settings.max_length)
        self.encoder = TextEncoder(tokenizer, self.max_length)
        pad_id = tokenizer.pad_token_id
        self.pad_id = int(pad_id) if pad_id is not None else 0
        self.filler_id = self.pad_id + 1
        self.pad_multiple = 8 if self.device.type == "cuda" else 1
        self.architecture = (config.architectures or [type(model).__name__])[0]
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.path: ForwardPath = "padded"
        self._unpadded: UnpaddedForward | None = None

    @property
    def padding_free(self) -> bool:
        return self._unpadded is not None

    def use_forward(self, path: ForwardPath, unpadded: UnpaddedForward | None) -> None:
        """Serve with `path` from now on (`unpadded`: its built forward, or None if padded)."""
        self.path = path
        self._unpadded = unpadded

    def _max_length(self, tokenizer: Any, requested: int | None) -> int:
        limits = [int(tokenizer.model_max_length)]
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(positions, int):
            limits.append(positions)
        sane = [x for x in limits if x < _SANE_MAX_LENGTH]
        model_limit = min(sane) if sane else 512  # neither the tokenizer nor the config says
        if requested is None:
            return model_limit
        if requested > model_limit:
            raise ModelLoadError(
                f"TEXTCLF_MAX_LENGTH={requested} exceeds the model's limit {model_limit}"
            )
        return requested

    def tokenize(self, texts: Sequence[str], truncate: bool) -> list[Encoded]:
        return self.encoder.tokenize(texts, truncate)

    def forward(self, rows: Sequence[Sequence[int]], width: int) -> FloatArray:
        """Scores (after the model's activation) for rows padded to `width` tokens."""
        if self.device.type == "cpu":
            self._use_threads(self.threads)
        try:
            with torch.inference_mode():
                if self._unpadded is not None:
                    logits = self._unpadded(rows)
                else:
                    logits = self._padded(rows, width)
                return activate(logits.float().cpu().numpy(), self.activation)
        except torch.OutOfMemoryError:
            pass  # raised below: in the handler, its traceback keeps the pass's tensors alive
        raise DeviceOutOfMemory(f"out of memory for {len(rows)} texts of up to {width} tokens")

    def _padded(self, rows: Sequence[Sequence[int]], width: int) -> torch.Tensor:
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        input_ids = torch.from_numpy(ids)
        attention_mask = torch.from_numpy(mask)
        if self.device.type == "cuda":
            input_ids = input_ids.pin_memory().to(self.device, non_blocking=True)
            attention_mask = attention_mask.pin_memory().to(self.device, non_blocking=True)
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits

    def _use_threads(self, count: int) -> None:
        """Intra-op threads for the calling thread's passes only.

        torch copies its process-wide count into a thread on that thread's first parallel
        call: reading it first makes that happen now, so another thread cannot undo this."""
        if getattr(self._per_thread, "threads", None) == count:
            return
        torch.get_num_threads()
        torch.set_num_threads(count)
        self._per_thread.threads = count

    def release_cached_memory(self) -> None:
        """Give back what large passes left cached: CUDA's blocks (after an out-of-memory
        error, before the next batch) or the host heap's free pages (when idle)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        else:
            trim_heap()

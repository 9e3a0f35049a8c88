"""The Hugging Face sequence classifier: load, tokenize, forward. Knows nothing about HTTP."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.config import Settings
from app.onednn import pack_linear_layers
from app.scoring import Activation, FloatArray, activate, activation_for
from app.unpadded import UnpaddedBert, supports

logger = logging.getLogger(__name__)

# Requests of up to this many texts are encoded one by one, holding the GIL (see _encode).
_ONE_BY_ONE = 8

_SANE_MAX_LENGTH = 100_000  # tokenizers without a limit report ~1e30


class ModelLoadError(Exception):
    """The model folder cannot be served; the message says what to fix."""


@dataclass(frozen=True)
class Encoded:
    """One tokenized text, already cut to the model's limit when truncation was asked for."""

    ids: list[int]
    num_tokens: int
    truncated: bool


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    folder_sha256: str
    revision: str | None
    architecture: str
    labels: list[str]
    problem_type: str
    activation: Activation
    max_length: int
    device: str
    dtype: str
    parameters: int
    # Linear layers running oneDNN's kernel (app/onednn.py); 0 = torch's own everywhere.
    onednn_linear_layers: int = 0


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelLoadError("DEVICE=cuda but no CUDA device is visible to torch")
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype: torch.dtype = getattr(torch, requested)
    if device.type == "cpu" and dtype == torch.float16:
        raise ModelLoadError("DTYPE=float16 is not supported on CPU; use float32 or bfloat16")
    return dtype


def quantize_int8(model: Any, device: torch.device) -> Any:
    """Dynamic int8 weights for every Linear layer; activations are quantized per batch."""
    if device.type != "cpu":
        raise ModelLoadError("QUANTIZE=int8 is a CPU option; use DTYPE=float16 on CUDA")
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


def _revision(path: Path) -> str | None:
    info = path / "build_info.json"
    if not info.is_file():
        return None
    try:
        data = json.loads(info.read_text())
    except (OSError, ValueError):
        return None
    value = data.get("cache_key") if isinstance(data, dict) else None
    return str(value) if value else None


class HFClassifier:
    """A `save_pretrained` classifier on one device, used from one thread at a time."""

    def __init__(self, settings: Settings) -> None:
        path = settings.model_path
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.workers = settings.inference_workers or default_workers(self.device.type)
        threads = settings.torch_threads or max(1, cpu_count() // self.workers)
        torch.set_num_threads(threads)
        self.threads = threads
        # Opt-in: a pass with the cores to itself (a lone request on a quiet server) may use
        # more threads. Off by default: it is faster only while no other process wants a
        # core (BENCHMARKS.md: 6 vs 8.5 ms idle, but p99 160-440 ms with a one-core hog).
        self.alone_threads = max(threads, settings.alone_pass_threads or threads)
        self._per_thread = threading.local()
        try:
            self._tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model: Any = AutoModelForSequenceClassification.from_pretrained(
                path, local_files_only=True, dtype=self.dtype
            )
        except Exception as exc:  # any broken folder must end in one clear line
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load the model from MODEL_PATH={path}: {detail}") from exc
        self._model = model.to(self.device).eval()
        if settings.quantize == "int8":
            self._model = quantize_int8(self._model, self.device)
        self._unpadded = (
            UnpaddedBert(self._model)
            if settings.unpadded == "auto" and self.device.type == "cpu" and supports(self._model)
            else None
        )
        parameters = sum(p.numel() for p in self._model.parameters())
        self.onednn_layers = 0
        if settings.onednn_linear == "auto" and self.device.type == "cpu":
            # The padding-free path calls its fused projections, never the separate ones.
            unused = self._unpadded.replaced_projections() if self._unpadded is not None else []
            self.onednn_layers = pack_linear_layers(self._model, skip=unused)
            if self._unpadded is not None:
                self.onednn_layers += pack_linear_layers(self._unpadded.fused_qkv)
        self.scripted = False
        if self._unpadded is not None and settings.scripted == "auto":
            try:
                self.scripted = self._unpadded.script()
            except Exception:  # an unscriptable model keeps the eager forward
                logger.warning(
                    "TorchScript compilation failed; the forward runs eagerly", exc_info=True
                )
        config = self._model.config
        id2label = {int(k): str(v) for k, v in config.id2label.items()}
        self.labels = [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]
        self.problem_type = config.problem_type or (
            "single_label_classification" if config.num_labels > 1 else "regression"
        )
        self.activation = activation_for(config.problem_type, config.num_labels)
        self.max_length = self._max_length(settings.max_length)
        self._tokenizer_lock = threading.Lock()
        self._encoders = self._fixed_encoders()
        pad_id = self._tokenizer.pad_token_id
        self._pad_id = int(pad_id) if pad_id is not None else 0
        self.info = ModelInfo(
            name=settings.display_name,
            path=str(path),
            folder_sha256=folder_digest(path),
            revision=_revision(path),
            architecture=(config.architectures or [type(model).__name__])[0],
            labels=self.labels,
            problem_type=self.problem_type,
            activation=self.activation,
            max_length=self.max_length,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch.")
            + ("+int8" if settings.quantize == "int8" else ""),
            parameters=parameters,
            onednn_linear_layers=self.onednn_layers,
        )

    def _max_length(self, requested: int | None) -> int:
        limits = [int(self._tokenizer.model_max_length)]
        positions = getattr(self._model.config, "max_position_embeddings", None)
        if isinstance(positions, int):
            limits.append(positions)
        sane = [x for x in limits if x < _SANE_MAX_LENGTH]
        model_limit = min(sane) if sane else 512  # neither the tokenizer nor the config says
        if requested is None:
            return model_limit
        if requested > model_limit:
            raise ModelLoadError(f"MAX_LENGTH={requested} exceeds the model's limit {model_limit}")
        return requested

    def tokenize(self, texts: Sequence[str], truncate: bool) -> list[Encoded]:
        """Token ids with special tokens; the full count is kept to report truncation.

        Called from the event loop and the tokenizer thread at once: see `_fixed_encoders`."""
        full = self._encode(list(texts), cut=False)
        too_long = [i for i, ids in enumerate(full) if len(ids) > self.max_length]
        cut: dict[int, list[int]] = {}
        if truncate and too_long:
            short = self._encode([texts[i] for i in too_long], cut=True)
            cut = dict(zip(too_long, short, strict=True))
        return [
            Encoded(ids=cut.get(i, ids), num_tokens=len(ids), truncated=i in cut)
            for i, ids in enumerate(full)
        ]

    def _encode(self, texts: list[str], cut: bool) -> list[list[int]]:
        if self._encoders is not None:
            encoder = self._encoders[1 if cut else 0]
            if len(texts) <= _ONE_BY_ONE:
                # encode keeps the GIL; encode_batch lets it go, and getting it back from a
                # busy inference thread took up to the 5 ms switch interval on the event loop.
                return [encoder.encode(text, add_special_tokens=True).ids for text in texts]
            return [e.ids for e in encoder.encode_batch(texts, add_special_tokens=True)]
        with self._tokenizer_lock:  # the wrapper reconfigures itself on every call
            ids: list[list[int]] = self._tokenizer(
                texts,
                truncation=cut,
                max_length=self.max_length if cut else None,
                return_attention_mask=False,
                verbose=False,
            )["input_ids"]
            return ids

    def _fixed_encoders(self) -> tuple[Tokenizer, Tokenizer] | None:
        """Two private copies of the fast tokenizer's Rust backend, one without and one with
        truncation, configured once and never again.

        The transformers wrapper sets truncation on its single backend at every call, so two
        threads tokenizing at once could get each other's setting (a long text left uncut, a
        short one cut); this was seen in tests. The copies must give the wrapper's ids on a
        probe, or the wrapper is used under a lock instead."""
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            return None
        plain, cut = (Tokenizer.from_str(backend.to_str()) for _ in range(2))
        plain.no_truncation()
        plain.no_padding()
        cut.no_padding()
        cut.enable_truncation(
            self.max_length, direction=getattr(self._tokenizer, "truncation_side", "right")
        )
        probe = ["Hello, world!", " ".join(["token"] * (self.max_length + 8)), "  a\tb  "]
        with self._tokenizer_lock:
            want_plain = self._tokenizer(probe, truncation=False, verbose=False)["input_ids"]
            want_cut = self._tokenizer(
                probe, truncation=True, max_length=self.max_length, verbose=False
            )["input_ids"]
        got_plain = [e.ids for e in plain.encode_batch(probe, add_special_tokens=True)]
        got_cut = [e.ids for e in cut.encode_batch(probe, add_special_tokens=True)]
        if got_plain != want_plain or got_cut != want_cut:
            logger.warning("tokenizer backend differs from its wrapper; tokenizing under a lock")
            return None
        return plain, cut

    @property
    def padding_free(self) -> bool:
        """True when forward passes cost real tokens only (app/unpadded.py)."""
        return self._unpadded is not None

    def forward(self, rows: Sequence[Sequence[int]], width: int, alone: bool = False) -> FloatArray:
        """Scores (after the model's activation) for rows padded to `width` tokens.

        `alone`: no other pass runs meanwhile, so a CPU pass may use `alone_threads`."""
        if self.device.type == "cpu":
            self._use_threads(self.alone_threads if alone else self.threads)
        if self._unpadded is not None:
            with torch.inference_mode():
                logits = self._unpadded.logits(rows)
            return activate(logits.float().numpy(), self.activation)
        ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        input_ids = torch.from_numpy(ids)
        attention_mask = torch.from_numpy(mask)
        if self.device.type == "cuda":
            input_ids = input_ids.pin_memory().to(self.device, non_blocking=True)
            attention_mask = attention_mask.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():
            logits = self._model(input_ids=input_ids, attention_mask=attention_mask).logits
        return activate(logits.float().cpu().numpy(), self.activation)

    def _use_threads(self, count: int) -> None:
        """Intra-op threads for the passes of the calling thread only.

        OpenMP and MKL keep the count per thread, but torch first copies its process-wide
        count into a thread on that thread's first parallel call: get_num_threads makes that
        happen now, so a later call from another thread cannot undo this one."""
        if getattr(self._per_thread, "threads", None) == count:
            return
        torch.get_num_threads()
        torch.set_num_threads(count)
        self._per_thread.threads = count

    def release_cached_memory(self) -> None:
        """After a CUDA out-of-memory error, give cached blocks back before the next batch."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def timed_forward(self, rows: int, width: int) -> float:
        """Seconds for one forward pass of a synthetic batch; used to calibrate batching."""
        filler = [[self._pad_id + 1] * width for _ in range(rows)]
        start = time.perf_counter()
        self.forward(filler, width)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def default_workers(device_type: str) -> int:
    """Parallel single-stream passes on CPU: measured as fast as one pass on every core when
    the machine is quiet, and far more robust when it is not (OpenMP threads of one pass
    wait on each other whenever any of them is descheduled). See BENCHMARKS.md."""
    return 1 if device_type == "cuda" else min(cpu_count(), 4)


def cpu_count() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota.

    In a container limited with `cpus: 2` the affinity still lists every host core; sizing
    threads from it would put a 64-core host's worth of threads on two cores' time."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_cpu_quota()
    return max(1, min(cores or 1, quota) if quota else cores or 1)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole cores of this cgroup's CPU quota (v2 `cpu.max`, else v1 CFS), None if unlimited."""
    try:
        if (root / "cpu.max").is_file():
            quota, _, period = (root / "cpu.max").read_text().partition(" ")
            if quota.strip() == "max":
                return None
            return max(1, math.ceil(int(quota) / int(period)))
        v1 = root / "cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None

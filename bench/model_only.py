"""Model-only throughput: the same model, threads and corpus as the server, no HTTP.

This is the ceiling every HTTP figure is compared with, and the bench for model
variants (int8 dynamic quantization, attention kernels, padding to a multiple of N,
thread counts). Timings include tokenization and the softmax, because the server
has to do both as well.
"""

from __future__ import annotations

import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import latency_summary_ms

MODES = ("b1", "b32", "b32s")
MODE_HELP = {
    "b1": "batch 1, one sentence per forward pass (latency)",
    "b32": "batch N in arrival (corpus) order",
    "b32s": "batch N after sorting the corpus by token length",
}


class VariantUnavailable(RuntimeError):
    """The variant cannot run on this machine (a CUDA variant without a GPU)."""


@dataclass(frozen=True)
class Variant:
    """One model configuration, written as tokens joined by '+', e.g. `int8+eager+pad8+t1`."""

    spec: str
    int8: bool = False
    attn: str | None = None
    pad_multiple: int | None = None
    threads: int | None = None
    dtype: str = "float32"
    streams: int = 1
    # The app's default kernels: float32 Linear layers on oneDNN (app/onednn.py); `aten`
    # keeps torch's own (the model as the seeds ran it).
    onednn: bool = True
    device: str = "cpu"


def parse_variant(spec: str) -> Variant:
    """Tokens: fp32|base, int8, sdpa|eager, padN (N>=2), tN|threadsN, wN (N parallel
    streams sharing the model, like the app's INFERENCE_WORKERS), bf16, aten (torch's own
    Linear kernels instead of the app's oneDNN ones), cuda (the model and each batch on the
    GPU, inputs through pinned memory as the app does), fp16 (CUDA only)."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty variant")
    int8 = False
    attn: str | None = None
    pad: int | None = None
    threads: int | None = None
    dtype = "float32"
    streams = 1
    onednn = True
    device = "cpu"
    for token in spec.lower().split("+"):
        if token in ("fp32", "base", "default"):
            continue
        if token == "int8":
            int8 = True
        elif token == "aten":
            onednn = False
        elif token in ("sdpa", "eager"):
            attn = token
        elif token == "bf16":
            dtype = "bfloat16"
        elif token == "fp16":
            dtype = "float16"
        elif token == "cuda":
            device = "cuda"
        elif token.startswith("pad") and token[3:].isdigit() and int(token[3:]) >= 2:
            pad = int(token[3:])
        elif token.startswith("threads") and token[7:].isdigit() and int(token[7:]) >= 1:
            threads = int(token[7:])
        elif token.startswith("t") and token[1:].isdigit() and int(token[1:]) >= 1:
            threads = int(token[1:])
        elif token.startswith("w") and token[1:].isdigit() and int(token[1:]) >= 1:
            streams = int(token[1:])
        else:
            raise ValueError(f"unknown variant token {token!r} in {spec!r}")
    if int8 and dtype != "float32":
        raise ValueError("int8 dynamic quantization needs float32 weights")
    if int8 and device == "cuda":
        raise ValueError("int8 dynamic quantization runs on the CPU only")
    if dtype == "float16" and device != "cuda":
        raise ValueError("fp16 needs cuda (the app refuses DTYPE=float16 on CPU)")
    return Variant(spec, int8, attn, pad, threads, dtype, streams, onednn, device)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(streams: int = 1) -> int:
    """What the app uses with TORCH_THREADS unset/0: CPU cores / INFERENCE_WORKERS."""
    env = os.environ.get("TORCH_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, cpu_cores() // max(1, streams))


def make_batches(lengths: Sequence[int], batch_size: int, sort_by_length: bool) -> list[list[int]]:
    """Index batches for one pass over the corpus, optionally length-sorted."""
    order = list(range(len(lengths)))
    if not sort_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    order.sort(key=lambda i: (lengths[i], i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    # Shuffle the batch order (seeded) so that a time-bounded partial pass is not all
    # short batches: the measured rate must not depend on where the clock stops.
    random.Random(0).shuffle(batches)
    return batches


def padding_efficiency(batches: Sequence[Sequence[int]], lengths: Sequence[int], pad: int) -> float:
    """Real tokens / padded tokens over all batches (pad: round width up to a multiple)."""
    real = padded = 0
    for batch in batches:
        width = max(lengths[i] for i in batch)
        if pad > 1:
            width = -(-width // pad) * pad
        real += sum(lengths[i] for i in batch)
        padded += width * len(batch)
    return real / padded if padded else 0.0


class ModelRunner:
    """Loads one variant and times tokenize+forward+softmax over corpus batches."""

    def __init__(
        self,
        model_path: Path,
        variant: Variant,
        threads: int,
        max_length: int | None,
        lone_threads: int | None = None,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if variant.device == "cuda" and not torch.cuda.is_available():
            raise VariantUnavailable(f"variant {variant.spec!r} needs CUDA; torch sees no GPU")
        self.torch = torch
        self.variant = variant
        self.threads = variant.threads or threads
        # Batch 1 is a lone request: the app gives such a pass ALONE_PASS_THREADS threads.
        self.lone_threads = max(self.threads, variant.threads or lone_threads or cpu_cores())
        torch.set_num_threads(self.threads)
        # One tokenizer per stream: a fast tokenizer shared across threads raises
        # "Already borrowed" when two calls set padding/truncation at once.
        self.tokenizers = [
            AutoTokenizer.from_pretrained(str(model_path)) for _ in range(variant.streams)
        ]
        self.tokenizer = self.tokenizers[0]
        kwargs: dict[str, Any] = {}
        if variant.attn is not None:
            kwargs["attn_implementation"] = variant.attn
        self.device = torch.device(variant.device)
        model = AutoModelForSequenceClassification.from_pretrained(str(model_path), **kwargs)
        model.eval()
        if variant.dtype != "float32":
            model = model.to(getattr(torch, variant.dtype))
        model = model.to(self.device)
        if variant.int8:
            with warnings.catch_warnings():
                # quantize_dynamic is deprecated in favour of torchao, which we do not ship.
                warnings.simplefilter("ignore")
                from torch.ao.quantization import quantize_dynamic

                model = quantize_dynamic(  # type: ignore[no-untyped-call]
                    model, {torch.nn.Linear}, dtype=torch.qint8
                )
        cuda = self.device.type == "cuda"
        # Counted before the oneDNN swap, whose packed weights are not parameters.
        self.parameters = sum(int(p.numel()) for p in model.parameters())
        self.onednn_layers = 0
        if variant.onednn and not variant.int8 and variant.dtype == "float32" and not cuda:
            from app.onednn import pack_linear_layers

            self.onednn_layers = pack_linear_layers(model)
        self.model = model
        limit = getattr(self.tokenizer, "model_max_length", 512)
        config_limit = getattr(model.config, "max_position_embeddings", 512)
        if not isinstance(limit, int) or limit > 100_000:
            limit = config_limit
        self.max_length = max_length or min(limit, config_limit)
        self.attn_implementation = str(getattr(model.config, "_attn_implementation", "unknown"))

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def run_batch(self, texts: Sequence[str], stream: int = 0) -> tuple[float, float, int, int]:
        """(tokenize seconds, total seconds, real tokens, padded tokens) for one batch."""
        torch = self.torch
        t0 = time.perf_counter()
        enc = self.tokenizers[stream](
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            pad_to_multiple_of=self.variant.pad_multiple,
            return_tensors="pt",
        )
        t1 = time.perf_counter()
        inputs = enc
        if self.device.type == "cuda":
            inputs = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in enc.items()}
        with torch.inference_mode():
            logits = self.model(**inputs).logits
            # .cpu() waits for the GPU: the time includes the copy back, as in the app.
            logits.float().softmax(dim=-1).cpu()
        t2 = time.perf_counter()
        mask = enc["attention_mask"]
        return t1 - t0, t2 - t0, int(mask.sum().item()), int(mask.numel())


def measure_mode(
    runner: ModelRunner,
    texts: Sequence[str],
    lengths: Sequence[int],
    mode: str,
    batch_size: int,
    seconds: float,
    warmup_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Cycle through the corpus batches for `seconds` after `warmup_s` of untimed passes.

    With `streams` > 1, that many threads share the model and take batches in turn;
    the rate is sentences over wall time. Batch 1 is the latency mode: one stream always
    (a lone request in the server gets one forward pass to itself).
    """
    size = 1 if mode == "b1" else batch_size
    batches = make_batches(lengths, size, sort_by_length=(mode == "b32s"))
    streams = 1 if mode == "b1" else runner.variant.streams
    start = clock()
    i = 0
    while clock() - start < warmup_s or i < 2:
        runner.run_batch([texts[j] for j in batches[i % len(batches)]])
        i += 1
    lock = threading.Lock()
    durations: list[float] = []
    totals = {"tok": 0.0, "real": 0, "padded": 0, "sentences": 0}
    cursor = [i]

    def worker(stream: int) -> None:
        while True:
            with lock:
                if clock() - start >= seconds and len(durations) >= 3:
                    return
                batch = batches[cursor[0] % len(batches)]
                cursor[0] += 1
            tok_s, total_s, r, p = runner.run_batch([texts[j] for j in batch], stream)
            with lock:
                durations.append(total_s)
                totals["tok"] += tok_s
                totals["real"] += r
                totals["padded"] += p
                totals["sentences"] += len(batch)

    start = clock()
    if streams == 1:
        worker(0)
    else:
        pool = [threading.Thread(target=worker, args=(k,)) for k in range(streams)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    wall = clock() - start
    busy = sum(durations)
    # One stream: the busy time (excludes the loop's own overhead); several: wall time.
    basis = busy if streams == 1 else wall
    real, padded, sentences = int(totals["real"]), int(totals["padded"]), int(totals["sentences"])
    out: dict[str, Any] = {
        "mode": mode,
        "description": MODE_HELP[mode].replace("batch N", f"batch {size}")
        + (f", {streams} parallel streams" if streams > 1 else ""),
        "batch_size": size,
        "streams": streams,
        "batches": len(durations),
        "sentences": sentences,
        "seconds": round(basis, 3),
        "sentences_per_s": round(sentences / basis, 2),
        "padding_efficiency": round(real / padded, 4) if padded else None,
        "tokenize_share": round(float(totals["tok"]) / busy, 4),
    }
    key = "latency" if size == 1 else "batch_latency"
    out[key] = latency_summary_ms(durations)
    return out


def _describe_runner(runner: ModelRunner, load_s: float, lengths: Sequence[int]) -> dict[str, Any]:
    n_params = runner.parameters
    cfg = runner.model.config
    return {
        "variant": runner.variant.spec,
        "threads": runner.threads,
        "lone_threads": runner.lone_threads,
        "onednn_layers": runner.onednn_layers,
        "attn_implementation": runner.attn_implementation,
        "int8": runner.variant.int8,
        "dtype": runner.variant.dtype,
        "device": runner.variant.device,
        "pad_multiple": runner.variant.pad_multiple,
        "streams": runner.variant.streams,
        "load_s": round(load_s, 3),
        "max_length": runner.max_length,
        "mean_tokens": round(sum(lengths) / len(lengths), 2),
        "model": {
            "architecture": type(runner.model).__name__,
            "layers": getattr(cfg, "num_hidden_layers", None),
            "hidden_size": getattr(cfg, "hidden_size", None),
            # Quantized Linear weights are packed buffers, not parameters: int8 counts fewer.
            "parameters": n_params,
            "labels": len(getattr(cfg, "id2label", {}) or {}),
        },
    }


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median sentences/s (lower median), plus every run's rate."""
    ordered = sorted(runs, key=lambda r: float(r["sentences_per_s"]))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_sentences_per_s"] = [r["sentences_per_s"] for r in runs]
    return chosen


def measure_variants(
    model_path: Path,
    variants: Sequence[Variant],
    texts: Sequence[str],
    *,
    modes: Sequence[str] = MODES,
    batch_size: int = 32,
    seconds: float = 5.0,
    warmup_s: float = 1.0,
    threads: int | None = None,
    lone_threads: int | None = None,
    max_length: int | None = None,
    repeat: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Load every variant, then measure them round-robin `repeat` times.

    Interleaving matters on a shared machine: a neighbour's load that comes and goes
    hits every variant alike instead of whichever happened to run at that moment.
    """
    import torch

    runners: list[tuple[ModelRunner, dict[str, Any], list[int]]] = []
    for variant in variants:
        t0 = time.perf_counter()
        runner = ModelRunner(
            model_path,
            variant,
            threads or default_threads(variant.streams),
            max_length,
            lone_threads,
        )
        load_s = time.perf_counter() - t0
        lengths = runner.token_lengths(texts)
        runners.append((runner, _describe_runner(runner, load_s, lengths), lengths))
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for rep in range(max(1, repeat)):
        for index, (runner, _, lengths) in enumerate(runners):
            for mode in modes:
                # New stream threads copy this count when they start (torch's rule).
                torch.set_num_threads(runner.lone_threads if mode == "b1" else runner.threads)
                r = measure_mode(runner, texts, lengths, mode, batch_size, seconds, warmup_s)
                runs.setdefault((index, mode), []).append(r)
                if progress is not None:
                    progress(
                        f"  [{rep + 1}/{repeat}] {runner.variant.spec:20s} {mode:5s} "
                        f"{r['sentences_per_s']:8.1f} sentences/s"
                    )
    out: list[dict[str, Any]] = []
    for index, (_, info, _) in enumerate(runners):
        info = dict(info)
        info["modes"] = {mode: median_run(runs[(index, mode)]) for mode in modes}
        out.append(info)
    return out


def measure_variant(
    model_path: Path,
    variant: Variant,
    texts: Sequence[str],
    **kwargs: Any,
) -> dict[str, Any]:
    return measure_variants(model_path, [variant], texts, **kwargs)[0]


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": str(torch.__version__), "transformers": str(transformers.__version__)}

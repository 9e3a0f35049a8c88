"""Load the classifier and choose its forward pass by timing the candidates on this machine."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

from app.config import ForwardPath, Settings
from app.engine import onednn, unpadded
from app.engine.base import ModelInfo, ModelLoadError
from app.engine.hf import HFClassifier, build_revision, folder_digest
from app.engine.unpadded import UnpaddedForward

logger = logging.getLogger(__name__)

# A more elaborate forward must beat the simpler ones by this much to be chosen.
_MIN_GAIN = 0.03
_ROUNDS = 3


def load_classifier(settings: Settings) -> HFClassifier:
    """The model from `settings.model_path`, serving with the forward `settings.forward` names,
    or with `auto` the fastest one this model and device support, timed here at start-up."""
    classifier = HFClassifier(settings)
    candidates, why_not = forward_candidates(classifier)
    if settings.forward != "auto":
        if settings.forward not in candidates:
            raise ModelLoadError(f"TEXTCLF_FORWARD={settings.forward} is unavailable: {why_not}")
        candidates = [settings.forward]
    built = {path: _build(classifier, path) for path in candidates}
    if len(candidates) == 1:
        chosen = candidates[0]
        reason = (
            "set by TEXTCLF_FORWARD" if settings.forward != "auto" else f"the only one: {why_not}"
        )
    else:
        chosen, reason = _fastest(classifier, built, settings.max_batch_size)
    classifier.use_forward(chosen, built[chosen])
    logger.info("forward pass: %s (%s)", chosen, reason)
    classifier.info = ModelInfo(
        name=settings.display_name,
        path=settings.model_path.resolve().name,  # the folder's name: /model shows no host path
        folder_sha256=folder_digest(settings.model_path),
        revision=build_revision(settings.model_path),
        architecture=classifier.architecture,
        labels=classifier.labels,
        problem_type=classifier.problem_type,
        activation=classifier.activation,
        max_length=classifier.max_length,
        device=str(classifier.device),
        dtype=str(classifier.dtype).removeprefix("torch."),
        quantize=settings.quantize,
        parameters=classifier.parameters,
        forward=chosen,
        forward_reason=reason,
    )
    return classifier


def forward_candidates(classifier: HFClassifier) -> tuple[list[ForwardPath], str]:
    """The forwards this model and device can run, and why the others cannot."""
    if classifier.device.type != "cpu":
        return ["padded"], "the padding-free forward is CPU-only"
    if not unpadded.supports(classifier.model):
        return ["padded"], f"no padding-free forward for {classifier.architecture}"
    if classifier.quantize != "none" or classifier.dtype != torch.float32 or not onednn.available():
        return ["padded", "unpadded"], "oneDNN packing needs float32 (not int8) weights and oneDNN"
    return ["padded", "unpadded", "unpadded_onednn"], ""


def _build(classifier: HFClassifier, path: ForwardPath) -> UnpaddedForward | None:
    if path == "padded":
        return None
    return UnpaddedForward(classifier.model, onednn=path == "unpadded_onednn")


def _probe_batches(classifier: HFClassifier, max_rows: int) -> list[list[list[int]]]:
    """A full batch of mixed lengths (throughput) and a lone short text (latency)."""
    rows = min(max_rows, 32)
    longest = min(48, classifier.max_length)
    spread = max(1, longest - 7)  # lengths 8 to `longest`; all `longest` under 8 tokens
    lengths = [min(longest, 8 + (i * 7) % spread) for i in range(rows)]
    lone = [classifier.filler_id] * min(12, longest)
    return [[[classifier.filler_id] * n for n in lengths], [lone]]


def _fastest(
    classifier: HFClassifier, built: dict[ForwardPath, UnpaddedForward | None], max_rows: int
) -> tuple[ForwardPath, str]:
    """Time each candidate on the same batches, interleaved so a busy moment hits all alike,
    and keep the fastest; a more elaborate one must win by `_MIN_GAIN`."""
    batches = _probe_batches(classifier, max_rows)
    runs = {path: _runner(classifier, path, forward) for path, forward in built.items()}
    best = {path: [float("inf")] * len(batches) for path in built}
    for _ in range(_ROUNDS + 1):  # the first round warms the kernels up
        for path, run in runs.items():
            for index, batch in enumerate(batches):
                start = time.perf_counter()
                run(batch)
                elapsed = time.perf_counter() - start
                best[path][index] = min(best[path][index], elapsed)
    totals = {path: sum(times) for path, times in best.items()}
    chosen: ForwardPath = "padded"
    for path in built:  # simplest first
        if totals[path] < totals[chosen] * (1 - _MIN_GAIN):
            chosen = path
    timings = ", ".join(
        f"{path} {times[0] * 1000:.1f}+{times[1] * 1000:.1f} ms" for path, times in best.items()
    )
    return chosen, f"fastest at start-up (batch of {len(batches[0])} + one text): {timings}"


def _runner(
    classifier: HFClassifier, path: ForwardPath, forward: UnpaddedForward | None
) -> Callable[[Sequence[Sequence[int]]], object]:
    def run(rows: Sequence[Sequence[int]]) -> object:
        classifier.use_forward(path, forward)
        return classifier.forward(rows, max(len(r) for r in rows))

    return run

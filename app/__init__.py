"""Text-classification inference service: a batched Hugging Face classifier behind FastAPI."""

from __future__ import annotations

import os

# Never reach a model hub at run time, and send no telemetry: the model is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# oneDNN (app/onednn.py) caches a kernel per matrix shape and thread count, in two caches
# (oneDNN's own and torch's), 1,024 entries each by default, some MiB per entry. app/onednn.py
# runs at most 16 row counts, so ~200 kernels cover every pass; 256 keeps them all (a miss
# costs ~0.7 ms) and bounds the memory (BENCHMARKS.md). Read when torch loads, hence here.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
os.environ.setdefault("LRU_CACHE_CAPACITY", "256")

__version__ = "0.1.0"

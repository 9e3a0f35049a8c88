"""Text-classification inference service: a batched Hugging Face classifier behind FastAPI."""

from __future__ import annotations

import os

# Never reach a model hub at run time, and send no telemetry: the model is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

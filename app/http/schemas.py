"""The HTTP contract: request and response bodies, with the examples shown in /docs."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from app.core.scoring import Prediction

# Whitespace as JSON Schema (ECMAScript) defines it, so the schema's pattern and this check agree.
_NON_BLANK = (
    "[^\\t\\n\\v\\f\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]"
)
_NON_BLANK_RE = re.compile(_NON_BLANK)


def _valid_text(value: str) -> str:
    if not _NON_BLANK_RE.search(value):
        raise ValueError("text must not be empty or only whitespace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (it contains a lone surrogate)") from None
    return value


# The schema says what the validator enforces, so generated clients and fuzzers agree with it.
def _whole_number(value: object) -> object:
    """JSON Schema counts 3.0 as an integer; strict pydantic would not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Text = Annotated[
    str,
    AfterValidator(_valid_text),
    WithJsonSchema({"type": "string", "minLength": 1, "pattern": _NON_BLANK}),
]

_SINGLE_EXAMPLE: dict[str, Any] = {
    "text": "The support team fixed my problem in minutes, thank you!"
}
_BATCH_EXAMPLE: dict[str, Any] = {
    "texts": ["I love this phone, the battery lasts for days.", "Worst flight ever, lost my bag."],
    "top_k": 2,
}


class PredictRequest(BaseModel):
    """Either `text` (one answer) or `texts` (answers in input order), not both."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # 0 is not false and "3" is not 3: the body must match the schema
        json_schema_extra={
            "examples": [_SINGLE_EXAMPLE, _BATCH_EXAMPLE],
            "oneOf": [{"required": ["text"]}, {"required": ["texts"]}],
        },
    )

    text: Text | SkipJsonSchema[None] = Field(None, description="one text to classify")
    texts: Annotated[list[Text], Field(min_length=1)] | SkipJsonSchema[None] = Field(
        None, description="several texts, one call"
    )
    top_k: Annotated[int, Field(ge=1), BeforeValidator(_whole_number)] | None = Field(
        None, description="return only the k best label scores (null or absent: all labels)"
    )
    truncate: bool = Field(
        True,
        description="cut texts longer than the model's token limit (each prediction says so); "
        "false makes such a text a 422 naming its token count",
    )

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        for name in ("text", "texts"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"`{name}` must not be null")
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` or `texts`")
        return self

    @property
    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


_PREDICTION_EXAMPLE: dict[str, Any] = {
    "label": "positive",
    "confidence": 0.97,
    "scores": [
        {"label": "positive", "score": 0.97},
        {"label": "neutral", "score": 0.02},
        {"label": "negative", "score": 0.01},
    ],
    "predicted_labels": ["positive"],
    "num_tokens": 16,
    "truncated": False,
}


class SinglePredictResponse(Prediction):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [_PREDICTION_EXAMPLE | {"processing_time_ms": 14.2, "model": "default"}]
        }
    )
    processing_time_ms: float
    model: str


class BatchPredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per input text, in input order")
    processing_time_ms: float
    model: str


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])
    model_loaded: bool
    device: str | None = Field(examples=["cpu"])
    phase: str = Field(examples=["ready"], description="loading, ready, draining or failed")


class ReadyResponse(BaseModel):
    status: str = Field(examples=["ready"])


class BatchingInfo(BaseModel):
    inference_workers: int
    torch_threads: int
    max_batch_size: int
    max_batch_tokens: int
    max_batch_wait_ms: float
    max_queue_tokens: int
    request_timeout_s: float
    max_items_per_request: int
    max_text_chars: int


class ModelInfoResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    path: str
    folder_sha256: str
    revision: str | None = Field(description="build cache key when the folder records one")
    architecture: str
    labels: list[str]
    problem_type: str
    activation: str
    max_length: int
    device: str
    dtype: str
    quantize: str = Field(description="none, or int8 (dynamic int8 Linear layers)")
    parameters: int
    forward: str = Field(description="the forward pass in use: padded, unpadded or unpadded_onednn")
    forward_reason: str = Field(description="why: set by TEXTCLF_FORWARD, or the start-up timings")
    multi_label_threshold: float
    batching: BatchingInfo


ErrorType = Literal[
    "validation",
    "unauthorized",
    "rate_limited",
    "request_timeout",
    "headers_too_large",
    "too_large",
    "unsupported_media_type",
    "overloaded",
    "not_ready",
    "draining",
    "resource_exhausted",
    "timeout",
    "not_found",
    "method_not_allowed",
    "bad_request",
    "http_error",
    "internal",
]


class ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong; never contains the input")
    error_type: ErrorType
    request_id: str | None

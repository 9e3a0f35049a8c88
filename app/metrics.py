"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

PREFIX = "textclf"

_LATENCY_BUCKETS = (
    0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30,
)  # fmt: skip
_STAGE_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)
_TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_RATIO_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)


class Metrics:
    """Every series the service exports; names are part of the contract (see README)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds", "End-to-end request latency", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds", "Time a text waited before its forward pass",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokenize = Histogram(
            f"{PREFIX}_tokenize_seconds", "Tokenization time per request",
            buckets=_STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference = Histogram(
            f"{PREFIX}_inference_seconds", "Forward pass time per batch",
            buckets=_STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Texts per forward pass", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            f"{PREFIX}_batch_tokens", "Padded tokens (rows x width) per forward pass",
            buckets=_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.padding_efficiency = Histogram(
            f"{PREFIX}_batch_padding_efficiency", "Real tokens / padded tokens per forward pass",
            buckets=_RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight", "/predict requests being served", registry=r
        )
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Texts waiting for the model", registry=r)
        self.queue_tokens = Gauge(
            f"{PREFIX}_queue_tokens", "Tokens waiting for the model (what admission bounds)",
            registry=r,
        )  # fmt: skip
        self.queue_tokens_limit = Gauge(
            f"{PREFIX}_queue_tokens_limit", "TEXTCLF_MAX_QUEUE_TOKENS: work past it gets 503",
            registry=r,
        )  # fmt: skip
        self.request_timeout = Gauge(
            f"{PREFIX}_request_timeout_seconds", "TEXTCLF_REQUEST_TIMEOUT_S: the deadline",
            registry=r,
        )  # fmt: skip
        self.input_tokens = Histogram(
            f"{PREFIX}_input_tokens", "Tokens per text before truncation",
            buckets=_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.truncated = Counter(
            f"{PREFIX}_truncated_inputs", "Texts cut to the model's token limit", registry=r
        )
        self.predictions = Counter(
            f"{PREFIX}_predictions", "Predicted top label", ["label"], registry=r
        )
        self.confidence = Histogram(
            f"{PREFIX}_prediction_confidence", "Score of the top label",
            buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0), registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            f"{PREFIX}_rejections", "Texts refused or dropped, by reason", ["reason"], registry=r
        )
        self.model_info = Gauge(
            f"{PREFIX}_model_info", "The model being served (value 1)",
            ["model", "device", "dtype", "revision"], registry=r,
        )  # fmt: skip
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the service takes traffic", registry=r)
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds ... (Linux /proc)
        ProcessCollector(registry=r)

"""Service settings: every knob is an environment variable, validated once at start."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TEXTCLF_"
Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
ForwardPath = Literal["padded", "unpadded", "unpadded_onednn"]
Access = Literal["open", "key", "off"]

_MIN_KEY_CHARS = 16
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a Bearer header can carry
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?")


def _alias(name: str) -> AliasChoices:
    """The prefixed name first, then the seeds' plain one (MODEL_PATH, HOST, PORT)."""
    return AliasChoices(f"{ENV_PREFIX}{name}", name)


class Settings(BaseSettings):
    """Configuration read from `TEXTCLF_*` environment variables (and `.env`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        protected_namespaces=(),
        populate_by_name=True,
        allow_inf_nan=False,  # "inf" parses as a float; no timeout or limit here means that
    )

    # Model runtime
    model_path: Path = Field(
        Path("model/default"),
        validation_alias=_alias("MODEL_PATH"),
        description="save_pretrained folder of the classifier to serve",
    )
    model_name: str | None = Field(
        None, description="name reported in responses and /model; defaults to the folder name"
    )
    device: Device = Field("auto", description="auto picks CUDA when available, else CPU")
    dtype: DType = Field("auto", description="auto: float32 on CPU, float16 on CUDA")
    torch_threads: int = Field(
        0, ge=0, description="intra-op threads per forward pass; 0 = CPU cores / INFERENCE_WORKERS"
    )
    inference_workers: int = Field(
        0,
        ge=0,
        le=16,
        description="forward passes run at once, threads sharing one model; "
        "0 = auto (CPU: one per core up to 4; CUDA: 1)",
    )
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: dynamic int8 quantization of Linear layers (CPU only)"
    )
    forward: Literal["auto", ForwardPath] = Field(  # one Literal: one error line
        "auto",
        description="the forward pass: auto times each one this model and device support at "
        "start-up and keeps the fastest; padded (the model's own), unpadded (texts "
        "concatenated, no padding; BERT on the CPU) or unpadded_onednn (the same on oneDNN "
        "matrix multiplies)",
    )
    max_length: int | None = Field(
        None, gt=1, description="token limit per text; default the model's own limit"
    )
    multi_label_threshold: float = Field(
        0.5, gt=0, lt=1, description="score at or above which a label is predicted (sigmoid models)"
    )
    selftest_path: Path | None = Field(
        None,
        description="JSON list of {text,label} that must classify right before ready; "
        "default <MODEL_PATH>/selftest.json when present",
    )
    warmup: bool = Field(True, description="run warm-up forward passes before reporting ready")

    # Dynamic batching and admission
    max_batch_size: int = Field(32, ge=1, le=1024, description="texts per forward pass")
    max_batch_tokens: int = Field(
        8192, ge=16, description="padded tokens (rows x longest) per forward pass"
    )
    max_batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="how long a busy batcher waits for more texts"
    )
    max_queue_tokens: int = Field(
        65_536,
        ge=16,
        description="tokens waiting for the model; above it new work gets 503 (a request "
        "larger than the whole queue: 413)",
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="deadline per request; queued work past it is dropped (504)",
    )

    # Request limits
    max_items_per_request: int = Field(64, ge=1, description="texts in one request")
    max_text_chars: int = Field(10_000, ge=1, description="characters per text")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="request body size (413 above)")

    # Server
    host: str = Field(
        "0.0.0.0", validation_alias=_alias("HOST"), description="address to listen on"
    )
    port: int = Field(
        8000, ge=1, le=65535, validation_alias=_alias("PORT"), description="port to listen on"
    )
    keep_alive_s: int = Field(
        75,
        ge=1,
        le=3600,
        description="idle keep-alive; keep above the proxy's upstream keepalive_timeout",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="proxies trusted for X-Forwarded-For ('*' inside Compose)"
    )
    graceful_timeout_s: float = Field(
        15.0, gt=0, le=3600, description="on SIGTERM: time allowed for in-flight work before exit"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    log_json: bool = Field(False, description="JSON lines instead of plain text logs")
    max_connections: int = Field(
        1024, ge=1, description="open connections; one more is answered 503 and closed"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="time a client has to send a request's headers"
    )
    body_timeout_s: float = Field(
        10.0, gt=0, le=600, description="time a client has to send a request's body (408 after)"
    )
    max_header_bytes: int = Field(
        16_384, ge=1024, description="size of a request's headers (431 above)"
    )
    max_headers: int = Field(
        100, ge=8, le=1000, description="header fields per request (431 above)"
    )

    # Access
    api_keys: SecretStr | None = Field(
        None,
        description="comma-separated keys clients send as `Authorization: Bearer <key>` "
        "(several for rotation); unset with API_KEYS_FILE unset: no keys needed",
    )
    api_keys_file: Path | None = Field(
        None, description="file with one API key per line (a mounted secret); adds to API_KEYS"
    )
    metrics_access: Access = Field("open", description="/metrics: open, key or off")
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="also serve /metrics, without a key, on this port (a scraper kept apart "
        "by network policy); unset: only on PORT",
    )
    docs_access: Access = Field("open", description="/docs and /openapi.json: open, key or off")
    cors_allow_origins: str = Field(
        "",
        description="comma-separated browser origins allowed to call the API "
        "(exact, e.g. https://app.example.com); empty: CORS off",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_model_folder(self) -> Settings:
        path = self.model_path
        if not path.is_dir():
            raise ValueError(
                f"MODEL_PATH={path} is not a folder; build the default model with "
                "`make model` or point TEXTCLF_MODEL_PATH at a save_pretrained folder"
            )
        try:
            has_config = (path / "config.json").is_file()
        except OSError as exc:  # a folder the server's user may not enter
            raise ValueError(f"MODEL_PATH={path} cannot be read: {exc.strerror}") from None
        if not has_config:
            raise ValueError(
                f"MODEL_PATH={path} has no config.json; it must be a save_pretrained folder"
            )
        if self.selftest_path is not None and not self.selftest_path.is_file():
            raise ValueError(f"TEXTCLF_SELFTEST_PATH={self.selftest_path} does not exist")
        return self

    @model_validator(mode="after")
    def _check_access(self) -> Settings:
        keys = self.keys  # reads API_KEYS_FILE: a missing file fails here, at start
        for name in ("metrics_access", "docs_access"):
            if getattr(self, name) == "key" and not keys:
                raise ValueError(
                    f"{env_name(name)}=key but no key is set; set TEXTCLF_API_KEYS "
                    "or TEXTCLF_API_KEYS_FILE"
                )
        if self.metrics_port == self.port:
            raise ValueError("TEXTCLF_METRICS_PORT must differ from TEXTCLF_PORT")
        for origin in self.cors_origins:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    "TEXTCLF_CORS_ALLOW_ORIGINS: each origin is scheme://host[:port] with no "
                    "path or wildcard, e.g. https://app.example.com"
                )
        return self

    @property
    def keys(self) -> tuple[str, ...]:
        """The accepted API keys (empty: none needed), from API_KEYS and API_KEYS_FILE."""
        raw = self.api_keys.get_secret_value().split(",") if self.api_keys else []
        if self.api_keys_file is not None:
            try:
                raw += self.api_keys_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ValueError(f"TEXTCLF_API_KEYS_FILE cannot be read: {reason}") from None
        keys = tuple(dict.fromkeys(key.strip() for key in raw if key.strip()))
        for key in keys:  # never name the key itself: this line goes to the log
            if len(key) < _MIN_KEY_CHARS or not _KEY_CHARS.fullmatch(key):
                raise ValueError(
                    f"API keys must be at least {_MIN_KEY_CHARS} visible ASCII characters "
                    "without spaces or commas (e.g. `openssl rand -hex 32`)"
                )
        return keys

    @property
    def cors_origins(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in self.cors_allow_origins.split(",") if o.strip())

    @property
    def display_name(self) -> str:
        return self.model_name or self.model_path.resolve().name


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def describe_error(exc: ValidationError) -> str:
    """One line per bad setting, naming the environment variable and what to fix."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = "_".join(str(part) for part in err["loc"])
        name = (loc if loc.upper().startswith(ENV_PREFIX) else env_name(loc)).upper() if loc else ""
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {message}" if name else message)
    return "; ".join(lines)

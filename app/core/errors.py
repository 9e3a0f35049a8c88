"""The closed set of error kinds the service raises; the HTTP layer maps them to responses."""

from __future__ import annotations


class ServiceError(Exception):
    """An error with a fixed status and kind; its message never contains client input."""

    status_code = 500
    error_type = "internal"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidInput(ServiceError):
    """The client's request breaks a limit; the message names the field, never the input."""

    status_code = 422
    error_type = "validation"


class Unauthorized(ServiceError):
    """No API key, or not one of the configured keys; answered with WWW-Authenticate."""

    status_code = 401
    error_type = "unauthorized"


class TooManyRequests(ServiceError):
    """This client is refused for a while (repeated failed keys)."""

    status_code = 429
    error_type = "rate_limited"


class RequestTimeout(ServiceError):
    """The client did not send its headers or body in time."""

    status_code = 408
    error_type = "request_timeout"


class HeadersTooLarge(ServiceError):
    status_code = 431
    error_type = "headers_too_large"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    error_type = "unsupported_media_type"


class Overloaded(ServiceError):
    status_code = 503
    error_type = "overloaded"


class NotReady(ServiceError):
    status_code = 503
    error_type = "not_ready"


class Draining(ServiceError):
    status_code = 503
    error_type = "draining"


class ResourceExhausted(ServiceError):
    """The device ran out of memory for this work; the service itself is fine."""

    status_code = 503
    error_type = "resource_exhausted"


class DeadlineExceeded(ServiceError):
    status_code = 504
    error_type = "timeout"


class InferenceFailed(ServiceError):
    status_code = 500
    error_type = "internal"


class ClientGone(Exception):
    """The client hung up before its answer was ready; nothing is sent back."""

    def __init__(self, texts: int = 1) -> None:
        super().__init__("client disconnected")
        self.texts = texts  # withdrawn, counted as rejections

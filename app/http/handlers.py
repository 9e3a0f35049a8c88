"""One JSON error envelope for every non-2xx answer, and the handlers that produce it."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import ClientGone, ServiceError, Unauthorized

logger = logging.getLogger(__name__)

_MAX_LOC_PART = 40
_MAX_MESSAGE = 200


# On every answer (middleware.py adds them; the last-resort 500 below, sent outside it, too).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)

_HTTP_KINDS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def error_body(message: str, error_type: str, request_id: str | None) -> dict[str, Any]:
    return {"error": message, "error_type": error_type, "request_id": request_id}


def error_response(
    status: int,
    message: str,
    error_type: str,
    request_id: str | None,
    retry_after: int | None = None,
) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(
        error_body(message, error_type, request_id), status_code=status, headers=headers
    )


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def _safe(text: str, limit: int) -> str:
    """Replace characters that cannot be encoded (lone surrogates) and bound the length."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def _is_field(part: object) -> bool:
    """Field names and list indexes, not pydantic's internal union-branch tags."""
    return part != "body" and not (isinstance(part, str) and ("[" in part or "(" in part))


def validation_message(exc: RequestValidationError) -> str:
    """Build the 422 message from pydantic's errors, without the offending input."""
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "extra_forbidden":  # the key itself is client input
            parts.append("unknown field in the body; see /docs for the accepted fields")
            continue
        if err.get("type") == "none_required":  # the other branch of an optional field
            continue
        # FastAPI puts the parser's own message (orjson's) in ctx["error"]
        detail = f"{err.get('msg', '')} {(err.get('ctx') or {}).get('error', '')}"
        if err.get("type") == "json_invalid" and ("escape" in detail or "surrogate" in detail):
            parts.append("body is not valid JSON text: a \\u escape is a lone surrogate or broken")
            continue
        loc = ".".join(_safe(str(p), _MAX_LOC_PART) for p in err.get("loc", ()) if _is_field(p))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        msg = _safe(msg, _MAX_MESSAGE)
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def service_error_response(exc: ServiceError, request_id: str | None) -> JSONResponse:
    """The answer to a domain error, wherever in the HTTP layer it was raised."""
    if exc.status_code >= 500 and exc.error_type == "internal":
        logger.error("request failed: %s", exc.message)
    response = error_response(
        exc.status_code, exc.message, exc.error_type, request_id, exc.retry_after
    )
    if isinstance(exc, Unauthorized):  # RFC 7235: every 401 names the scheme to use
        response.headers["WWW-Authenticate"] = getattr(exc, "challenge", "Bearer")
    return response


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return service_error_response(exc, _request_id(request))


async def _client_gone(request: Request, exc: Exception) -> Response:
    """Nothing can reach a client that hung up; the status is for the logs and metrics."""
    assert isinstance(exc, ClientGone)
    request.app.state.metrics.rejections.labels("client_gone").inc(exc.texts)
    return Response(status_code=499)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, validation_message(exc), "validation", _request_id(request))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _HTTP_KINDS.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else kind.replace("_", " ")
    message = _safe(message, _MAX_MESSAGE)
    response = error_response(exc.status_code, message, kind, _request_id(request))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    request_id = _request_id(request)
    response = error_response(500, "internal server error", "internal", request_id)
    # Starlette answers from its outermost middleware here, outside the one that adds the
    # header to every other response.
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    response.headers.update(dict(SECURITY_HEADERS))
    response.headers["Cache-Control"] = "no-store"
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

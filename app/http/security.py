"""API keys: who may call the protected routes, checked before a request body is read.

Clients send `Authorization: Bearer <key>`. Keys are compared as SHA-256 digests with
`hmac.compare_digest` against every configured key (no early exit, no length leak), and no
key is ever logged or echoed. An address that keeps sending wrong keys is refused with 429
for a while (`FailureLimiter`); nginx limits the requests that carry no key at all.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import ServiceError, TooManyRequests, Unauthorized
from app.http.handlers import error_response
from app.http.schemas import ErrorResponse

logger = logging.getLogger(__name__)

SCHEME_NAME = "bearer"  # the OpenAPI security scheme; docs.py's script authorizes it by name
# Query parameters that look like a key: refused, since URLs end up in logs and histories.
_KEY_PARAMS = frozenset({"api_key", "apikey", "api-key", "key", "token", "access_token"})

bearer = HTTPBearer(
    auto_error=False,  # the answer to a missing or wrong key is ours (401 JSON), not FastAPI's
    scheme_name=SCHEME_NAME,
    description="An API key of this deployment (TEXTCLF_API_KEYS): `Authorization: Bearer <key>`.",
)


class KeyRefused(Unauthorized):
    """401 with the RFC 6750 challenge that says why (no key, or a wrong one)."""

    def __init__(self, message: str, *, challenge: str = "Bearer") -> None:
        super().__init__(message)
        self.challenge = challenge


class KeyInURL(ServiceError):
    status_code = 400
    error_type = "bad_request"


@dataclass(slots=True)
class _Failures:
    since: float
    count: int = 0
    blocked_until: float = 0.0


class FailureLimiter:
    """Refuses an address for `block_s` once it sent `limit` wrong keys within `window_s`.

    Remembers at most `capacity` addresses: the one that failed least recently is forgotten
    first, so memory stays bounded whatever number of addresses an attacker uses."""

    def __init__(
        self,
        limit: int = 10,
        window_s: float = 60.0,
        block_s: float = 60.0,
        capacity: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.block_s = block_s
        self.capacity = capacity
        self._clock = clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until `client` may try again; None when it is not blocked."""
        record = self._clients.get(client)
        if record is None:
            return None
        left = record.blocked_until - self._clock()
        return max(1, math.ceil(left)) if left > 0 else None

    def failed(self, client: str) -> None:
        now = self._clock()
        record = self._clients.get(client)
        if record is None or now - record.since >= self.window_s:
            record = self._clients[client] = _Failures(since=now)
        record.count += 1
        self._clients.move_to_end(client)
        if record.count == self.limit:
            record.blocked_until = now + self.block_s
            logger.warning(
                "client %s refused for %.0f s after %d wrong API keys",
                client,
                self.block_s,
                record.count,
            )
        while len(self._clients) > self.capacity:
            self._clients.popitem(last=False)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class KeyCheck:
    """The accepted keys (as digests) and the failure limiter of one app."""

    def __init__(self, keys: tuple[str, ...], limiter: FailureLimiter | None = None) -> None:
        self._digests = tuple(_digest(key.encode()) for key in keys)
        self.limiter = limiter or FailureLimiter()

    def check(self, request: Request) -> None:
        """Return if the request may go on; raise the 400, 401 or 429 otherwise."""
        if not self._digests:
            return
        if request.scope.get("query_string") and any(
            name.lower() in _KEY_PARAMS for name in request.query_params
        ):
            raise KeyInURL(
                "an API key must not be sent in the URL (URLs are logged); "
                "send it as `Authorization: Bearer <key>`"
            )
        client = request.client.host if request.client else "unknown"
        wait = self.limiter.retry_after(client)
        if wait is not None:
            raise TooManyRequests(
                "too many wrong API keys from this address; retry later", retry_after=wait
            )
        header = request.headers.get("authorization")
        if header is None:
            raise KeyRefused("an API key is required: send `Authorization: Bearer <key>`")
        scheme, _, token = header.partition(" ")
        token = token.strip(" \t")
        if scheme.lower() != "bearer":
            self.limiter.failed(client)
            raise KeyRefused("send the API key as `Authorization: Bearer <key>`")
        given = _digest(token.encode("latin-1"))  # header values arrive latin-1 decoded
        matched = False
        for known in self._digests:  # every key, whatever matched before
            matched |= hmac.compare_digest(given, known)
        if not matched:
            self.limiter.failed(client)
            raise KeyRefused("the API key is not valid", challenge='Bearer error="invalid_token"')


def key_check(request: Request) -> KeyCheck:
    check: KeyCheck = request.app.state.key_check
    return check


async def require_key(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    """The dependency of the protected GET routes; `_declared` puts the scheme in OpenAPI."""
    key_check(request).check(request)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


def protected(*, checked_by_route: bool = False) -> dict[str, Any]:
    """`include_router` options of a router whose routes need a key: the scheme, the check
    (unless the route class does it itself, before the body), and the answers it adds."""
    dependency = Security(bearer) if checked_by_route else Security(require_key)
    return {
        "dependencies": [dependency],
        "responses": {
            400: _error("An API key was sent in the URL; send it in the Authorization header."),
            401: _error(
                "No API key, or not a valid one (see the WWW-Authenticate header); "
                "send `Authorization: Bearer <key>`."
            ),
            429: _error("Too many wrong API keys from this address; see Retry-After."),
        },
    }


class CORSPolicy(CORSMiddleware):
    """Starlette's CORS for the given origins and only what the API uses; a refused
    preflight is the JSON error with no Access-Control-* header at all."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=("GET", "POST"),
            allow_headers=("Authorization", "Content-Type", "X-Request-ID"),
            expose_headers=("X-Request-ID", "Retry-After"),
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else Headers()
        if (
            scope.get("method") == "OPTIONS"
            and "origin" in headers
            and "access-control-request-method" in headers
        ):
            response = self.preflight_response(request_headers=headers)
            if response.status_code != 200:
                request_id = scope.get("state", {}).get("request_id")
                response = error_response(
                    400,
                    "CORS preflight refused: origin, method or header not allowed",
                    "bad_request",
                    request_id,
                )
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

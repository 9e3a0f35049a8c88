"""Access control and HTTP hardening, in process on the fake classifier: API keys (401s,
rotation, key file, keys never in a URL, a response or a log, checked before the body), the
failure limiter, metrics/docs access, CORS, security headers, HEAD probes, no slash
redirects, and the throttled access log of error answers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.lifecycle import Phase
from app.engine.base import ModelLoadError
from app.http.middleware import ErrorLineThrottle
from app.http.security import SCHEME_NAME, FailureLimiter
from tests.conftest import done_within, predict_scope, until

pytestmark = pytest.mark.anyio

KEY = "key-one-0123456789abcdef"
OTHER_KEY = "key-two-fedcba9876543210"
FILE_KEY = "key-from-the-file-0f1e2d3c"
WRONG = "key-wrong-99999999999999"
ALL_KEYS = (KEY, OTHER_KEY, FILE_KEY, WRONG)
TEXT = {"text": "good"}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type", "request_id"}
    assert body["error_type"] == error_type
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def _no_key_in(response: httpx.Response) -> None:
    seen = response.text + "".join(f"{k}: {v}" for k, v in response.headers.items())
    assert not [key for key in ALL_KEYS if key in seen]


@pytest.fixture
async def keyed(start_app, fake_settings, fake) -> Any:
    return await start_app(fake_settings(api_keys=f"{KEY},{OTHER_KEY}"), factory=fake.factory)


def _client(app: Any, host: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_missing_wrong_and_malformed_keys_are_401_with_a_challenge(keyed) -> None:
    keyed.app.state.key_check.limiter = FailureLimiter(limit=100)  # more guesses than 10 here
    client = keyed.client
    for path, call in (("/predict", "post"), ("/model", "get")):
        kwargs: dict[str, Any] = {"json": TEXT} if call == "post" else {}
        missing = await getattr(client, call)(path, **kwargs)
        assert "Authorization: Bearer" in _assert_error(missing, 401, "unauthorized")["error"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await getattr(client, call)(path, headers=_bearer(WRONG), **kwargs)
        _assert_error(wrong, 401, "unauthorized")
        assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        for header in (f"Basic {KEY}", "Bearer", "Bearer ", f"Token {KEY}", KEY):
            malformed = await getattr(client, call)(
                path, headers={"Authorization": header}, **kwargs
            )
            _assert_error(malformed, 401, "unauthorized")
            assert malformed.headers["www-authenticate"].startswith("Bearer")
        for response in (missing, wrong, malformed):
            _no_key_in(response)
    assert keyed.app.state.lifecycle.in_flight == 0


async def test_every_configured_key_is_accepted(keyed) -> None:
    for key in (KEY, OTHER_KEY):
        assert (await keyed.client.post("/predict", json=TEXT, headers=_bearer(key))).is_success
        assert (await keyed.client.get("/model", headers=_bearer(key))).is_success
    lower_scheme = {"Authorization": f"bearer {KEY}"}
    assert (await keyed.client.get("/model", headers=lower_scheme)).is_success
    # A prefix, an extension or another case of a key is not the key.
    for near in (KEY[:-1], KEY + "0", KEY.upper()):
        response = await keyed.client.get("/model", headers=_bearer(near))
        _assert_error(response, 401, "unauthorized")


async def test_keys_from_the_key_file(start_app, fake_settings, fake, tmp_path: Path) -> None:
    keys_file = tmp_path / "api_keys"
    keys_file.write_text(f"{FILE_KEY}\n\n")
    api = await start_app(
        fake_settings(api_keys=KEY, api_keys_file=keys_file), factory=fake.factory
    )
    for key in (FILE_KEY, KEY):
        assert (await api.client.post("/predict", json=TEXT, headers=_bearer(key))).is_success
    _assert_error(await api.client.post("/predict", json=TEXT), 401, "unauthorized")


@pytest.mark.parametrize("name", ["api_key", "key", "token", "access_token", "API_KEY"])
async def test_a_key_in_the_url_is_refused_without_echoing_it(keyed, name: str) -> None:
    for path in ("/predict", "/model"):
        call = keyed.client.post if path == "/predict" else keyed.client.get
        kwargs: dict[str, Any] = {"json": TEXT} if path == "/predict" else {}
        response = await call(f"{path}?{name}={KEY}", headers=_bearer(KEY), **kwargs)
        body = _assert_error(response, 400, "bad_request")
        assert "URL" in body["error"] and "Authorization: Bearer" in body["error"]
        _no_key_in(response)


async def test_no_key_reaches_a_response_or_the_log(
    keyed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    responses = [
        await keyed.client.post("/predict", json=TEXT, headers=_bearer(KEY)),
        await keyed.client.post("/predict", json=TEXT, headers=_bearer(WRONG)),
        await keyed.client.get("/model", headers={"Authorization": f"Basic {WRONG}"}),
        await keyed.client.get(f"/model?token={WRONG}", headers=_bearer(KEY)),
        await keyed.client.get("/openapi.json", headers=_bearer(KEY)),
        await keyed.client.get("/metrics", headers=_bearer(KEY)),
    ]
    assert responses[0].is_success and caplog.records
    for response in responses:
        _no_key_in(response)
    # Everything the service logged (httpx's lines are this test client's own).
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any(r.name.startswith("app") for r in records)
    logged = "".join(f"{r.getMessage()} {vars(r)}" for r in records)
    assert not [key for key in ALL_KEYS if key in logged]


@pytest.mark.parametrize("length", ["declared", "chunked"])
async def test_the_key_is_checked_before_any_body_is_read(keyed, length: str) -> None:
    """A stranger's upload that never ends is answered 401 at once, its body never read."""
    reads = 0
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        await never.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = predict_scope(1_000_000)
    if length == "chunked":
        scope["headers"] = [(b"content-type", b"application/json")]
    call = asyncio.ensure_future(keyed.app(scope, receive, send))
    await done_within(call, timeout_s=5)
    assert sent[0]["status"] == 401 and reads == 0
    assert keyed.metric("textclf_requests_total", {"route": "/predict", "status": "401"}) == 1


async def test_probes_stay_open_and_answer_head(keyed) -> None:
    for path in ("/health", "/ready"):
        assert (await keyed.client.get(path)).status_code == 200
        head = await keyed.client.head(path)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == "application/json"


async def test_head_probes_report_not_ready(start_app, fake_settings) -> None:
    def broken(_: Any) -> Any:
        raise ModelLoadError("no model here")

    api = await start_app(fake_settings(), factory=broken, ready=False)
    await until(lambda: api.app.state.lifecycle.phase is Phase.FAILED)
    head = await api.client.head("/ready")
    assert head.status_code == 503 and head.content == b"" and head.headers["retry-after"]
    assert (await api.client.head("/health")).status_code == 200  # alive, not ready


@pytest.mark.parametrize(
    ("access", "without", "with_key"), [("open", 200, 200), ("key", 401, 200), ("off", 404, 404)]
)
async def test_metrics_access(
    start_app, fake_settings, fake, access: str, without: int, with_key: int
) -> None:
    api = await start_app(fake_settings(api_keys=KEY, metrics_access=access), factory=fake.factory)
    assert (await api.client.get("/metrics")).status_code == without
    assert (await api.client.get("/metrics", headers=_bearer(KEY))).status_code == with_key


async def test_docs_open_are_served_from_the_image(start_app, fake_settings, fake) -> None:
    api = await start_app(fake_settings(api_keys=KEY), factory=fake.factory)
    docs = await api.client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert not re.search(r"(src|href)=\"(https?:)?//", docs.text), "an asset from elsewhere"
    assert "/docs/key.js" not in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        response = await api.client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 1000, asset
        assert "max-age" in response.headers["cache-control"]
    spec = (await api.client.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"][SCHEME_NAME]
    assert scheme == {"type": "http", "scheme": "bearer", "description": scheme["description"]}
    for path, method in (("/predict", "post"), ("/model", "get")):
        operation = spec["paths"][path][method]
        assert operation["security"] == [{SCHEME_NAME: []}]
        assert {"401", "429"} <= set(operation["responses"])
    for path in ("/health", "/ready"):
        assert "security" not in spec["paths"][path]["get"]
    assert "security" not in spec["paths"]["/metrics"]["get"]  # metrics_access=open


async def test_docs_behind_a_key(start_app, fake_settings, fake) -> None:
    api = await start_app(fake_settings(api_keys=KEY, docs_access="key"), factory=fake.factory)
    _assert_error(await api.client.get("/openapi.json"), 401, "unauthorized")
    assert (await api.client.get("/openapi.json", headers=_bearer(KEY))).status_code == 200
    docs = await api.client.get("/docs")  # the page itself holds nothing secret
    assert docs.status_code == 200
    # The key script runs between Swagger UI's bundle and FastAPI's set-up script.
    bundle, script, setup = (
        docs.text.index("swagger-ui-bundle.js"),
        docs.text.index('src="/docs/key.js"'),
        docs.text.index("SwaggerUIBundle({"),
    )
    assert bundle < script < setup
    key_js = await api.client.get("/docs/key.js")
    assert key_js.headers["content-type"].startswith("text/javascript")
    for part in ("sessionStorage", "requestInterceptor", "preauthorizeApiKey", SCHEME_NAME):
        assert part in key_js.text
    # The CSP allows 'self' scripts and exactly the page's one inline script.
    policy = docs.headers["content-security-policy"]
    inline = re.findall(r"<script>(.*?)</script>", docs.text, flags=re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in policy
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy


async def test_docs_off(start_app, fake_settings, fake) -> None:
    api = await start_app(fake_settings(docs_access="off"), factory=fake.factory)
    for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui.css", "/docs/key.js"):
        _assert_error(await api.client.get(path), 404, "not_found")


async def test_keys_off_declare_no_scheme(start_app, fake_settings, fake) -> None:
    api = await start_app(fake_settings(), factory=fake.factory)
    spec = (await api.client.get("/openapi.json")).json()
    assert "securitySchemes" not in spec.get("components", {})
    assert "401" not in spec["paths"]["/predict"]["post"]["responses"]
    assert (await api.client.post("/predict", json=TEXT)).is_success


ORIGIN = "https://app.example.com"


async def test_cors_preflight_allows_only_the_api(start_app, fake_settings, fake) -> None:
    api = await start_app(fake_settings(cors_allow_origins=ORIGIN), factory=fake.factory)
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
    }
    allowed = await api.client.options("/predict", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert set(allowed.headers["access-control-allow-methods"].split(", ")) == {"GET", "POST"}
    allowed_headers = allowed.headers["access-control-allow-headers"].lower().split(", ")
    assert {"authorization", "content-type", "x-request-id"} <= set(allowed_headers)
    assert "access-control-allow-credentials" not in allowed.headers
    refused = [
        preflight | {"Origin": "https://evil.example.net"},
        preflight | {"Access-Control-Request-Method": "DELETE"},
        preflight | {"Access-Control-Request-Headers": "x-custom"},
    ]
    for headers in refused:
        response = await api.client.options("/predict", headers=headers)
        _assert_error(response, 400, "bad_request")
        assert not [h for h in response.headers if h.startswith("access-control-")]
    simple = await api.client.post("/predict", json=TEXT, headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    exposed = simple.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "retry-after" in exposed
    other = await api.client.get("/health", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    "settings", [{"cors_allow_origins": ORIGIN}, {"api_keys": KEY}], ids=["cors", "keys"]
)
async def test_a_body_without_content_type_is_415_when_cors_or_keys_are_on(
    start_app, fake_settings, fake, settings: dict[str, str]
) -> None:
    api = await start_app(fake_settings(**settings), factory=fake.factory)
    headers = _bearer(KEY) | {"Origin": ORIGIN}
    untyped = await api.client.post("/predict", content=b'{"text": "good"}', headers=headers)
    _assert_error(untyped, 415, "unsupported_media_type")
    for form in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        typed = await api.client.post(
            "/predict", content=b'{"text": "good"}', headers=headers | {"content-type": form}
        )
        _assert_error(typed, 415, "unsupported_media_type")
    assert (await api.client.post("/predict", json=TEXT, headers=headers)).is_success
    assert fake.batches == [(1, 3)]  # only the JSON one reached the model


async def test_without_cors_and_keys_an_untyped_body_is_still_json(
    start_app, fake_settings, fake
) -> None:
    api = await start_app(fake_settings(), factory=fake.factory)
    response = await api.client.post("/predict", content=b'{"text": "good"}')
    assert response.is_success


async def test_security_headers_on_every_answer(keyed) -> None:
    answers = [
        await keyed.client.post("/predict", json=TEXT, headers=_bearer(KEY)),
        await keyed.client.post("/predict", json=TEXT),
        await keyed.client.get("/nope"),
        await keyed.client.get("/health"),
        await keyed.client.get("/docs"),
    ]
    for response in answers:
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["cache-control"] == "no-store"
        assert response.headers.get_list("content-security-policy") == [
            response.headers["content-security-policy"]
        ]
    assert answers[0].headers["content-security-policy"].startswith("default-src 'none'")
    assert "script-src 'self'" in answers[-1].headers["content-security-policy"]


async def test_no_slash_redirects_and_no_host_reflection(keyed) -> None:
    for path in ("/predict/", "/health/", "/model/"):
        response = await keyed.client.get(path, headers={"Host": "evil.example.net"})
        _assert_error(response, 404, "not_found")
        assert "location" not in response.headers
        assert "evil" not in response.text


async def test_repeated_wrong_keys_are_refused_for_a_while(keyed) -> None:
    limiter: FailureLimiter = keyed.app.state.key_check.limiter
    async with (
        _client(keyed.app, "203.0.113.7") as guesser,
        _client(keyed.app, "198.51.100.2") as neighbour,
    ):
        for _ in range(limiter.limit):
            _assert_error(await guesser.get("/model", headers=_bearer(WRONG)), 401, "unauthorized")
        for headers in (_bearer(WRONG), _bearer(KEY), {}):
            blocked = await guesser.post("/predict", json=TEXT, headers=headers)
            _assert_error(blocked, 429, "rate_limited")
            assert 1 <= int(blocked.headers["retry-after"]) <= limiter.block_s
        # A missing key is not a guess; another address is not blocked.
        for _ in range(limiter.limit + 2):
            _assert_error(await neighbour.get("/model"), 401, "unauthorized")
        assert (await neighbour.get("/model", headers=_bearer(KEY))).is_success


def test_the_failure_limiter_forgets_and_stays_bounded() -> None:
    now = [0.0]
    limiter = FailureLimiter(limit=3, window_s=10, block_s=30, capacity=100, clock=lambda: now[0])
    for _ in range(2):
        limiter.failed("a")
    now[0] = 11.0  # the window passed: the count starts again
    for _ in range(2):
        limiter.failed("a")
    assert limiter.retry_after("a") is None
    limiter.failed("a")
    assert limiter.retry_after("a") == 30
    now[0] = 40.5
    assert limiter.retry_after("a") == 1
    now[0] = 41.0
    assert limiter.retry_after("a") is None
    for number in range(10_000):
        limiter.failed(f"10.0.{number // 256}.{number % 256}")
    assert len(limiter) == 100
    assert limiter.retry_after("a") is None  # the oldest were forgotten first


def test_error_lines_are_throttled_per_route_and_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    now = [0.0]
    throttle = ErrorLineThrottle(interval_s=1.0, clock=lambda: now[0])
    admitted = [throttle.admit("unmatched", 404) for _ in range(500)]
    assert admitted.count(True) == 1
    assert throttle.admit("/predict", 503) and throttle.admit("unmatched", 405)
    throttle.flush()
    assert "suppressed" not in caplog.text  # not a full interval yet
    now[0] = 1.0
    throttle.flush()
    lines = [r.getMessage() for r in caplog.records if "suppressed" in r.getMessage()]
    assert lines == ["499 similar lines suppressed: unmatched 404 within 1 s"]
    assert throttle.admit("unmatched", 404)


async def test_a_flood_of_errors_logs_few_lines_but_counts_all(
    start_app, fake_settings, fake, caplog: pytest.LogCaptureFixture
) -> None:
    api = await start_app(fake_settings(), factory=fake.factory)
    caplog.set_level(logging.INFO, logger="app.access")
    started = time.monotonic()
    for _ in range(200):
        await api.client.get("/nope")
    lines = [r for r in caplog.records if r.name == "app.access"]
    assert 1 <= len(lines) <= 2 * (1 + time.monotonic() - started)
    assert api.metric("textclf_requests_total", {"route": "unmatched", "status": "404"}) == 200
    await asyncio.sleep(1.05)
    await api.client.get("/health")  # any request reports what was held back
    own = [r for r in caplog.records if r.getMessage().startswith("GET unmatched 404")]
    held = sum(getattr(r, "suppressed", 0) for r in caplog.records)
    assert len(own) + held == 200 and held > 0

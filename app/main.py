"""Application factory and lifespan. Nothing heavy happens at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.config import Settings
from app.core.bringup import ClassifierFactory, build_service, in_daemon_thread, prepare
from app.core.idle import release_memory_when_idle
from app.core.lifecycle import Lifecycle
from app.engine.base import ModelLoadError
from app.http.docs import install_docs
from app.http.handlers import install_error_handlers
from app.http.metrics_port import serve_metrics
from app.http.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.http.routes import metrics_router, model_router, predict_router, router
from app.http.schemas import PredictRequest
from app.http.security import CORSPolicy, KeyCheck, protected
from app.metrics import Metrics

logger = logging.getLogger(__name__)

_DESCRIPTION = """
Classifies text with a Hugging Face sequence-classification model. Concurrent requests are
batched dynamically. Every error is JSON `{"error", "error_type", "request_id"}` and never
echoes the input; 503 answers carry `Retry-After`.
"""


def _default_factory(settings: Settings) -> Any:
    from app.engine.loader import load_classifier  # torch loads here, not at import

    return load_classifier(settings)


async def _bring_up(app: FastAPI, factory: ClassifierFactory) -> None:
    settings: Settings = app.state.settings
    lifecycle: Lifecycle = app.state.lifecycle
    try:
        classifier, cost = await in_daemon_thread(lambda: prepare(settings, factory))
    except ModelLoadError as exc:
        lifecycle.fail(str(exc))
        return
    except Exception as exc:  # anything else from a broken folder: still one clear line
        logger.debug("model load traceback", exc_info=exc)
        lifecycle.fail(f"cannot load the model from MODEL_PATH={settings.model_path}: {exc!r}")
        return
    lifecycle.ready(build_service(classifier, cost, settings, app.state.metrics))


def _start_metrics_port(app: FastAPI) -> Callable[[], None] | None:
    settings: Settings = app.state.settings
    if settings.metrics_port is None:
        return None
    try:
        return serve_metrics(app.state.metrics.registry, settings.host, settings.metrics_port)
    except OSError as exc:  # the lifecycle turns this into exit code 3 with one line
        app.state.lifecycle.fail(
            f"cannot serve /metrics on TEXTCLF_METRICS_PORT={settings.metrics_port}: "
            f"{exc.strerror or exc}"
        )
        return None


def _lifespan(factory: ClassifierFactory) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Load in the background so /health answers at once and /ready says 503 until done."""
        lifecycle: Lifecycle = app.state.lifecycle
        stop_metrics = _start_metrics_port(app)
        bring_up = asyncio.create_task(_bring_up(app, factory), name="bring-up")
        housekeeping = asyncio.create_task(release_memory_when_idle(lifecycle), name="idle")
        try:
            yield
        finally:
            if stop_metrics is not None:
                stop_metrics()
            lifecycle.begin_drain()
            for task in (bring_up, housekeeping):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            if lifecycle.service is not None:
                await lifecycle.service.close()

    return lifespan


def _openapi_with_limits(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """The OpenAPI schema with this deployment's request limits (FastAPI's documented way
    to extend the schema), so /docs and generated clients know them."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            name = PredictRequest.__name__
            fields = schema["components"]["schemas"][name]["properties"]
            fields["text"]["maxLength"] = settings.max_text_chars
            fields["texts"]["maxItems"] = settings.max_items_per_request
            fields["texts"]["items"]["maxLength"] = settings.max_text_chars
        return app.openapi_schema or {}

    return openapi


def create_app(
    settings: Settings | None = None,
    *,
    factory: ClassifierFactory = _default_factory,
    on_fatal: Callable[[str], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the app. `factory` loads the classifier (tests pass a fake); `on_fatal` and
    `on_ready` let `python -m app` stop the server or tune the process."""
    settings = settings or Settings()
    keys = settings.keys  # read once: API_KEYS_FILE is read again only at the next start
    app = FastAPI(
        title="Text classification service",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=_lifespan(factory),
        docs_url=None,  # docs.py serves them, from the image
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # its redirects would be built from the client's Host header
    )
    metrics = Metrics()
    lifecycle = Lifecycle(on_fatal=on_fatal, on_ready=on_ready)
    metrics.in_flight.set_function(lambda: lifecycle.in_flight)
    metrics.ready.set_function(lambda: 1 if lifecycle.is_ready else 0)
    # The limits as series, so alerts compare against this deployment's settings.
    metrics.queue_tokens_limit.set(settings.max_queue_tokens)
    metrics.request_timeout.set(settings.request_timeout_s)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = lifecycle
    app.state.key_check = KeyCheck(keys)
    app.state.content_type_required = bool(keys or settings.cors_origins)
    # /predict checks the key itself, before its body is read (PredictRoute).
    access = [
        (predict_router, protected(checked_by_route=True) if keys else {}),
        (router, {}),
        (model_router, protected() if keys else {}),
    ]
    if settings.metrics_access != "off":
        access.append((metrics_router, protected() if settings.metrics_access == "key" else {}))
    for included, options in access:
        app.include_router(included, **options)
    install_docs(app, settings)
    app.openapi = _openapi_with_limits(app, settings)  # type: ignore[method-assign]
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSPolicy, origins=settings.cors_origins)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        # The included routers' own routes: FastAPI lists an included router as one entry.
        known_paths=frozenset(
            getattr(route, "path", "")
            for routes in (app.routes, *(included.routes for included, _ in access))
            for route in routes
        ),
    )
    return app

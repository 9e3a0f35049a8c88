"""Application factory and lifespan. Nothing heavy happens at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.classifier import HFClassifier, ModelLoadError
from app.config import Settings
from app.errors import install_error_handlers
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.middleware import BodyLimitMiddleware, InFlightMiddleware, RequestContextMiddleware
from app.routes import router, serve_predict_directly
from app.schemas import PredictRequest
from app.startup import ClassifierLoader, build_service, in_daemon_thread, prepare

logger = logging.getLogger(__name__)

_DESCRIPTION = """
Classifies text with a Hugging Face sequence-classification model. Concurrent requests are
batched dynamically. Every error is JSON `{"error", "error_type", "request_id"}` and never
echoes the input; 503 answers carry `Retry-After`.
"""


async def _bring_up(app: FastAPI, loader: ClassifierLoader) -> None:
    settings: Settings = app.state.settings
    lifecycle: Lifecycle = app.state.lifecycle
    try:
        classifier, cost = await in_daemon_thread(lambda: prepare(settings, loader))
    except ModelLoadError as exc:
        lifecycle.fail(str(exc))
        return
    except Exception as exc:  # anything else from a broken folder: still one clear line
        logger.debug("model load traceback", exc_info=exc)
        lifecycle.fail(f"cannot load the model from MODEL_PATH={settings.model_path}: {exc!r}")
        return
    lifecycle.ready(build_service(classifier, cost, settings, app.state.metrics))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load in the background so /health answers at once and /ready says 503 until done."""
    loader: ClassifierLoader = app.state.loader
    bring_up = asyncio.create_task(_bring_up(app, loader), name="bring-up")
    try:
        yield
    finally:
        lifecycle: Lifecycle = app.state.lifecycle
        lifecycle.begin_drain()
        bring_up.cancel()
        with suppress(asyncio.CancelledError):
            await bring_up
        if lifecycle.service is not None:
            await lifecycle.service.close()


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Put this deployment's request limits into the OpenAPI schema that /docs shows."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            request_schema = PredictRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schema["components"]["schemas"]["PredictRequest"] = request_schema
            fields = request_schema["properties"]
            fields["text"]["maxLength"] = settings.max_text_chars
            fields["texts"]["maxItems"] = settings.max_items_per_request
            fields["texts"]["items"]["maxLength"] = settings.max_text_chars
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: Settings | None = None,
    *,
    loader: ClassifierLoader = HFClassifier,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the app. `loader` and `on_fatal` let tests and `python -m app` plug in."""
    settings = settings or Settings()
    docs = settings.docs_enabled
    app = FastAPI(
        title="Text classification service",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=_lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.lifecycle = Lifecycle(on_fatal=on_fatal)
    app.state.loader = loader
    app.include_router(router)
    serve_predict_directly(app)
    _document_limits(app, settings)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(InFlightMiddleware, lifecycle=app.state.lifecycle, metrics=app.state.metrics)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=app.state.metrics,
        known_paths=frozenset(getattr(r, "path", "") for r in app.routes),
    )
    return app

"""HTTP routes: thin handlers over the classification service and the lifecycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route
from starlette.types import Scope

from app.config import Settings
from app.errors import ClientGone, NotReady, UnsupportedMediaType, error_response
from app.lifecycle import STALLED, Lifecycle, Phase
from app.metrics import Metrics
from app.schemas import (
    BatchingInfo,
    BatchPredictResponse,
    ErrorResponse,
    HealthResponse,
    ModelInfoResponse,
    PredictRequest,
    ReadyResponse,
    SinglePredictResponse,
)
from app.service import Classified

T = TypeVar("T")
router = APIRouter()


# Dependencies are `async def` on purpose: FastAPI runs plain `def` ones on a worker thread.
async def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


_PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    413: _error("The body is larger than MAX_BODY_BYTES."),
    415: _error("The body was sent with a Content-Type other than JSON."),
    422: _error(
        "Invalid request: body not JSON (or not UTF-8), missing or empty text, wrong types, "
        "unknown fields, too many items, text too long, lone surrogates, or too many tokens "
        "with truncate=false."
    ),
    499: {"description": "The client closed the connection; nothing is sent."},
    500: _error("An unexpected server fault (never caused by input)."),
    503: _error(
        "Not ready, draining, queue full (`overloaded`) or device out of memory; "
        "see the Retry-After header."
    ),
    504: _error("No answer within REQUEST_TIMEOUT_S; the work was dropped."),
}


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` in this task, but give up on it as soon as the client hangs up.

    One watcher task cancels this one on a disconnect. Running `work` as a second task and
    waiting on both cost two task creations and an asyncio.wait per request (py-spy: the
    event loop's CPU is what bounds throughput at concurrency 32)."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request)
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()  # the cancellation was ours: nothing outside asked for it
        raise ClientGone from None
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _prediction(item: Classified) -> dict[str, Any]:
    decision = item.decision
    return {
        "label": decision.label,
        "confidence": decision.confidence,
        "scores": [{"label": s.label, "score": s.score} for s in decision.scores],
        "predicted_labels": decision.predicted_labels,
        "num_tokens": item.encoded.num_tokens,
        "truncated": item.encoded.truncated,
    }


_PREDICT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
}


async def _read_predict_request(request: Request) -> PredictRequest:
    """Parse and validate in one pass with pydantic-core's JSON parser.

    The hot route skips FastAPI's body and dependency machinery (a measured third of its
    per-request CPU); the OpenAPI schema still documents the body (see `_PREDICT_BODY`).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and not content_type.endswith(("/json", "+json")):
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    try:
        raw = await request.body()
    except ClientDisconnect:  # hung up mid-upload: not a server error
        raise ClientGone from None
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


@router.post(
    "/predict",
    response_model=SinglePredictResponse | BatchPredictResponse,
    responses=_PREDICT_ERRORS,
    summary="Classify one text or a batch of texts",
    openapi_extra={"requestBody": _PREDICT_BODY},
)
async def predict(request: Request) -> Response:
    start = time.perf_counter()
    lifecycle: Lifecycle = request.app.state.lifecycle
    service = lifecycle.require_service(request.scope["state"].get("admitted_before_drain", False))
    try:
        body = await _read_predict_request(request)
    except ClientGone:
        # The texts never arrived, so count the request as one.
        request.app.state.metrics.rejections.labels("client_gone").inc()
        return Response(status_code=499)
    try:
        results = await _unless_disconnected(
            request,
            service.classify(body.items, truncate=body.truncate, top_k=body.top_k),
        )
    except ClientGone:
        request.app.state.metrics.rejections.labels("client_gone").inc(len(body.items))
        return Response(status_code=499)
    meta = {
        "processing_time_ms": round((time.perf_counter() - start) * 1000, 3),
        "model": service.classifier.info.name,
    }
    if body.text is not None:
        return JSONBytes(_prediction(results[0]) | meta)
    return JSONBytes({"predictions": [_prediction(r) for r in results]} | meta)


_STALLED = f"{STALLED}; restart the process"


@router.get(
    "/health",
    summary="Liveness: the process serves requests",
    response_model=HealthResponse,
    responses={503: _error("An inference thread has died: restart the process.")},
)
async def health(request: Request, lifecycle: LifecycleDep) -> Response:
    # Loading or draining is still alive; only a loaded service that can never answer again
    # fails, so that an orchestrator restarts it.
    if lifecycle.stalled:
        return error_response(503, _STALLED, "internal", request.state.request_id)
    service = lifecycle.service
    return JSONBytes(
        HealthResponse(
            status="ok",
            model_loaded=service is not None,
            device=service.classifier.info.device if service is not None else None,
            phase=lifecycle.phase.value,
        ).model_dump()
    )


@router.get(
    "/ready",
    summary="Readiness: model loaded, warmed up, batcher running, not draining",
    responses={503: _error("Loading, draining, or the model failed to load.")},
)
async def ready(request: Request, lifecycle: LifecycleDep) -> Response:
    if lifecycle.is_ready:
        return JSONBytes(ReadyResponse(status="ready").model_dump())
    kind = "draining" if lifecycle.phase is Phase.DRAINING else "not_ready"
    message = _STALLED if lifecycle.stalled else f"not ready: {lifecycle.phase.value}"
    return error_response(503, message, kind, request.state.request_id, retry_after=5)


@router.get(
    "/model",
    summary="What is served: model, labels, limits, device",
    responses={503: _error("The model is not loaded yet.")},
)
async def model_info(lifecycle: LifecycleDep, settings: SettingsDep) -> ModelInfoResponse:
    service = lifecycle.service
    if service is None:
        raise NotReady("the model is not loaded yet", retry_after=5)
    info = service.classifier.info
    return ModelInfoResponse(
        **info.__dict__,
        multi_label_threshold=settings.multi_label_threshold,
        batching=BatchingInfo(
            inference_workers=service.classifier.workers,
            torch_threads=service.classifier.threads,
            alone_pass_threads=service.classifier.alone_threads,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_wait_ms=settings.max_batch_wait_ms,
            max_queue_size=settings.max_queue_size,
            request_timeout_s=settings.request_timeout_s,
            max_items_per_request=settings.max_items_per_request,
            max_text_chars=settings.max_text_chars,
        ),
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request, lifecycle: LifecycleDep) -> Response:
    registry_owner: Metrics = request.app.state.metrics
    registry_owner.ready.set(1 if lifecycle.is_ready else 0)
    return Response(generate_latest(registry_owner.registry), media_type=CONTENT_TYPE_LATEST)


def serve_predict_directly(app: FastAPI) -> None:
    """Route POST /predict to `predict` through a plain Starlette route, ahead of the
    documented FastAPI one.

    `predict` reads the raw request itself, yet FastAPI's dependency solving around it was a
    seventh of the event loop's CPU per request. The FastAPI route stays registered for the
    OpenAPI schema and /docs; the first matching route wins, so it never runs."""
    app.router.routes.insert(
        0, _NamedRoute("/predict", predict, methods=["POST"], include_in_schema=False)
    )


class _NamedRoute(Route):
    """A Starlette route that, like FastAPI's, names itself in the scope (metrics, logs)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child

"""HTTP routes: thin handlers over the classification service and the lifecycle."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.core.errors import Draining, NotReady, ServiceError
from app.core.lifecycle import STALLED, Lifecycle, Phase
from app.http.deps import LifecycleDep, MetricsDep, ServiceDep, SettingsDep
from app.http.handlers import service_error_response
from app.http.predict_route import PredictRoute, unless_disconnected
from app.http.schemas import (
    BatchingInfo,
    BatchPredictResponse,
    ErrorResponse,
    HealthResponse,
    ModelInfoResponse,
    PredictRequest,
    ReadyResponse,
    SinglePredictResponse,
)

# Each router is one access rule: `create_app` includes it open, behind a key, or not at all.
router = APIRouter()  # the probes: always open
model_router = APIRouter()
metrics_router = APIRouter()
# A body with no Content-Type at all is read as JSON (unless keys or CORS are on: see
# `PredictRoute`).
predict_router = APIRouter(route_class=PredictRoute, strict_content_type=False)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


_PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    413: _error(
        "The body is larger than TEXTCLF_MAX_BODY_BYTES, or the request holds more tokens "
        "than TEXTCLF_MAX_QUEUE_TOKENS or could not finish within TEXTCLF_REQUEST_TIMEOUT_S "
        "even on an idle server: send fewer or shorter texts."
    ),
    415: _error("The body was sent with a Content-Type other than JSON."),
    422: _error(
        "Invalid request: body not JSON (or not UTF-8), missing or empty text, wrong types, "
        "unknown fields, a field given twice, too many items, text too long, lone surrogates, "
        "or too many tokens with truncate=false."
    ),
    499: {"description": "The client closed the connection; nothing is sent."},
    500: _error("An unexpected server fault (never caused by input)."),
    503: _error(
        "Not ready, draining, overloaded (the request would not finish within its deadline "
        "behind the queued work, or the queue holds TEXTCLF_MAX_QUEUE_TOKENS) or device out "
        "of memory; see the Retry-After header."
    ),
    504: _error("No answer within TEXTCLF_REQUEST_TIMEOUT_S; the work was dropped."),
}
_STALLED = f"{STALLED}; restart the process"


@predict_router.post(
    "/predict",
    response_model=SinglePredictResponse | BatchPredictResponse,
    responses=_PREDICT_ERRORS,
    summary="Classify one text or a batch of texts",
)
async def predict(
    body: PredictRequest, service: ServiceDep, request: Request
) -> SinglePredictResponse | BatchPredictResponse:
    start = time.perf_counter()
    texts = body.items
    work = service.classify(texts, truncate=body.truncate, top_k=body.top_k)
    predictions = await unless_disconnected(request, work, texts=len(texts))
    elapsed_ms = round((time.perf_counter() - start) * 1000, 3)
    name = service.classifier.info.name
    if body.text is not None:
        return SinglePredictResponse.model_construct(
            **predictions[0].__dict__, processing_time_ms=elapsed_ms, model=name
        )
    return BatchPredictResponse.model_construct(
        predictions=predictions, processing_time_ms=elapsed_ms, model=name
    )


@router.get(
    "/health",
    summary="Liveness: the process serves requests",
    response_model=HealthResponse,
    responses={503: _error("An inference thread has died: restart the process.")},
)
async def health(request: Request, lifecycle: LifecycleDep) -> HealthResponse | JSONResponse:
    # Loading or draining is still alive; only a loaded service that can never answer again
    # fails, so that an orchestrator restarts it.
    if lifecycle.stalled:
        return service_error_response(NotReady(_STALLED), request.state.request_id)
    service = lifecycle.service
    return HealthResponse(
        status="ok",
        model_loaded=service is not None,
        device=service.classifier.info.device if service is not None else None,
        phase=lifecycle.phase.value,
    )


@router.get(
    "/ready",
    summary="Readiness: model loaded, warmed up, batcher running, not draining",
    response_model=ReadyResponse,
    responses={503: _error("Loading, draining, or the model failed to load.")},
)
async def ready(lifecycle: LifecycleDep) -> ReadyResponse:
    if not lifecycle.is_ready:
        raise _not_ready(lifecycle)
    return ReadyResponse(status="ready")


# Load balancers and uptime checks often probe with HEAD: same status, no body.
for _path, _probe in (("/health", health), ("/ready", ready)):
    router.add_api_route(
        _path, _probe, methods=["HEAD"], response_model=None, include_in_schema=False
    )


def _not_ready(lifecycle: Lifecycle) -> ServiceError:
    if lifecycle.stalled:
        return NotReady(_STALLED, retry_after=5)
    if lifecycle.phase is Phase.DRAINING:
        return Draining("not ready: draining", retry_after=5)
    return NotReady(f"not ready: {lifecycle.phase.value}", retry_after=5)


@model_router.get(
    "/model",
    summary="What is served: model, labels, limits, device, forward pass",
    response_model=ModelInfoResponse,
    responses={503: _error("The model is not loaded yet.")},
)
async def model_info(lifecycle: LifecycleDep, settings: SettingsDep) -> ModelInfoResponse:
    service = lifecycle.service
    if service is None:
        raise NotReady("the model is not loaded yet", retry_after=5)
    classifier = service.classifier
    return ModelInfoResponse(
        **classifier.info.__dict__,
        multi_label_threshold=settings.multi_label_threshold,
        batching=BatchingInfo(
            inference_workers=classifier.workers,
            torch_threads=classifier.threads,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_wait_ms=settings.max_batch_wait_ms,
            max_queue_tokens=settings.max_queue_tokens,
            request_timeout_s=settings.request_timeout_s,
            max_items_per_request=settings.max_items_per_request,
            max_text_chars=settings.max_text_chars,
        ),
    )


@metrics_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""Dependencies of the routes: typed accessors over `app.state`, and admission to /predict."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.core.lifecycle import Lifecycle
from app.core.service import ClassificationService
from app.metrics import Metrics


# `async def` on purpose: FastAPI runs plain `def` dependencies on a worker thread.
async def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_service(request: Request) -> ClassificationService:
    """The service for a request that may run now: 503 while loading, failed or draining,
    except for a request that arrived before the drain began (see `PredictRoute`)."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    admitted = getattr(request.state, "admitted_before_drain", False)
    return lifecycle.require_service(admitted_before_drain=admitted)


LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServiceDep = Annotated[ClassificationService, Depends(get_service)]

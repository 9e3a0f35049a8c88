"""Where the service is in its life (loading, ready, draining, failed) and its in-flight work."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from app.errors import Draining, NotReady
from app.service import ClassificationService

logger = logging.getLogger(__name__)


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Lifecycle:
    """Shared by the routes, the lifespan and the signal handling of `python -m app`."""

    def __init__(self, on_fatal: Callable[[str], None] | None = None) -> None:
        self.phase = Phase.LOADING
        self.service: ClassificationService | None = None
        self.failure: str | None = None
        self.in_flight = 0
        self._on_fatal = on_fatal
        self._idle = asyncio.Event()
        self._idle.set()

    def ready(self, service: ClassificationService) -> None:
        self.service = service
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY

    def fail(self, reason: str) -> None:
        self.phase = Phase.FAILED
        self.failure = reason
        logger.error("cannot serve: %s", reason)
        if self._on_fatal is not None:
            self._on_fatal(reason)

    def begin_drain(self) -> None:
        """Readiness turns 503 and new work is refused; in-flight requests carry on."""
        if self.phase is not Phase.FAILED:
            self.phase = Phase.DRAINING

    @property
    def is_ready(self) -> bool:
        service = self.service
        return self.phase is Phase.READY and service is not None and service.batcher.alive

    def require_service(self) -> ClassificationService:
        if self.phase is Phase.DRAINING:
            raise Draining("the service is shutting down; retry on another replica", retry_after=1)
        if not self.is_ready or self.service is None:
            detail = "the model failed to load" if self.phase is Phase.FAILED else "loading"
            raise NotReady(f"the model is not ready ({detail})", retry_after=5)
        return self.service

    @contextmanager
    def track(self) -> Iterator[None]:
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

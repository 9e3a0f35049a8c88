"""Where the service is in its life (loading, ready, draining, failed) and its in-flight work."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from app.core.errors import Draining, NotReady
from app.core.service import ClassificationService

logger = logging.getLogger(__name__)


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


STALLED = "the inference threads have stopped"


class Lifecycle:
    """Shared by the routes, the lifespan and the signal handling of `python -m app`."""

    def __init__(
        self,
        on_fatal: Callable[[str], None] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.phase = Phase.LOADING
        self.service: ClassificationService | None = None
        self.failure: str | None = None
        self.in_flight = 0
        self.finished = 0  # requests ever tracked to their end
        self._on_fatal = on_fatal
        self._on_ready = on_ready

    def ready(self, service: ClassificationService) -> None:
        self.service = service
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
        if self._on_ready is not None:
            self._on_ready()

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
    def stalled(self) -> bool:
        """Loaded, but an inference thread has died: nothing will ever be served again."""
        service = self.service
        return self.phase is Phase.READY and service is not None and not service.batcher.alive

    @property
    def is_ready(self) -> bool:
        service = self.service
        return self.phase is Phase.READY and service is not None and service.batcher.alive

    def require_service(self, admitted_before_drain: bool = False) -> ClassificationService:
        """The service, for a request that may run now.

        A request that arrived before SIGTERM is in flight and is served while draining;
        one that arrives after it gets 503 so the client retries elsewhere.
        """
        service = self.service
        if self.phase is Phase.DRAINING:
            if admitted_before_drain and service is not None and service.batcher.alive:
                return service
            raise Draining("the service is shutting down; retry on another replica", retry_after=1)
        if not self.is_ready or self.service is None:
            detail = "the model failed to load" if self.phase is Phase.FAILED else "loading"
            if self.stalled:
                detail = STALLED
            raise NotReady(f"the model is not ready ({detail})", retry_after=5)
        return self.service

    @contextmanager
    def track(self) -> Iterator[bool]:
        """Count a request as in flight; yields whether it arrived before the drain began."""
        admitted = self.phase is not Phase.DRAINING
        self.in_flight += 1
        try:
            yield admitted
        finally:
            self.in_flight -= 1
            self.finished += 1

"""/metrics on a port of its own, for a scraper that a network policy keeps apart from clients
(Kubernetes: the proxy may reach the API port only, the monitoring namespace this one only)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, start_http_server

logger = logging.getLogger(__name__)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Callable[[], None]:
    """Serve the registry on host:port from a thread; returns the function that stops it.
    Raises OSError when the port cannot be bound."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    logger.info("metrics on http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop

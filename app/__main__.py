"""`python -m app`: validate settings, then serve with one process and a graceful drain."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from app.config import Settings, describe_error
from app.core.bringup import ClassifierFactory
from app.core.lifecycle import Lifecycle
from app.engine import runtime
from app.http.protocol import ConnectionGuard
from app.logging_config import configure_logging

logger = logging.getLogger("app")

EXIT_BAD_SETTINGS = 2
EXIT_MODEL_FAILED = 3


class DrainingServer(uvicorn.Server):
    """On SIGTERM: readiness turns 503 at once, every response from then on closes its
    connection (idle keep-alive ones close at once), in-flight requests finish, then uvicorn
    stops; uploads still arriving when the grace period ends are answered 503.

    uvicorn alone would close the listener straight away; a load balancer still sending
    traffic would see refused connections instead of a clean 503 it can retry elsewhere.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        grace_s: float,
        lifecycle: Lifecycle,
        guard: ConnectionGuard,
    ) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.lifecycle = lifecycle
        self.guard = guard
        self.exit_code = 0
        self._signalled = False
        self._drain_since: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()  # before uvicorn installs the signal handlers
        await super().serve(sockets)

    def fail(self, reason: str) -> None:
        self.exit_code = EXIT_MODEL_FAILED
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler runs between any two bytecodes of the main thread, even inside a
        # log call writing to stderr (a log line here raised "reentrant call" and the drain
        # never began): only set flags here, and start the drain from the event loop.
        if self._signalled or self._loop is None:
            self.should_exit = True
            self.force_exit = self._signalled
            return
        self._signalled = True
        self._loop.call_soon_threadsafe(self._begin_drain, sig)

    def _begin_drain(self, sig: int) -> None:
        logger.info("signal %d: draining (grace %.0f s)", sig, self.grace_s)
        self._drain_since = time.monotonic()
        self.lifecycle.begin_drain()
        self.guard.begin_drain(self.server_state.connections)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_since is not None and not self.should_exit:
            waited = time.monotonic() - self._drain_since
            if self.lifecycle.in_flight == 0 or waited >= self.grace_s:
                if self.lifecycle.in_flight:
                    logger.warning("grace period over with %d requests", self.lifecycle.in_flight)
                    self.guard.end_grace(self.server_state.connections)
                self.should_exit = True
                self.config.timeout_graceful_shutdown = max(1, int(self.grace_s - waited) + 1)
        return await super().on_tick(counter)


def main(factory: ClassifierFactory | None = None) -> int:
    """Serve until stopped; `factory` replaces the model loader (a fake engine, for tests)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"error: invalid settings: {describe_error(exc)}", file=sys.stderr)  # noqa: T201
        return EXIT_BAD_SETTINGS
    configure_logging(settings.log_level, settings.log_json)
    runtime.configure_process()

    from app.main import create_app  # after configure_process: torch reads its environment

    servers: list[DrainingServer] = []
    app = create_app(
        settings,
        **({"factory": factory} if factory is not None else {}),
        on_fatal=lambda reason: servers[0].fail(reason),
        on_ready=runtime.freeze_heap,
    )
    server = build_server(settings, app)
    servers.append(server)
    server.run()
    return server.exit_code


def build_server(settings: Settings, app: FastAPI) -> DrainingServer:
    """The uvicorn server of `python -m app` for an app made by `create_app(settings)`."""
    if settings.body_timeout_s >= settings.graceful_timeout_s:
        logger.warning(
            "TEXTCLF_BODY_TIMEOUT_S >= TEXTCLF_GRACEFUL_TIMEOUT_S: a slow upload during a drain "
            "is cut by the grace period (503) instead of its own deadline (408)"
        )
    guard = ConnectionGuard(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=guard.protocol_class(),
        ws="none",  # no WebSocket routes: an upgrade request is served as plain HTTP
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
    )
    return DrainingServer(config, settings.graceful_timeout_s, app.state.lifecycle, guard)


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip joining worker threads: a hung forward pass must not keep a stopped server alive.
    os._exit(code)

"""The FastAPI application and its server, run inside the detector service's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .api import router
from .auth import TokenAuth
from .settings import HttpSettings
from .state import WebState

if TYPE_CHECKING:
    from ..service import DetectorService

log = logging.getLogger(__name__)
STATIC = resources.files(__package__) / "static"


def create_app(service: DetectorService, settings: HttpSettings | None = None) -> FastAPI:
    """The API and dashboard of ``service`` (registers one listener on it)."""
    settings = settings or HttpSettings()
    app = FastAPI(
        title="mqtt-anomaly",
        version=__version__,
        description="Sensors, readings history, alerts and live events of a detector service.",
        docs_url=None,  # the interactive pages load their scripts from a CDN: offline, no
        redoc_url=None,
    )
    app.state.web = WebState.attach(service, settings)
    app.include_router(router)
    app.mount("/", StaticFiles(directory=str(STATIC), html=True), name="dashboard")
    token = settings.secret_token()
    if token:
        app.add_middleware(TokenAuth, token=token)
    return app


async def serve_http(
    service: DetectorService,
    settings: HttpSettings,
    stop: asyncio.Event,
    *,
    started: asyncio.Future[int] | None = None,
) -> None:
    """Serve the API on ``settings.listen`` until ``stop`` is set.

    Runs in the caller's event loop (``uvicorn.Server.serve``); sets ``started`` to the port
    once it listens (port 0: a free one). Event streams are ended first, so the server stops
    promptly.
    """
    address = settings.address
    if address is None:
        return
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:  # bound here, not by uvicorn, which would exit the process when it cannot bind
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise OSError(f"HTTP server cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = int(sock.getsockname()[1])
    app = create_app(service, settings)
    tls = {}
    if settings.cert_file is not None and settings.key_file is not None:
        tls = {"ssl_certfile": str(settings.cert_file), "ssl_keyfile": str(settings.key_file)}
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        **tls,  # type: ignore[arg-type]
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise OSError(f"HTTP server on {host}:{bound} stopped while starting")
            await asyncio.sleep(0.01)
        scheme = "https" if tls else "http"
        log.info("dashboard and API on %s://%s:%d/", scheme, host, bound)
        if started is not None and not started.done():
            started.set_result(bound)
        await stop.wait()
    finally:
        app.state.web.hub.close()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


@contextlib.asynccontextmanager
async def http_server(
    service: DetectorService, settings: HttpSettings, timeout: float = 10.0
) -> AsyncIterator[int | None]:
    """Serve ``service``'s API while the block runs; yields the port (None: ``listen`` unset).

    Waits until the socket listens, so a port in use fails here with :class:`OSError`::

        async with http_server(service, settings.http):
            await service.run(stop)
    """
    if settings.address is None:
        yield None
        return
    done = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_http(service, settings, done, started=started))
    try:
        waiters: set[asyncio.Future[Any]] = {task, started}
        await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
        if not started.done():
            if task.done():
                task.result()  # raises why it did not start
            raise OSError(f"HTTP server on {settings.listen} did not start in {timeout}s")
        yield started.result()
    finally:
        done.set()
        await task


class _Server(uvicorn.Server):
    """A server that leaves signals alone: the service owns SIGINT/SIGTERM (``stop``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

"""The FastAPI application and its server, run inside the detector service's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .api import router
from .auth import TokenAuth
from .feedback import router as feedback_router
from .guard import BodyLimit, CatchErrors, RateLimit
from .lifecycle import router as lifecycle_router
from .modelhealth import router as model_health_router
from .settings import MIN_TOKEN_LENGTH, HttpSettings
from .state import WebState

if TYPE_CHECKING:
    from ..service import DetectorService

log = logging.getLogger(__name__)
STATIC = resources.files(__package__) / "static"


def create_app(service: DetectorService, settings: HttpSettings | None = None) -> FastAPI:
    """The API and dashboard of ``service`` (registers one listener on it).

    Requests pass, outermost first: :class:`CatchErrors` (an unexpected error is a 500
    without traceback), :class:`RateLimit` (per client address; before the token check, so
    guessing tokens is slowed too), :class:`TokenAuth` (whenever a token is configured),
    :class:`BodyLimit`, then the routes. A blank token raises
    :class:`~mqtt_anomaly.errors.ConfigError`; it never means "no token".
    """
    settings = settings or HttpSettings()
    token = settings.secret_token()  # raises on a blank or unreadable token: before serving
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        log.warning(
            "http.token: only %d characters; use at least %d random ones "
            "(e.g. openssl rand -hex 32)",
            len(token),
            MIN_TOKEN_LENGTH,
        )
    app = FastAPI(
        title="mqtt-anomaly",
        version=__version__,
        description="Sensors, readings history, alerts and live events of a detector service.",
        docs_url=None,  # the interactive pages load their scripts from a CDN: offline, no
        redoc_url=None,
    )
    web = app.state.web = WebState.attach(service, settings)
    app.include_router(router)
    app.include_router(model_health_router)
    app.include_router(feedback_router)
    app.include_router(lifecycle_router)
    app.mount("/", StaticFiles(directory=str(STATIC), html=True), name="dashboard")
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit)  # each add_middleware wraps those before: this is innermost
    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    if settings.rate_limit > 0:
        app.add_middleware(
            RateLimit, rate=settings.rate_limit, burst=settings.rate_burst, counts=web.refused
        )
    app.add_middleware(CatchErrors)
    return app


MAX_ERRORS_SHOWN = 10


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field (``loc``) and why, without echoing the input.

    FastAPI's own handler returns the rejected input, which may be ``inf`` or ``nan`` (not
    JSON: the answer would fail) or a large body.
    """
    errors = exc.errors()
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e["type"]}
        for e in errors[:MAX_ERRORS_SHOWN]
    ]
    return JSONResponse({"detail": detail}, 422)


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
    if settings.address is None:
        return
    host = settings.address[0]
    async with served_app(lambda: create_app(service, settings), settings) as (app, bound):
        try:
            scheme = "https" if settings.cert_file and settings.key_file else "http"
            log.info("dashboard and API on %s://%s:%d/", scheme, host, bound)
            if started is not None and not started.done():
                started.set_result(bound)
            await stop.wait()
        finally:
            app.state.web.hub.close()


@contextlib.asynccontextmanager
async def served_app(
    make_app: Callable[[], FastAPI], settings: HttpSettings
) -> AsyncIterator[tuple[FastAPI, int]]:
    """Serve the app ``make_app`` builds on ``settings.listen`` (TLS with its certificate)
    while the block runs; yields the app and the bound port. The service's API and a cluster
    worker's endpoint share it. The socket is bound here, not by uvicorn, which would exit the
    process when it cannot bind; an app that cannot be built (a blank token: ConfigError)
    leaves nothing listening."""
    assert settings.address is not None
    host, port = settings.address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise OSError(f"HTTP server cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound = int(sock.getsockname()[1])
    try:
        app = make_app()
    except BaseException:
        sock.close()
        raise
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
            await asyncio.sleep(0.01)  # polling uvicorn's started flag: it has no event
        yield app, bound
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


@contextlib.asynccontextmanager
async def http_server(
    service: DetectorService, settings: HttpSettings, timeout: float = 10.0
) -> AsyncIterator[int | None]:
    """Serve ``service``'s API while the block runs; yields the port (None: ``listen`` unset).

    Waits until the socket listens, so a port in use fails here with :class:`OSError`; a
    blank or unreadable token with :class:`~mqtt_anomaly.errors.ConfigError`::

        async with http_server(service, settings.http):
            await service.run(stop)
    """
    if settings.address is None:
        yield None
        return
    settings.secret_token()  # a blank or unreadable token: ConfigError before anything starts
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

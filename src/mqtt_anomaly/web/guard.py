"""Protections in front of the API: errors without tracebacks, request rate, body size.

Pure ASGI middlewares, like :class:`~.auth.TokenAuth`, so they cover the API, the event stream
and the static dashboard alike:

- :class:`CatchErrors` turns an unexpected exception into ``500 {"detail": "internal error"}``
  (logged once here, with its traceback; never sent to the client).
- :class:`RateLimit` is a token bucket per client address (IPv6 by /64): ``rate`` requests per
  second with bursts of ``burst``, ``429`` with ``Retry-After`` beyond. The health probes are
  exempt. The table of clients is bounded: the least recently seen one is evicted.
- :class:`BodyLimit` refuses request bodies over a size (``413``), whether announced by
  ``Content-Length`` or streamed in chunks.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from fastapi import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import OPEN_PATHS

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # request bodies of the API are a few bytes (a shelving duration)
MAX_RATE_CLIENTS = 10_000  # client addresses whose buckets are kept


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A complete JSON response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class CatchErrors:
    """An unexpected error answers 500 ``{"detail": "internal error"}``; logged once here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:  # the client left while sending its body: nobody to answer
            return
        except Exception:
            log.exception("HTTP %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await send_json(send, 500, b'{"detail":"internal error"}')


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413.

    An announced ``Content-Length`` is refused before the application runs; a chunked body
    raises a 413 :class:`HTTPException` from ``receive`` once it passes the limit, which the
    application answers (FastAPI lets an ``HTTPException`` from reading the body through).
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.limit
                except ValueError:  # h11 refuses these; another server might not
                    too_large = True
                if too_large:
                    await send_json(send, 413, b'{"detail":"request body too large"}')
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, "request body too large")
            return message

        await self.app(scope, counted, send)


class RateLimit:
    """A token bucket per client address: ``rate`` requests/s, bursts of ``burst``; 429 beyond."""

    def __init__(
        self,
        app: ASGIApp,
        rate: float,
        burst: int,
        *,
        max_clients: int = MAX_RATE_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
        counts: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self.buckets: OrderedDict[str, list[float]] = OrderedDict()  # key → [tokens, last]
        self.counts = counts if counts is not None else {}  # "rate_limit": requests refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.take(client_key(client[0]) if client else "")
        if wait:
            self.counts["rate_limit"] = self.counts.get("rate_limit", 0) + 1
            retry = str(max(1, math.ceil(wait))).encode()
            await send_json(send, 429, b'{"detail":"too many requests"}', [(b"retry-after", retry)])
            return
        await self.app(scope, receive, send)

    def take(self, key: str) -> float:
        """Take one token from ``key``'s bucket: 0.0, or the seconds until one is available."""
        now = self.clock()
        buckets = self.buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_clients:
                buckets.popitem(last=False)
            buckets[key] = [self.burst - 1.0, now]
            return 0.0
        buckets.move_to_end(key)
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate


def client_key(host: str) -> str:
    """The bucket of a client address: IPv4 as is, IPv6 by its /64 (one site's prefix).

    >>> client_key("10.0.0.7"), client_key("2001:db8:1:2:aaaa::1"), client_key("::ffff:10.0.0.7")
    ('10.0.0.7', '20010db800010002/64', '10.0.0.7')
    """
    if ":" not in host:
        return host
    try:
        addr = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return addr.packed[:8].hex() + "/64"

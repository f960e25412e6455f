"""The HTTP API under hostile input: bounded parameters, no tracebacks, caps and rate limits.

Every test runs the real server (uvicorn on a free port, in this event loop) in front of a
real detector service connected to a private Mosquitto, and talks to it over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.store import Store, open_store
from mqtt_anomaly.web import HttpSettings, guard, serve_http, settings
from mqtt_anomaly.web.guard import RateLimit

from .mosquitto import Mosquitto
from .test_web import scrape


class Server:
    """A detector service and its HTTP server; ``base`` once listening."""

    def __init__(self, service: DetectorService, http: HttpSettings) -> None:
        self.service = service
        self.http = http
        self.base = ""

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=10, **kw)


@asynccontextmanager
async def serving(
    broker: Mosquitto, tmp_path: Path, store: Store | None = None, **http: Any
) -> AsyncIterator[Server]:
    settings = load_settings(
        None,
        {
            "broker": {"url": broker.url, "client_id": f"detector-limits-{tmp_path.name}"},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state"},
        },
    )
    service = DetectorService(settings, store=store, console=False)
    srv = Server(service, HttpSettings(listen="127.0.0.1:0", **http))
    stop = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    tasks = [
        asyncio.create_task(service.run(stop)),
        asyncio.create_task(serve_http(service, srv.http, stop, started=started)),
    ]
    try:
        srv.base = f"http://127.0.0.1:{await asyncio.wait_for(started, 15)}"
        yield srv
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)


def field_of(res: httpx.Response) -> list[str]:
    """The names of the fields a 422 answer complains about."""
    assert res.status_code == 422, res.text
    return [str(e["loc"][-1]) for e in res.json()["detail"]]


# ---- numbers finite and bounded, texts bounded -------------------------------------------
SHELVE_BODIES = [
    '{"seconds": 1e309}',
    '{"seconds": -1}',
    '{"seconds": "NaN"}',
    '{"seconds": NaN}',
    '{"seconds": -Infinity}',
    '{"seconds": 0}',
    '{"seconds": 604801}',
    '{"seconds": 60, "until": 1}',
]


@pytest.mark.parametrize("body", SHELVE_BODIES)
async def test_shelve_rejects_non_finite_and_out_of_range_seconds(
    shared_mosquitto: Mosquitto, tmp_path: Path, body: str
) -> None:
    async with serving(shared_mosquitto, tmp_path) as srv, srv.client() as http:
        res = await http.post(
            "/api/alerts/S-1/threshold/shelve",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert res.headers["content-type"] == "application/json"
        assert field_of(res) == (["until"] if "until" in body else ["seconds"])
        assert "Traceback" not in res.text
        ok = await http.post("/api/alerts/S-1/threshold/shelve", json={"seconds": 60})
        assert ok.status_code == 404  # valid: it reaches the desk, which has no such alert


BAD_QUERIES = [
    ("/api/sensors", {"offset": "-1"}, "offset"),
    ("/api/sensors", {"offset": str(10**30)}, "offset"),
    ("/api/sensors", {"limit": "0"}, "limit"),
    ("/api/sensors", {"limit": "1e3"}, "limit"),
    ("/api/sensors", {"q": "x" * 129}, "q"),
    ("/api/sensors", {"sort": "__class__"}, "sort"),
    ("/api/sensors/" + "x" * 129, {}, "sensor_id"),
    ("/api/sensors/S-1/readings", {"start": "inf"}, "start"),
    ("/api/sensors/S-1/readings", {"end": "nan"}, "end"),
    ("/api/sensors/S-1/readings", {"start": "1e300"}, "start"),
    ("/api/sensors/S-1/readings", {"start": "100", "end": "50"}, "end"),
    ("/api/sensors/S-1/readings", {"buckets": str(10**12)}, "buckets"),
    ("/api/sensors/S-1/readings", {"max_rows": "0"}, "max_rows"),
    ("/api/alerts", {"since": "-inf"}, "since"),
    ("/api/alerts", {"limit": str(10**40)}, "limit"),
    ("/api/alerts", {"sensor": "y" * 500}, "sensor"),
    ("/api/alerts", {"detector": "z" * 65}, "detector"),
    ("/api/alerts", {"state": "deleted"}, "state"),
    ("/api/alerts/active", {"sensor": ""}, "sensor"),
    ("/api/events", {"sensor": "s" * 129}, "sensor"),
]


async def test_every_route_bounds_its_parameters(
    shared_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with serving(shared_mosquitto, tmp_path) as srv, srv.client() as http:
        for path, params, name in BAD_QUERIES:
            res = await http.get(path, params=params)
            assert field_of(res) == [name], (path, params, res.text)
            assert "x" * 129 not in res.text  # the rejected input is not echoed
        long_detector = "/api/alerts/S-1/" + "d" * 65
        assert field_of(await http.post(long_detector + "/ack")) == ["detector"]
        assert field_of(await http.delete(long_detector + "/shelve")) == ["detector"]
        assert field_of(await http.post("/api/alerts/" + "s" * 129 + "/threshold/ack")) == [
            "sensor_id"
        ]
        # within bounds: answered
        assert (await http.get("/api/sensors", params={"offset": 5, "q": "S"})).status_code == 200
        res = await http.get("/api/sensors/S-1/readings", params={"start": 1, "end": 2})
        assert res.status_code == 200 and res.json()["buckets"] == []
        assert (await http.get("/api/alerts", params={"since": 0})).status_code == 200


# ---- an internal error is a 500 without a traceback ---------------------------------------
async def test_internal_error_answers_500_json_without_traceback(
    shared_mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    with open_store(url, load_settings().store) as store:
        async with serving(shared_mosquitto, tmp_path, store) as srv, srv.client() as http:
            ok = await http.get("/api/sensors/S-1/readings")
            assert ok.status_code == 200
            with sqlite3.connect(tmp_path / "history.db") as db:  # the database is damaged
                db.execute("ALTER TABLE readings RENAME TO readings_lost")
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                res = await http.get("/api/sensors/S-1/readings")
            assert res.status_code == 500
            assert res.headers["content-type"] == "application/json"
            assert res.json() == {"detail": "internal error"}
            for leak in ("Traceback", "sqlite", "readings", str(tmp_path)):
                assert leak not in res.text
            logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(logged) == 1, [r.getMessage() for r in logged]
            assert logged[0].exc_info is not None  # with its traceback, server-side only
            assert "/api/sensors/S-1/readings" in logged[0].getMessage()
            assert (await http.get("/healthz")).status_code == 200  # and the server goes on
            with sqlite3.connect(tmp_path / "history.db") as db:
                db.execute("ALTER TABLE readings_lost RENAME TO readings")


# ---- at most max_event_clients event streams ------------------------------------------------
async def first_event(resp: httpx.Response) -> tuple[str, AsyncIterator[str]]:
    """The name of the stream's first event, and its lines iterator: keep it (an iterator
    left early and collected closes the response)."""
    lines = resp.aiter_lines()
    async for line in lines:
        if line.startswith("event: "):
            return line[7:], lines
    return "", lines


async def test_event_stream_cap_and_slot_released_on_disconnect(
    shared_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cap = 3
    async with (
        serving(shared_mosquitto, tmp_path, max_event_clients=cap) as srv,
        srv.client() as http,
        contextlib.AsyncExitStack() as stack,
    ):

        async def open_streams() -> float:
            return scrape((await http.get("/metrics")).text)["mqtt_anomaly_sse_clients"]

        streams: list[contextlib.AsyncExitStack] = []
        held: list[AsyncIterator[str]] = []
        for i in range(cap):  # each on its own connection, as browsers do
            own = await stack.enter_async_context(contextlib.AsyncExitStack())
            client = await own.enter_async_context(srv.client())
            resp = await own.enter_async_context(
                client.stream("GET", "/api/events", params={"sensor": f"C-{i}"})
            )
            assert resp.status_code == 200
            event, lines = await asyncio.wait_for(first_event(resp), 10)
            assert event == "hello"
            streams.append(own)
            held.append(lines)
        refused = await http.get("/api/events")
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert "too many" in refused.json()["detail"]
        m = scrape((await http.get("/metrics")).text)
        assert m["mqtt_anomaly_sse_clients"] == cap
        assert m['mqtt_anomaly_http_refused_total{reason="event_clients"}'] == 1

        await streams[0].aclose()  # one dashboard leaves: its slot comes back

        async def released() -> None:
            while await open_streams() >= cap:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(released(), 10)
        async with http.stream("GET", "/api/events") as again:
            assert again.status_code == 200
            event, lines = await asyncio.wait_for(first_event(again), 10)
            assert event == "hello"
            held.append(lines)
            assert (await http.get("/api/events")).status_code == 503  # full again
        await asyncio.wait_for(released(), 10)
        assert await open_streams() == cap - 1


# ---- request rate per client ------------------------------------------------------------
async def test_rate_limit_per_client_address(shared_mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        serving(shared_mosquitto, tmp_path, rate_limit=2, rate_burst=5) as srv,
        srv.client() as a,
        srv.client(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")) as b,
    ):
        codes = [(await a.get("/api/sensors")).status_code for _ in range(5)]
        assert codes == [200] * 5  # the burst
        limited = await a.get("/api/sensors")
        assert limited.status_code == 429
        assert limited.json() == {"detail": "too many requests"}
        assert int(limited.headers["retry-after"]) >= 1
        assert (await a.get("/metrics")).status_code == 429  # every route but the probes
        assert (await a.get("/healthz")).status_code == 200
        assert (await a.get("/readyz")).status_code in (200, 503)
        # another address has its own bucket
        assert (await b.get("/api/sensors")).status_code == 200
        m = scrape((await b.get("/metrics")).text)
        assert m['mqtt_anomaly_http_refused_total{reason="rate_limit"}'] == 2

        async def refilled() -> None:  # at 2/s: within a second
            while (await a.get("/api/sensors")).status_code == 429:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(refilled(), 5)


def test_rate_limit_buckets_are_bounded_and_refill() -> None:
    now = [0.0]
    limiter = RateLimit(lambda *a: None, rate=10.0, burst=2, max_clients=3, clock=lambda: now[0])  # type: ignore[arg-type, return-value]
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    assert limiter.take("a") == pytest.approx(0.1)  # empty: one token in 0.1 s
    now[0] = 0.05
    assert limiter.take("a") == pytest.approx(0.05)
    now[0] = 0.1
    assert limiter.take("a") == 0
    for key in ("b", "c", "d"):
        limiter.take(key)
    assert list(limiter.buckets) == ["b", "c", "d"]  # the least recently seen ("a") evicted
    now[0] = 100.0
    assert limiter.take("b") == 0 and limiter.buckets["b"][0] == 1.0  # capped at the burst


# ---- what already held: traversal, huge headers and bodies, malformed JSON --------------------
async def raw_request(base: str, request: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 20), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_hostile_requests(shared_mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with serving(shared_mosquitto, tmp_path, rate_limit=0) as srv, srv.client() as http:
        for path in (
            "/../../../../etc/passwd",
            "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/..%2f..%2f..%2fetc%2fpasswd",
            "/static/../../../pyproject.toml",
            "/%2e%2e%5c%2e%2e%5cetc%5cpasswd",
        ):
            answer = await raw_request(
                srv.base, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            status = answer.split(b" ", 2)[1] if answer else b""
            assert status in (b"400", b"404"), (path, answer[:200])
            assert b"root:" not in answer and b"[project]" not in answer

        huge_header = await raw_request(
            srv.base,
            b"GET /api/sensors HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        )
        assert not huge_header.startswith(b"HTTP/1.1 200")

        big = json.dumps({"seconds": 60, "pad": "x" * 200_000})
        res = await http.post(
            "/api/alerts/S-1/threshold/shelve",
            content=big,
            headers={"content-type": "application/json"},
        )
        assert res.status_code == 413 and res.json() == {"detail": "request body too large"}

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"seconds": 60, "pad": "'
            for _ in range(100):
                yield b"x" * 4096
            yield b'"}'

        res = await http.post(
            "/api/alerts/S-1/threshold/shelve",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert res.status_code == 413, res.text

        for body in (b"{", b'{"seconds": }', b"\xff\xfe", b"[1, 2"):
            res = await http.post(
                "/api/alerts/S-1/threshold/shelve",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert res.status_code == 422, (body, res.text)
            assert "Traceback" not in res.text
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize("module", [guard, settings])
def test_doctests(module: Any) -> None:
    assert doctest.testmod(module).failed == 0

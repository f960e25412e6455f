"""The HTTP side of the service: REST API, metrics, event stream, against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mqtt_anomaly.config import Settings, load_settings
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.store import Store, open_store
from mqtt_anomaly.web import HttpSettings, http_server, parse_listen, serve_http
from mqtt_anomaly.web.alerts import AlertDesk
from mqtt_anomaly.web.events import EventHub, sse
from mqtt_anomaly.web.metrics import METRIC_NAMES, ServiceMetrics

from .helpers import eventually, reading_payload
from .mosquitto import Mosquitto
from .test_service import publisher

SPIKE = 98.2


def web_settings(broker: Mosquitto, tmp_path: Path, store: str = "none://") -> Settings:
    # a client id of this test's own: on the broker the tests share, the persistent session of
    # another test's service would hand this one the readings queued for it meanwhile
    client_id = "detector-web-" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:8]
    return load_settings(
        None,
        {
            "broker": {"url": broker.url, "client_id": client_id, "keepalive": 2},
            "store": {"url": store, "flush_interval": 0.05},
            "service": {"state_dir": tmp_path / "state"},
        },
    )


class Served:
    """A detector service and its HTTP server running in this event loop."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.service = DetectorService(settings, store=store, console=False)
        self.stop = asyncio.Event()
        self.http = HttpSettings(listen="127.0.0.1:0")
        self.tasks: list[asyncio.Task[None]] = []
        self.base = ""

    async def __aenter__(self) -> Served:
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.tasks = [
            asyncio.create_task(self.service.run(self.stop)),
            asyncio.create_task(serve_http(self.service, self.http, self.stop, started=started)),
        ]
        port = await asyncio.wait_for(started, 15)
        await asyncio.wait_for(self.service.ready.wait(), 15)
        self.base = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 20)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=10)


async def feed(url: str, sensor: str, values: list[float], start_seq: int = 0) -> None:
    async with publisher(url, f"pub-{sensor}") as pub:
        for i, v in enumerate(values):
            pub.publish(f"factory/{sensor}/temperature", reading_payload(sensor, v, start_seq + i))


def scrape(text: str) -> dict[str, float]:
    """``name{labels}`` → value from the Prometheus text format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_parse_listen() -> None:
    assert parse_listen("8080") == ("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("x", "host:port", "1:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert HttpSettings().address is None


async def test_api_metrics_and_alert_workflow(shared_mosquitto: Mosquitto, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    settings = web_settings(shared_mosquitto, tmp_path, url)
    with open_store(url, settings.store) as store:
        async with Served(settings, store) as srv, srv.client() as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["subscribed"] is True

            await feed(shared_mosquitto.url, "S-1", [24.5] * 40 + [SPIKE])
            await feed(shared_mosquitto.url, "S-2", [22.0] * 5)
            async with publisher(shared_mosquitto.url, "pub-bad") as pub:
                pub.publish("factory/S-1/temperature", b"not json")
            pl = srv.service.pipeline
            await eventually(lambda: pl.counters.processed == 46, what="readings processed")
            await eventually(lambda: pl.counters.dead_letters == 1, what="dead letter")

            # sensors: fleet page, filter, one sensor, 404
            page = (await http.get("/api/sensors")).json()
            assert page["total"] == 2
            assert page["counts"]["anomalous"] == 1
            assert [s["sensor_id"] for s in page["items"]] == ["S-1", "S-2"]  # anomalous first
            assert page["items"][0]["last_value"] == SPIKE
            assert "threshold" in page["items"][0]["active_alerts"]
            only = (await http.get("/api/sensors", params={"health": "ok"})).json()
            assert [s["sensor_id"] for s in only["items"]] == ["S-2"]
            found = (await http.get("/api/sensors", params={"q": "s-2", "limit": 1})).json()
            assert found["total"] == 1
            one = (await http.get("/api/sensors/S-1")).json()
            assert one["health"] == "anomalous" and one["band"]["threshold"] == 90.0
            assert one["band"]["low"] is not None and one["band"]["high"] <= 90.0
            assert (await http.get("/api/sensors/NOPE")).status_code == 404

            # readings history, raw and downsampled
            assert await asyncio.to_thread(store.flush, 10)
            hist = (await http.get("/api/sensors/S-1/readings")).json()
            assert hist["rows"] == 41 and hist["buckets"][-1]["max"] == SPIKE
            small = (await http.get("/api/sensors/S-1/readings", params={"buckets": 5})).json()
            assert len(small["buckets"]) <= 5
            assert sum(b["count"] for b in small["buckets"]) == 41
            assert max(b["max"] for b in small["buckets"]) == SPIKE
            later = (
                await http.get("/api/sensors/S-1/readings", params={"start": time.time() + 60})
            ).json()
            assert later["buckets"] == []

            # alerts: history from the store, active, acknowledge, shelve
            hist_alerts = (await http.get("/api/alerts", params={"sensor": "S-1"})).json()
            assert any(a["detector"] == "threshold" and a["value"] == SPIKE for a in hist_alerts)
            none = (await http.get("/api/alerts", params={"state": "cleared"})).json()
            assert none == []
            active = (await http.get("/api/alerts/active")).json()
            assert {(a["sensor_id"], a["detector"]) for a in active} >= {("S-1", "threshold")}
            ack = await http.post("/api/alerts/S-1/threshold/ack")
            assert ack.status_code == 200 and ack.json()["acknowledged"] is True
            acked = (await http.get("/api/alerts/active", params={"state": "acknowledged"})).json()
            assert [(a["sensor_id"], a["detector"]) for a in acked] == [("S-1", "threshold")]
            shelf = await http.post("/api/alerts/S-1/threshold/shelve", json={"seconds": 600})
            assert shelf.json()["shelved"] is True
            assert shelf.json()["shelved_until"] > time.time() + 500
            bad = await http.post("/api/alerts/S-1/threshold/shelve", json={"seconds": -1})
            assert bad.status_code == 422
            unshelf = await http.delete("/api/alerts/S-1/threshold/shelve")
            assert unshelf.json()["shelved"] is False
            assert (await http.post("/api/alerts/S-2/threshold/ack")).status_code == 404

            # metrics
            text = (await http.get("/metrics")).text
            m = scrape(text)
            assert m["mqtt_anomaly_messages_received_total"] == 47
            assert m["mqtt_anomaly_readings_processed_total"] == 46
            assert m['mqtt_anomaly_dead_letters_total{reason="not_json"}'] == 1
            raised = 'detector="threshold",severity="critical",state="raised"'
            assert m["mqtt_anomaly_alerts_total{" + raised + "}"] == 1
            assert m["mqtt_anomaly_latency_seconds_count"] == 46
            assert m['mqtt_anomaly_latency_seconds_bucket{le="+Inf"}'] == 46
            assert m['mqtt_anomaly_sensors{health="anomalous"}'] == 1
            assert m["mqtt_anomaly_sensors_active"] == 2
            assert m["mqtt_anomaly_broker_connected"] == 1
            assert m["mqtt_anomaly_store_readings_written_total"] == 46
            exposed = {re.split(r"[{ ]", k)[0] for k in m}
            assert exposed <= METRIC_NAMES
            kafka_sink = {n for n in METRIC_NAMES if n.startswith("mqtt_anomaly_kafka_")}
            routing = {  # with [[routes]] only (tests/test_routing.py)
                n
                for n in METRIC_NAMES
                if n.startswith(("mqtt_anomaly_receiver_", "mqtt_anomaly_routing_"))
            }
            shadow = {"mqtt_anomaly_shadow_alerts_total", "mqtt_anomaly_shadow_seconds_total"}
            drift = {  # once a sensor is commissioned (tests/test_drift.py)
                "mqtt_anomaly_model_drift",
                "mqtt_anomaly_model_drift_top",
            }
            unseen = {"mqtt_anomaly_sse_clients"} | kafka_sink | routing | shadow | drift
            assert METRIC_NAMES - exposed <= unseen  # shadow: with [shadow] only

            # OpenAPI describes every endpoint
            spec = (await http.get("/openapi.json")).json()
            for path in (
                "/api/sensors",
                "/api/sensors/{sensor_id}",
                "/api/sensors/{sensor_id}/readings",
                "/api/alerts",
                "/api/alerts/active",
                "/api/alerts/{sensor_id}/{detector}/ack",
                "/api/alerts/{sensor_id}/{detector}/shelve",
                "/api/events",
                "/healthz",
                "/readyz",
                "/metrics",
            ):
                assert path in spec["paths"], path


async def read_events(
    resp: httpx.Response, want: int, into: list[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """Collect server-sent events from ``resp`` until ``want`` have arrived."""
    event = ""
    async for line in resp.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            into.append((event, json.loads(line[6:])))
            if len(into) >= want:
                break
    return into


async def test_event_stream_delivers_alerts_health_and_watched_readings(
    shared_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with Served(web_settings(shared_mosquitto, tmp_path)) as srv, srv.client() as http:
        got: list[tuple[str, Any]] = []
        async with http.stream("GET", "/api/events", params={"sensor": "E-1"}) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            reader = asyncio.create_task(read_events(resp, 10_000, got))
            await eventually(lambda: any(e == "hello" for e, _ in got), what="hello")
            await feed(shared_mosquitto.url, "E-1", [24.5] * 5 + [SPIKE])
            await feed(shared_mosquitto.url, "E-2", [24.5] * 3)
            await eventually(
                lambda: any(e == "alert" and d["value"] == SPIKE for e, d in got), what="alert"
            )
            await eventually(
                lambda: ("health", {"sensor_id": "E-1", "health": "anomalous"}) in got,
                what="health event",
            )
            await eventually(
                lambda: sum(e == "reading" for e, _ in got) == 6, what="watched readings"
            )
            await eventually(lambda: srv.service.pipeline.counters.processed == 9, what="all")
            assert {d["sensor_id"] for e, d in got if e == "reading"} == {"E-1"}
            ack = await http.post("/api/alerts/E-1/threshold/ack")
            assert ack.status_code == 200
            await eventually(lambda: any(e == "alert-state" for e, _ in got), what="ack event")
            metrics = scrape((await http.get("/metrics")).text)
            assert metrics["mqtt_anomaly_sse_clients"] == 1
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def test_slow_event_client_is_dropped_not_buffered() -> None:
    pl = Pipeline(load_settings())
    hub = EventHub(pl.view(), queue_size=10, heartbeat=60)
    stream = hub.stream(sensor="F-1")
    assert (await anext(stream)).startswith("retry:")
    assert len(hub) == 1
    client = next(iter(hub.clients))
    for seq in range(40):  # one batch each, never read by the client
        hub.publish(
            pl.process(
                [("factory/F-1/temperature", reading_payload("F-1", 24.5, seq), time.time())]
            )
        )
    assert client.dropped and client.queue.qsize() == 10
    rest = [chunk async for chunk in stream]
    assert rest == [sse("overflow", {"reason": "client too slow; reload"})]
    assert len(hub) == 0


async def test_web_shows_the_pipeline_s_health_silent_included() -> None:
    """Live events carry the health the pipeline publishes; the alert desk of a restarted
    service starts from the alerts active in the restored state."""
    pl = Pipeline(load_settings())
    hub = EventHub(pl.view(), heartbeat=60)
    stream = hub.stream()
    await anext(stream)
    t0 = time.time() - 100
    for sid in ("Q-1", "Q-2"):
        pl.process(
            [(f"factory/{sid}/temperature", reading_payload(sid, 24.5, i, t0 + i), t0 + i)
             for i in range(20)]
        )  # fmt: skip
    pl.process([("factory/Q-2/temperature", reading_payload("Q-2", SPIKE, 20, t0 + 20), t0 + 20)])
    out = pl.check_silence(t0 + 30)
    hub.publish(out)
    chunk = await anext(stream)
    assert sse("health", {"sensor_id": "Q-1", "health": "silent"}) in chunk
    assert '"health":"anomalous"' not in chunk  # anomalous already, no change
    restored = Pipeline(load_settings())
    restored.load_state_dict(pl.state_dict())
    desk = AlertDesk(restored.view(), time.time)
    active = {(a["sensor_id"], a["detector"]) for a in desk.list_active()}
    assert active == {("Q-1", "silence"), ("Q-2", "silence"), ("Q-2", "threshold")}
    hub.close()


async def test_hub_close_ends_streams() -> None:
    hub = EventHub(Pipeline(load_settings()).view(), heartbeat=60)
    stream = hub.stream()
    await anext(stream)
    hub.close()
    assert [chunk async for chunk in stream] == []


async def test_http_server_runs_alongside_and_stops_with_the_service(
    shared_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    service = DetectorService(web_settings(shared_mosquitto, tmp_path), console=False)
    stop = asyncio.Event()
    ports: list[int | None] = []

    async def run() -> None:  # what run_service does with [http] listen set
        async with http_server(service, HttpSettings(listen="127.0.0.1:0")) as port:
            ports.append(port)
            await service.run(stop)

    task = asyncio.create_task(run())
    await eventually(lambda: bool(ports) and service.ready.is_set(), timeout=15, what="ready")
    base = f"http://127.0.0.1:{ports[0]}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        assert (await http.get("/readyz")).status_code == 200
        page = await http.get("/")
        assert page.status_code == 200 and "mqtt-anomaly" in page.text
        assert (
            (await http.get("/app.js"))
            .headers["content-type"]
            .startswith(("application/javascript", "text/javascript"))
        )
        stop.set()
        await asyncio.wait_for(task, 20)
        with pytest.raises(httpx.ConnectError):
            await http.get("/healthz")


async def test_http_server_off_and_port_in_use(shared_mosquitto: Mosquitto, tmp_path: Path) -> None:
    service = DetectorService(web_settings(shared_mosquitto, tmp_path), console=False)
    async with http_server(service, HttpSettings()) as port:
        assert port is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = HttpSettings(listen=f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(OSError, match="cannot listen"):
            async with http_server(service, busy):
                pass


async def test_readyz_is_unavailable_before_subscribing(
    shared_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    service = DetectorService(web_settings(shared_mosquitto, tmp_path), console=False)
    async with (
        http_server(service, HttpSettings(listen="127.0.0.1:0")) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "connected": False, "subscribed": False}
        assert (await http.get("/healthz")).status_code == 200
        m = scrape((await http.get("/metrics")).text)
        assert m["mqtt_anomaly_broker_connected"] == 0 and m["mqtt_anomaly_ready"] == 0


async def test_latency_of_a_large_batch_is_sampled_and_counts_every_reading() -> None:
    service = DetectorService(load_settings(None, {"store": {"url": "none://"}}), console=False)
    metrics = ServiceMetrics(service)
    now = service.clock()
    batch = [
        (f"factory/L{i}/temperature", reading_payload(f"L{i}", 20.0, 1, ts=now - 0.2), now)
        for i in range(1000)
    ]
    metrics.observe(service.pipeline.process(batch))
    m = scrape(metrics.exposition().decode())
    assert m["mqtt_anomaly_latency_seconds_count"] == pytest.approx(1000)
    assert m['mqtt_anomaly_latency_seconds_bucket{le="0.1"}'] == 0
    assert m['mqtt_anomaly_latency_seconds_bucket{le="5.0"}'] == pytest.approx(1000)
    assert 200 <= m["mqtt_anomaly_latency_seconds_sum"] <= 5000

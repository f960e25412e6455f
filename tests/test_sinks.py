"""The sinks behind one contract, their order, and the service on an in-process broker."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mqtt_anomaly.config import AlertSettings, BrokerSettings
from mqtt_anomaly.pipeline import Output
from mqtt_anomaly.service import DetectorService, run_service
from mqtt_anomaly.sinks.base import BaseSink
from mqtt_anomaly.store.base import NullStore
from mqtt_anomaly.store.sqlite import SqliteStore
from mqtt_anomaly.transport.memory import MemoryBroker, matches

from .helpers import eventually, reading_payload
from .test_service import Running, memory_settings

T0 = 1_800_000_000.0


class Journal(BaseSink):
    """A sink that notes, at each write, what the broker had received by then."""

    name = "journal"

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.seen: list[tuple[int, int]] = []  # (alerts in the batch, publishes so far)

    def write(self, out: Output) -> None:
        self.seen.append((len(out.alerts), len(self.broker.published)))


def reading(sid: str, value: float, seq: int, ts: float = T0) -> tuple[str, bytes]:
    return f"factory/{sid}/temperature", reading_payload(sid, value, seq, ts)


def test_sinks_in_order_and_durability_declared(tmp_path: Path) -> None:
    settings = memory_settings(tmp_path)
    broker = MemoryBroker()
    journal = Journal(broker)
    with SqliteStore(tmp_path / "h.db", settings.store) as store:
        service = DetectorService(
            settings, store=store, transport=broker.transport, sinks=[journal]
        )
        assert [s.name for s in service.sinks] == [
            "store", "console", "mqtt", "journal", "listeners"
        ]  # fmt: skip
        assert service.tracker is not None and service.tracker.sinks == [store]
    quiet = DetectorService(settings, store=NullStore(), console=False, transport=broker.transport)
    assert [s.name for s in quiet.sinks] == ["store", "mqtt", "listeners"]
    assert quiet.tracker is not None and quiet.tracker.sinks == []  # none:// keeps nothing


async def test_effects_of_one_batch_in_order(tmp_path: Path) -> None:
    """Eviction clears before the batch's health, MQTT before the extra sinks, the listeners
    last, each seeing what the earlier ones did."""
    now = [T0]
    settings = memory_settings(tmp_path, max_sensors=1, evict_after=60)
    broker = MemoryBroker()
    journal = Journal(broker)
    heard: list[int] = []
    async with Running(
        settings, transport=broker.transport, sinks=[journal], clock=lambda: now[0]
    ) as run:
        run.service.listeners.append(lambda out: heard.append(len(journal.seen)))
        broker.send([reading("A", 98.2, 0)])
        await eventually(lambda: bool(broker.messages("factory/A/health")), what="A's health")
        now[0] = T0 + 100  # A silent for over 60 s: B takes its slot
        mark = len(broker.published)
        broker.send([reading("B", 98.2, 0, T0 + 100)])
        await eventually(lambda: bool(broker.messages("factory/B/health")), what="B's health")
        batch = [(m.topic, m.payload, m.retain) for m in broker.published[mark:]]
    kinds = [(t.split("/")[1], t.split("/")[2]) for t, _, _ in batch]
    assert kinds == [("A", "alerts"), ("B", "alerts"), ("A", "health"), ("B", "health")]
    assert msgspec.json.decode(batch[0][1])["state"] == "cleared"
    assert batch[2][1:] == (b"", True) and batch[3][1:] == (b"anomalous", True)
    assert "factory/A/health" not in broker.retained
    assert journal.seen[-1] == (2, mark + 4)  # MQTT had published the batch
    assert heard[-1] == len(journal.seen)  # the listeners came after the journal


async def test_dead_letters_rate_limited(tmp_path: Path) -> None:
    broker = MemoryBroker()
    async with Running(
        memory_settings(tmp_path), transport=broker.transport, dead_letter_rate=5.0
    ) as run:
        broker.send(("factory/S1/temperature", b"not json") for _ in range(20))
        await eventually(lambda: run.service.dead_letters_suppressed == 15, what="suppressed")
        assert len(broker.messages("mqtt-anomaly/deadletter")) == 5


async def test_a_flood_reaches_store_and_listeners_whole_and_the_operator_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = memory_settings(tmp_path)
    settings = base.model_copy(update={"alerts": AlertSettings(flood_threshold=5)})
    broker = MemoryBroker()
    db = tmp_path / "h.db"
    listened: list[str] = []

    def listen(out: Output) -> None:
        listened.extend(a.sensor_id for a in out.alerts)

    with SqliteStore(db, settings.store) as store:
        async with Running(settings, store=store, transport=broker.transport) as run:
            run.service.listeners.append(listen)
            broker.send(reading(f"S{i}", 98.2, 0) for i in range(10))
            await eventually(lambda: len(listened) == 10, what="10 alerts")
            await eventually(lambda: bool(broker.messages("mqtt-anomaly/floods")), what="flood")
        with sqlite3.connect(db) as conn:
            stored = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
    assert stored == 10
    assert broker.messages("factory/+/alerts") == []
    (event,) = [msgspec.json.decode(p) for p in broker.payloads("mqtt-anomaly/floods")]
    assert event["state"] == "raised" and event["active"] == 10
    assert capsys.readouterr().out == ""  # console=False: no console sink at all


async def test_console_shows_the_flood_not_its_alerts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = memory_settings(tmp_path)
    settings = base.model_copy(
        update={
            "alerts": AlertSettings(flood_threshold=5),
            "service": base.service.model_copy(update={"verbose": True}),
        }
    )
    broker = MemoryBroker()
    service = DetectorService(settings, transport=broker.transport)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 10)
    broker.send([reading("A", 98.2, 0)])
    await eventually(lambda: bool(broker.messages("factory/A/alerts")), what="A's alert")
    broker.send(reading(f"S{i}", 98.2, 0) for i in range(10))
    await eventually(lambda: bool(broker.messages("mqtt-anomaly/floods")), what="flood")
    stop.set()
    await asyncio.wait_for(task, 20)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[INFO] Connected to Broker at 127.0.0.1:1"
    assert lines[1].startswith("[SYSTEM] Listening for topics: ")
    assert lines[2] == "[DATA] Received 98.2°C from A"  # the reading before its alert
    assert lines[3].startswith("[ALERT] 🚨 CRITICAL ANOMALY DETECTED: 98.2°C! (A, threshold)")
    assert sum(line.startswith("[DATA]") for line in lines) == 11
    assert sum(line.startswith("[ALERT]") for line in lines) == 1
    floods = [line for line in lines if line.startswith("[FLOOD]")]
    assert len(floods) == 1 and "11 sensors under factory" in floods[0], lines  # A's, too


async def test_unacknowledged_readings_come_again_on_the_next_start(tmp_path: Path) -> None:
    """Readings processed but never acknowledged (their rounds could not save the state)
    stay with the broker's session and reach the next connection with that client id."""
    settings = memory_settings(tmp_path, ack_after="durable")
    broker = MemoryBroker()
    blocker = tmp_path / "state" / "detector-state.mqas.tmp"
    blocker.mkdir(parents=True)
    async with Running(settings, transport=broker.transport, shutdown_timeout=1.0) as first:
        broker.send(reading("S1", 25.0, seq, T0 + seq) for seq in range(10))
        await eventually(lambda: len(first.processed) == 10, what="processed")
        assert first.service.tracker is not None
        await eventually(lambda: first.service.tracker.stats.failed_rounds > 0, what="failed")  # type: ignore[union-attr]
    assert broker.acknowledged == 0
    assert not (tmp_path / "state" / "detector-state.mqas").exists()
    blocker.rmdir()
    async with Running(settings, transport=broker.transport) as second:
        await eventually(lambda: len(second.processed) == 10, what="sent again")
        await eventually(lambda: broker.acknowledged == 10, what="acknowledged")
    assert second.processed == [("S1", seq) for seq in range(10)]
    assert second.service.pipeline.counters.duplicates == 0


async def test_run_service_starts_and_stops_store_service_in_order(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    base = memory_settings(tmp_path)
    settings = base.model_copy(
        update={"store": base.store.model_copy(update={"url": f"sqlite:///{db}"})}
    )
    broker = MemoryBroker()
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(settings, stop=stop, transport=broker.transport))
    await eventually(lambda: bool(broker.subscriptions("detector-under-test")), what="subscribed")
    broker.send(reading("S1", 25.0, seq, T0 + seq) for seq in range(50))
    await eventually(lambda: broker.acknowledged == 50, what="journaled, acknowledged")

    def stored() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])

    await eventually(lambda: stored() == 50, what="committed")
    stop.set()
    await asyncio.wait_for(task, 20)
    assert broker.subscriptions("detector-under-test") == []  # disconnected
    assert (tmp_path / "state" / "detector-state.mqas").exists()


# ---- the in-process broker itself ----------------------------------------------------------
def test_topic_filters() -> None:
    assert matches("factory/+/temperature", "factory/S1/temperature")
    assert not matches("factory/+/temperature", "factory/S1/x/temperature")
    assert matches("factory/#", "factory/S1/x") and matches("#", "a")
    assert not matches("factory/+", "factory") and not matches("a/b", "a/b/c")


async def test_memory_transport_window_queue_and_outage() -> None:
    broker = MemoryBroker(ack_publishes=False)
    got: list[Any] = []
    client = broker.transport(
        BrokerSettings(max_inflight=2), "pub", on_batch=got.append, hold_acks=True
    )
    await client.connect()
    for i in range(5):
        client.publish("t", str(i).encode(), qos=1)
    assert [m.payload for m in broker.published] == [b"0", b"1"]
    assert (client.pending, client.queued) == (5, 3)
    ticket = client.outgoing_mark()
    waiting = asyncio.create_task(client.wait_outgoing(ticket))
    await asyncio.sleep(0)
    assert not waiting.done()
    broker.acknowledge_publishes()
    await asyncio.wait_for(waiting, 1)
    assert [m.payload for m in broker.published] == [b"0", b"1", b"2", b"3", b"4"]
    assert client.pending == 0
    broker.go_down()
    assert not client.connected
    client.publish("t", b"5", qos=1)
    assert client.queued == 1 and len(broker.published) == 5
    broker.come_back()
    await eventually(lambda: client.connected, what="reconnected")
    assert broker.published[-1].payload == b"5" and await client.drain(1)
    await client.disconnect()


async def test_dashboard_api_on_the_in_process_broker(tmp_path: Path) -> None:
    """The HTTP side reads the service and its connection through the same attributes
    whatever the transport: readiness, active alerts, connection metrics."""
    import httpx

    from mqtt_anomaly.web import HttpSettings, serve_http

    broker = MemoryBroker()
    service = DetectorService(memory_settings(tmp_path), console=False, transport=broker.transport)
    stop = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    http = HttpSettings(listen="127.0.0.1:0")
    tasks = [
        asyncio.create_task(service.run(stop)),
        asyncio.create_task(serve_http(service, http, stop, started=started)),
    ]
    try:
        port = await asyncio.wait_for(started, 15)
        await asyncio.wait_for(service.ready.wait(), 15)
        broker.send([reading("S1", 98.2, 0)])
        # the dashboard's listener runs in the batch that published the alert
        await eventually(lambda: bool(broker.messages("factory/S1/alerts")), what="alert")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as web:
            assert (await web.get("/readyz")).status_code == 200
            (alert,) = (await web.get("/api/alerts/active")).json()
            assert alert["sensor_id"] == "S1" and alert["detector"] == "threshold"
            text = (await web.get("/metrics")).text
            assert "mqtt_anomaly_broker_connected 1.0" in text
            assert "mqtt_anomaly_outgoing_pending 0.0" in text
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)

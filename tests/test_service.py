"""The detector service: against a real Mosquitto where the broker's behaviour matters (latency,
retained messages, persistent sessions, restarts, the simulator), in process otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mqtt_anomaly.config import BrokerSettings, Settings, load_settings
from mqtt_anomaly.pipeline import Output
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.transport.client import MqttClient
from mqtt_anomaly.transport.memory import MemoryBroker

from .helpers import Observer, eventually, reading_payload
from .mosquitto import Mosquitto


def settings_for(broker: Mosquitto, tmp_path: Path, **service: Any) -> Settings:
    return load_settings(
        None,
        {
            "broker": {"url": broker.url, "client_id": "detector-under-test", "keepalive": 2},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state", **service},
        },
    )


def memory_settings(tmp_path: Path, **service: Any) -> Settings:
    """Settings for a service on a :class:`MemoryBroker` (the URL is never dialled)."""
    return load_settings(
        None,
        {
            "broker": {"url": "mqtt://127.0.0.1:1", "client_id": "detector-under-test"},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state", **service},
        },
    )


class Running:
    """A DetectorService running in this event loop, recording every processed reading."""

    def __init__(self, settings: Settings, **sinks: Any) -> None:
        self.service = DetectorService(settings, console=False, **sinks)
        self.stop = asyncio.Event()
        self.processed: list[tuple[str, int]] = []
        self.service.listeners.append(self._record)
        self.task: asyncio.Task[None] | None = None

    def _record(self, out: Output) -> None:
        self.processed.extend((r.sensor_id, r.seq) for r in out.readings)

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.service.run(self.stop))
        ready = asyncio.create_task(self.service.ready.wait())
        done, _ = await asyncio.wait({self.task, ready}, timeout=15, return_when="FIRST_COMPLETED")
        if self.task in done:
            self.task.result()
        assert ready in done, "service did not become ready"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)


@contextlib.asynccontextmanager
async def publisher(url: str, client_id: str = "test-publisher") -> AsyncIterator[MqttClient]:
    client = MqttClient(BrokerSettings(url=url), client_id)
    await client.connect(timeout=10)
    try:
        yield client
    finally:
        await client.drain(10)
        await client.disconnect()


async def test_spike_alert_on_mqtt_within_one_second(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        Running(settings_for(mosquitto, tmp_path)),
        Observer(mosquitto.url, ["factory/+/alerts", "factory/+/health"]) as obs,
        publisher(mosquitto.url) as pub,
    ):
        for seq in range(20):
            pub.publish("factory/SENSOR-01/temperature", reading_payload("SENSOR-01", 24.5, seq))
        sent = time.monotonic()
        pub.publish("factory/SENSOR-01/temperature", reading_payload("SENSOR-01", 98.2, 20))
        await eventually(lambda: bool(obs.on("/alerts")), timeout=1.0, what="alert")
        topic, payload, _, at = next(m for m in obs.messages if m[0].endswith("/alerts"))
        assert at - sent < 1.0
        alert = msgspec.json.decode(payload)
        assert topic == "factory/SENSOR-01/alerts"
        assert alert["severity"] == "critical" and alert["state"] == "raised"
        assert alert["value"] == 98.2 and alert["detector"] == "threshold"
        assert alert["threshold"] == 90.0
        for key in ("sensor_id", "score", "reading_ts", "alert_ts", "expected_high"):
            assert key in alert
        await eventually(lambda: b"anomalous" in obs.on("/health"), timeout=2, what="health")


async def test_retained_health_says_silent_while_a_sensor_is_quiet(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    s = settings_for(mosquitto, tmp_path)
    s = s.model_copy(update={"detector": s.detector.model_copy(update={"interval": 0.2})})
    async with (
        Running(s) as running,
        Observer(mosquitto.url, ["factory/+/health"]) as obs,
        publisher(mosquitto.url) as pub,
    ):
        for seq in range(20):
            pub.publish("factory/QUIET-1/temperature", reading_payload("QUIET-1", 24.5, seq))
        # then nothing: silent after 5 x the learned interval, checked every 0.2 s
        await eventually(lambda: obs.on("/health") == [b"silent"], timeout=5, what="silent")
        view = running.service.pipeline.view()
        slot = view.slot("QUIET-1")
        assert slot is not None and view.health(slot) == "silent"
        pub.publish("factory/QUIET-1/temperature", reading_payload("QUIET-1", 24.5, 20))
        await eventually(lambda: obs.on("/health")[-1:] == [b"ok"], timeout=5, what="ok again")
        assert obs.on("/health") == [b"silent", b"ok"]


async def test_retained_status_known_at_once(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with publisher(mosquitto.url) as pub:
        for i in range(50):
            status = b"offline" if i % 10 == 0 else b"online"
            pub.publish(f"factory/S{i:03d}/status", status, retain=True)
    async with Running(settings_for(mosquitto, tmp_path)) as run:
        pipe = run.service.pipeline
        await eventually(lambda: len(pipe.sensor_ids) == 50, timeout=2, what="50 sensors")
        offline = {pipe.sensor_ids[s] for s in range(50) if pipe.health[s] == "offline"}
        assert offline == {f"S{i:03d}" for i in range(0, 50, 10)}


async def test_readings_while_down_are_delivered_exactly_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = settings_for(mosquitto, tmp_path)
    async with Running(settings):
        pass  # first start: the broker now holds our persistent session
    async with publisher(mosquitto.url) as pub:
        for i in range(5000):
            sid = f"S{i % 50:02d}"
            pub.publish(f"factory/{sid}/temperature", reading_payload(sid, 25.0, i // 50))
    async with Running(settings) as run:
        await eventually(lambda: len(run.processed) >= 5000, timeout=30, what="5000 readings")
        await asyncio.sleep(0)
    assert len(run.processed) == 5000
    assert len(set(run.processed)) == 5000
    assert run.service.pipeline.counters.duplicates == 0


async def test_broker_restart_mid_stream_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    total = 3000
    async with Running(settings_for(mosquitto, tmp_path)) as run:
        async with publisher(mosquitto.url) as pub:
            for i in range(total):
                sid = f"S{i % 10}"
                pub.publish(f"factory/{sid}/temperature", reading_payload(sid, 25.0, i // 10))
                if i == total // 2:
                    await eventually(lambda: len(run.processed) > 100, what="some readings")
                    mosquitto.restart(signal.SIGTERM)
                if i % 100 == 0:
                    await asyncio.sleep(0)
            await eventually(lambda: pub.pending == 0, timeout=30, what="publisher drained")
        await eventually(
            lambda: len(set(run.processed)) >= total, timeout=30, what="all readings processed"
        )
        assert run.service.client.stats.connects >= 2
    assert len(set(run.processed)) == total


HOSTILE = {
    b"not json": "not_json",
    b'{"value": "hot"}': "invalid_field",
    b'{"value": NaN}': "not_json",
    b"-inf": "non_finite",
    b'{"ts": 1800000000}': "invalid_field",
    b'{"value": 1, "sensor_id": "SOMEONE-ELSE"}': "sensor_mismatch",
    b"x" * 10_000: "oversized",
}


async def test_hostile_input_dead_lettered_detection_goes_on(tmp_path: Path) -> None:
    broker = MemoryBroker()
    async with Running(memory_settings(tmp_path), transport=broker.transport):
        broker.send([("factory/S1/temperature", payload) for payload in HOSTILE])
        broker.send([("factory/S1/pressure/extra", b"1")])
        broker.send([("factory/S1/temperature", reading_payload("S1", 98.2, 1))])
        await eventually(
            lambda: len(broker.messages("mqtt-anomaly/deadletter")) >= len(HOSTILE),
            what="dead letters",
        )
        dead = broker.payloads("mqtt-anomaly/deadletter")
        reasons = sorted(str(msgspec.json.decode(d)["reason"]) for d in dead)
        assert reasons == sorted(HOSTILE.values())
        await eventually(
            lambda: bool(broker.messages("factory/+/alerts")), what="alert after hostile input"
        )
        assert all(m.qos == 1 for m in broker.messages("#"))


async def test_detector_state_survives_restart(tmp_path: Path) -> None:
    settings = memory_settings(tmp_path)
    broker = MemoryBroker()
    async with Running(settings, transport=broker.transport) as run:
        broker.send(
            ("factory/S1/temperature", reading_payload("S1", 25.0 + (seq % 3) * 0.1, seq))
            for seq in range(100)
        )
        await eventually(lambda: len(run.processed) == 100)
        learned = run.service.pipeline.detectors[1].state_dict()
    assert (tmp_path / "state" / "detector-state.mqas").exists()
    assert broker.acknowledged == 100
    restarted = DetectorService(settings, console=False, transport=broker.transport)
    restarted.restore()
    assert restarted.pipeline.sensor_ids == ["S1"]
    again = restarted.pipeline.detectors[1].state_dict()
    assert again["params"] == learned["params"]
    assert learned["arrays"], "no learned arrays in the detector state"
    for k, v in learned["arrays"].items():
        assert (again["arrays"][k][:1] == v[:1]).all()


@pytest.mark.parametrize("n", [1000])
async def test_thousand_sensors_known(tmp_path: Path, n: int) -> None:
    broker = MemoryBroker()
    async with Running(memory_settings(tmp_path), transport=broker.transport) as run:
        for i in range(n):
            sid = f"SENSOR-{i:04d}"
            broker.send([(f"factory/{sid}/temperature", reading_payload(sid, 25.0, 0))])
        await eventually(lambda: len(run.service.pipeline.sensor_ids) == n, what=f"{n} sensors")
        await eventually(lambda: broker.acknowledged == n, what=f"{n} acknowledged")
        assert broker.messages("#") == []  # every sensor ok from the start: nothing to say


async def test_fleet_of_thousand_sensors_all_known(mosquitto: Mosquitto, tmp_path: Path) -> None:
    from mqtt_anomaly.simulate import Fleet

    settings = load_settings(
        None,
        {
            "broker": {"url": mosquitto.url, "client_id": "detector-under-test"},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state"},
            "simulator": {"sensors": 1000, "seed": 3, "id_format": "SENSOR-{n:04d}"},
        },
    )
    async with Running(settings) as run:
        async with Fleet(settings) as fleet:
            await fleet.run(count=2)
        pipe = run.service.pipeline
        await eventually(lambda: len(pipe.sensor_ids) == 1000, timeout=20, what="1000 sensors")
        assert set(pipe.sensor_ids) == set(fleet.sensor_ids)
        await eventually(lambda: pipe.counters.processed >= 1900, timeout=20, what="readings")

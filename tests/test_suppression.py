"""Maintenance windows and operating-state gates on a seeded simulation: alerts suppressed
exactly inside them (with the reason, in the history store), raised outside; held sensors
neither scored nor learned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.messages import Alert
from mqtt_anomaly.pipeline import Output
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.store import open_store
from mqtt_anomaly.transport.memory import MemoryBroker
from mqtt_anomaly.web.metrics import ServiceMetrics

from .helpers import eventually
from .test_service import Running

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
SPIKES = (50, 150, 185, 195, 250)  # seconds after T0: one reading at 98 °C each
OFF = (120, 180)  # press 1's motor current below 2 A (off) during [120, 180)
WARMUP = 10.0  # then 10 s of warm-up: held until 190
WINDOW = (100, 200)  # press 2's maintenance window (one-off)


def _series(seed: int) -> list[tuple[str, bytes]]:
    """300 s of readings, 1 Hz: P1-T (gated), P1-I (its motor current), P2-T (maintenance),
    P3-T (neither); noise from ``seed``."""
    rng = np.random.default_rng(seed)
    msgs = []
    for k in range(300):
        ts = T0 + k
        for sid in ("P1-T", "P2-T", "P3-T"):
            value = 50.0 + rng.normal(0, 0.5) + (48.0 if k in SPIKES else 0.0)
            msgs.append((sid, value, k, ts))
        current = 0.4 if OFF[0] <= k < OFF[1] else 10.0 + rng.normal(0, 0.1)
        msgs.append(("P1-I", current, k, ts))
    return [
        (
            f"factory/{sid}/temperature",
            msgspec.json.encode({"sensor_id": sid, "ts": ts, "value": v, "seq": k + 1}),
        )
        for sid, v, k, ts in msgs
    ]


def _settings(tmp_path: Path) -> Any:
    return load_settings(
        None,
        {
            "broker": {"url": "mqtt://127.0.0.1:1", "client_id": "detector-under-test"},
            "store": {"url": f"sqlite:///{tmp_path / 'history.db'}"},
            "service": {"state_dir": tmp_path / "state"},
            "detector": {"detectors": ["threshold", "zscore"]},
            "maintenance": [
                {
                    "id": "relining",
                    "reason": "press 2 relining",
                    "sensors": ["P2-*"],
                    "start": "2026-01-01T01:01:40+01:00",  # T0 + 100 s, given in local time
                    "end": "2026-01-01T00:03:20",  # T0 + 200 s, naive: in the window's zone
                    "timezone": "UTC",
                }
            ],
            "gates": [
                {
                    "name": "press-1",
                    "sensors": ["P1-T"],
                    "sensor": "P1-I",
                    "below": 2.0,
                    "warmup": WARMUP,
                }
            ],
        },
    )


async def test_window_and_gate_on_a_seeded_simulation(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    broker = MemoryBroker()
    seen: list[Alert] = []

    def record(out: Output) -> None:
        seen.extend(out.alerts)

    with open_store(settings.store.url, settings.store) as store:
        run = Running(settings, transport=broker.transport, store=store)
        run.service.listeners.append(record)
        async with run:
            msgs = _series(seed=7)
            for i in range(0, len(msgs), 40):
                broker.send(msgs[i : i + 40])
            await eventually(lambda: len(run.processed) == len(msgs), what="every reading")
            svc = run.service
            assert svc.gates is not None
            slot = svc.pipeline.sensor_ids.index("P1-T")
            zscore = next(d for d in svc.pipeline.detectors if d.name == "zscore")
            learned = int(zscore.state["n"][slot])
        stored = store.recent_alerts(limit=1000)

    def raised(sid: str) -> dict[float, str]:
        return {
            a.reading_ts - T0: a.suppressed
            for a in seen
            if a.sensor_id == sid and a.detector == "threshold" and a.state == "raised"
        }

    assert raised("P3-T") == {k: "" for k in SPIKES}  # the control: every spike alerts
    # maintenance: the spikes inside [100, 200) are suppressed with the reason, the others not
    window = "maintenance: press 2 relining"
    assert raised("P2-T") == {50: "", 150: window, 185: window, 195: window, 250: ""}
    cleared = {
        a.reading_ts - T0: a.suppressed
        for a in seen
        if a.sensor_id == "P2-T" and a.detector == "threshold" and a.state == "cleared"
    }
    assert cleared == {53: "", 153: window, 188: window, 198: window, 253: ""}
    # the gate: press 1 off during [120, 180) and warming up until 190: not scored at all
    assert raised("P1-T") == {50: "", 195: "", 250: ""}
    held = OFF[1] - OFF[0] + int(WARMUP)
    assert svc.gates.held == held
    text = ServiceMetrics(svc).exposition().decode()
    assert f"mqtt_anomaly_readings_gated_total {float(held)}" in text
    assert learned == 300 - held  # nor learned from
    # the history store keeps the reason
    in_store = {
        (a.sensor_id, a.reading_ts - T0, a.state): a.suppressed
        for a in stored
        if a.detector == "threshold" and a.reading_ts is not None
    }
    assert in_store[("P2-T", 150.0, "raised")] == window
    assert in_store[("P2-T", 250.0, "raised")] == ""


def _oven(tmp_path: Path) -> Any:
    """Settings with one gate on the oven's state topic, holding the OV-* sensors."""
    return load_settings(
        None,
        {
            "broker": {"url": "mqtt://127.0.0.1:1", "client_id": "detector-under-test"},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state"},
            "detector": {"detectors": ["threshold"]},
            "gates": [{"name": "oven", "topic": "plant/oven/state", "sensors": ["OV-*"]}],
        },
    )


async def test_a_state_topic_gate_holds_its_sensors(tmp_path: Path) -> None:
    settings = _oven(tmp_path)
    assert "plant/oven/state" in settings.subscriptions
    broker = MemoryBroker()
    seen: list[Alert] = []
    run = Running(settings, transport=broker.transport)
    run.service.listeners.append(lambda out: seen.extend(out.alerts))

    def reading(sid: str, value: float, seq: int) -> tuple[str, bytes]:
        body = {"sensor_id": sid, "ts": T0 + seq, "value": value, "seq": seq}
        return f"factory/{sid}/temperature", msgspec.json.encode(body)

    async with run:
        broker.send([("plant/oven/state", b"OFF"), reading("OV-1", 99.0, 1), reading("X", 99.0, 1)])
        await eventually(lambda: len(run.processed) == 2, what="two readings")
        broker.send([("plant/oven/state", b"running"), reading("OV-1", 99.0, 2)])
        await eventually(lambda: len(run.processed) == 3, what="the third")
        assert not broker.messages("mqtt-anomaly/deadletter")  # the state is no reading
    assert sorted((a.sensor_id, a.reading_ts - T0) for a in seen if a.state == "raised") == [
        ("OV-1", 2.0),
        ("X", 1.0),
    ]
    assert run.service.gates is not None and run.service.gates.held == 1
    # the machine's state survives a restart (saved at shutdown with the maintenance windows)
    again = DetectorService(settings, console=False, transport=broker.transport)
    assert again.gates is not None and again.gates.on == [True]  # the configured initial state
    again.restore()
    assert again.gates.on == [True] and again.gates.since[0] > 0


async def test_a_gate_state_is_restored_after_a_restart(tmp_path: Path) -> None:
    settings = _oven(tmp_path)
    broker = MemoryBroker()
    run = Running(settings, transport=broker.transport)
    async with run:
        broker.send([("plant/oven/state", b"off")])
        await eventually(lambda: run.service.gates.on == [False], what="the oven off")  # type: ignore[union-attr]
    again = DetectorService(settings, console=False, transport=broker.transport)
    assert again.gates is not None and again.gates.on == [True]  # "initial" until restored
    again.restore()
    assert again.gates.on == [False]


def test_the_console_line_of_a_suppressed_alert_says_why() -> None:
    from mqtt_anomaly.sinks.console import alert_line

    a = Alert("P2-T", "threshold", "critical", "raised", 98.0, 1.0, 90.0, None, None, T0, T0)
    assert alert_line(a) == "[ALERT] 🚨 CRITICAL ANOMALY DETECTED: 98.0°C! (P2-T, threshold)"
    quiet = msgspec.structs.replace(a, suppressed="maintenance: press 2 relining")
    assert alert_line(quiet) == alert_line(a) + " [suppressed: maintenance: press 2 relining]"

"""Alert floods: many alerts of one kind from one group become one aggregated alert."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from mqtt_anomaly import statefile
from mqtt_anomaly.bench import rawmqtt
from mqtt_anomaly.config import AlertSettings, load_settings
from mqtt_anomaly.floods import FloodFilter
from mqtt_anomaly.messages import Alert
from mqtt_anomaly.transport import codec
from mqtt_anomaly.transport.memory import MemoryBroker

from .helpers import Observer, eventually, reading_payload
from .mosquitto import Mosquitto
from .test_service import Running, memory_settings, publisher, settings_for


def alert(sid: str, state: str = "raised", detector: str = "silence") -> Alert:
    return Alert(sid, detector, "warning", state, None, 1.0, None, None, None, None, 0.0)  # type: ignore[arg-type]


def make(threshold: int = 5, **kw: object) -> FloodFilter:
    settings = AlertSettings(flood_threshold=threshold, flood_window=10.0, **kw)  # type: ignore[arg-type]
    return FloodFilter(settings, "factory/{sensor_id}/temperature")


def test_below_threshold_everything_passes() -> None:
    f = make()
    batch = [alert(f"S{i}") for i in range(4)]
    shown, events = f.feed(batch, 100.0)
    assert shown == batch and events == []
    shown, events = f.feed([alert(f"S{i}", "cleared") for i in range(4)], 101.0)
    assert len(shown) == 4 and events == [] and f.active == 0


def test_one_batch_over_threshold_is_one_flood_alert() -> None:
    f = make()
    shown, events = f.feed([alert(f"S{i}") for i in range(70_000)], 100.0)
    assert shown == []
    assert [(e.state, e.group, e.detector, e.active, e.raised) for e in events] == [
        ("raised", "factory", "silence", 70_000, 70_000)
    ]
    assert events[0].message == "70,000 sensors under factory silent"
    assert f.lines == [f.lines[0]] and f.lines[0].startswith("[FLOOD] ⏱️ 70,000 sensors")
    assert f.aggregated == 70_000 and f.active == 1
    # the sensors stay silent: the flood lasts, however long
    assert f.tick(100_000.0) == ([], [])
    # they come back: the clears are aggregated too, then the flood ends at the next check
    shown, events = f.feed([alert(f"S{i}", "cleared") for i in range(70_000)], 100_001.0)
    assert shown == [] and [e.state for e in events] == []
    shown, events = f.tick(100_002.0)
    assert shown == [] and [(e.state, e.active, e.cleared) for e in events] == [
        ("cleared", 0, 70_000)
    ]
    assert len({e.id for e in events}) == 1 and f.active == 0


def test_alerts_published_before_the_flood_get_their_clears() -> None:
    f = make()
    early, _ = f.feed([alert("A"), alert("B")], 100.0)
    assert len(early) == 2
    shown, events = f.feed([alert(f"S{i}") for i in range(10)], 101.0)
    assert shown == [] and events[0].state == "raised" and events[0].active == 12
    shown, _ = f.feed([alert("A", "cleared"), alert("S1", "cleared")], 102.0)
    assert [(a.sensor_id, a.state) for a in shown] == [("A", "cleared")]


def test_updates_at_most_every_interval_and_stragglers_published_at_the_end() -> None:
    f = make(flood_update_interval=2.0)
    f.feed([alert(f"S{i}") for i in range(6)], 100.0)
    f.feed([alert("S6")], 100.5)
    assert f.tick(101.0) == ([], [])  # changed, but too soon
    _, events = f.tick(102.0)
    assert [(e.state, e.active) for e in events] == [("updated", 7)]
    assert f.tick(104.5) == ([], [])  # nothing changed
    f.feed([alert(f"S{i}", "cleared") for i in range(4)], 105.0)
    assert f.tick(106.0)[1][0].state == "updated"  # 3 still silent, raises still in window
    shown, events = f.tick(111.0)  # the raises fell out of the window; 3 < 5 in alert
    assert [e.state for e in events] == ["cleared"] and events[0].active == 3
    assert sorted(a.sensor_id for a in shown) == ["S4", "S5", "S6"]  # still active: shown now
    shown, _ = f.feed([alert("S4", "cleared")], 112.0)
    assert [a.sensor_id for a in shown] == ["S4"]


def test_console_lines_when_the_count_doubles() -> None:
    f = make(flood_update_interval=1.0)
    f.feed([alert(f"S{i}") for i in range(5)], 100.0)
    f.feed([alert("S5")], 100.1)
    f.tick(101.0)  # updated, 6 < 2 x 5: no line
    f.feed([alert(f"S{i}") for i in range(6, 20)], 101.5)
    f.tick(102.5)  # 20 >= 2 x 5: a line
    assert [line.split(" sensors")[0] for line in f.lines] == ["[FLOOD] ⏱️ 5", "[FLOOD] ⏱️ 20"]


def test_groups_and_kinds_are_separate() -> None:
    f = make(group_pattern=r"^(?P<group>line-\d+)-")
    batch = [alert(f"line-1-T{i}") for i in range(8)] + [alert(f"line-2-T{i}") for i in range(3)]
    batch += [alert(f"line-1-X{i}", detector="threshold") for i in range(3)]
    shown, events = f.feed(batch, 100.0)
    assert [(e.group, e.detector, e.active) for e in events] == [("factory/line-1", "silence", 8)]
    assert sorted(a.sensor_id for a in shown) == [
        *(f"line-1-X{i}" for i in range(3)),
        *(f"line-2-T{i}" for i in range(3)),
    ]
    assert f.group_of("other-7") == "factory"


def test_threshold_zero_turns_it_off() -> None:
    f = make(threshold=0)
    batch = [alert(f"S{i}") for i in range(1000)]
    assert f.feed(batch, 1.0) == (batch, [])


def test_bad_group_pattern_is_one_clear_line() -> None:
    from mqtt_anomaly.errors import ConfigError

    with pytest.raises(ConfigError, match=r"alerts\.group_pattern: needs a named group 'group'"):
        load_settings(None, {"alerts": {"group_pattern": "line-"}})


# ---- the service, on an in-process broker (nothing here depends on the broker) ---------------
FAST_SILENCE = {"interval": 0.2, "silence_factor": 2.0}


async def send_once(pub: object, sids: list[str]) -> None:
    for sid in sids:
        pub.publish(f"factory/{sid}/temperature", reading_payload(sid, 24.0, 0))  # type: ignore[attr-defined]


def send_readings(broker: MemoryBroker, sids: list[str], seq: int = 0) -> None:
    broker.send((f"factory/{sid}/temperature", reading_payload(sid, 24.0, seq)) for sid in sids)


async def test_below_threshold_alerts_published_one_by_one(tmp_path: Path) -> None:
    base = memory_settings(tmp_path)
    settings = base.model_copy(update={"detector": base.detector.model_copy(update=FAST_SILENCE)})
    sids = [f"S{i}" for i in range(5)]
    broker = MemoryBroker()
    async with Running(settings, transport=broker.transport) as run:
        send_readings(broker, sids)
        await eventually(
            lambda: len(broker.payloads("factory/+/alerts")) == 5, timeout=10, what="5 alerts"
        )
        alerts = broker.payloads("factory/+/alerts")
        assert {msgspec.json.decode(a)["sensor_id"] for a in alerts} == set(sids)
        assert broker.messages("mqtt-anomaly/floods") == []
        assert run.service.floods.floods_raised == 0


async def test_flood_grouped_by_pattern(tmp_path: Path) -> None:
    """30 sensors of line-1 and 5 of line-2 fall silent: one flood for factory/line-1, the
    5 of line-2 one by one; every alert reaches the listeners (the dashboard)."""
    base = memory_settings(tmp_path)
    settings = base.model_copy(
        update={
            "detector": base.detector.model_copy(update=FAST_SILENCE),
            "alerts": AlertSettings(  # the flood ends one window after its last raise
                flood_threshold=10, flood_window=2.0, group_pattern=r"^(?P<group>line-\d+)-"
            ),
        }
    )
    line1 = [f"line-1-T{i:02d}" for i in range(30)]
    line2 = [f"line-2-T{i:02d}" for i in range(5)]
    broker = MemoryBroker()

    def floods() -> list[dict[str, object]]:
        return [msgspec.json.decode(p) for p in broker.payloads("mqtt-anomaly/floods")]

    def alerted() -> set[str]:
        return {msgspec.json.decode(p)["sensor_id"] for p in broker.payloads("factory/+/alerts")}

    async with Running(settings, transport=broker.transport) as run:
        listened: list[Alert] = []
        run.service.listeners.append(lambda out: listened.extend(out.alerts))
        send_readings(broker, line1 + line2)
        await eventually(lambda: len(listened) == 35, timeout=10, what="35 silence alerts")
        await eventually(lambda: bool(floods()), what="flood alert")
        await eventually(lambda: len(broker.payloads("factory/+/alerts")) == 5, what="line-2")
        assert floods()[0]["group"] == "factory/line-1" and floods()[0]["detector"] == "silence"
        assert floods()[0]["state"] == "raised"
        assert alerted() == set(line2)

        # all of line-1 come back: the flood clears, its clears are not published one by one
        async def report() -> None:
            for seq in range(1, 1000):
                send_readings(broker, line1, seq)
                await asyncio.sleep(0.1)

        reporting = asyncio.create_task(report())
        try:
            await eventually(
                lambda: any(f["state"] == "cleared" for f in floods()),
                timeout=10,
                what="flood cleared",
            )
        finally:
            reporting.cancel()
        last = floods()[-1]
        assert last["state"] == "cleared" and last["cleared"] == 30 and last["active"] == 0
        assert len({f["id"] for f in floods()}) == 1
        assert alerted() == set(line2)


# ---- a gateway outage, through the real command ------------------------------------------
N_SENSORS = 20_000


def raw_publish(url: str, sids: list[str], seq: int) -> None:
    """Publish one QoS 1 reading per sensor, pre-encoded, in large writes; wait for PUBACKs."""
    sock = rawmqtt.open_client(url, f"gateway-{seq}")
    drain = rawmqtt.AckDrain(sock)
    drain.start()
    now = time.time()
    packets = [
        codec.publish(
            f"factory/{sid}/temperature",
            reading_payload(sid, 24.0, seq, now),
            qos=1,
            packet_id=i % 65535 + 1,
        )
        for i, sid in enumerate(sids)
    ]
    for i in range(0, len(packets), 2000):
        sock.sendall(b"".join(packets[i : i + 2000]))
        drain.wait(min(i + 2000, len(packets)) - 1000, 30)  # at most ~3,000 unacknowledged
    assert drain.wait(len(packets), 30), "the broker did not acknowledge every reading"
    sock.sendall(codec.disconnect())
    sock.close()


@pytest.mark.timeout(180)
async def test_gateway_outage_is_one_flood_and_sigterm_saves(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[detector]\ninterval = 0.5\nsilence_factor = 3.0\n[alerts]\nflood_update_interval = 1.0\n"
    )
    db = tmp_path / "history.db"
    state = tmp_path / "state" / "detector-state.mqas"
    detector = subprocess.Popen(
        [
            *(sys.executable, "-m", "mqtt_anomaly", "detect", "-c", str(config)),
            *("--broker", mosquitto.url, "--store", f"sqlite:///{db}"),
            *("--state-dir", str(tmp_path / "state")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    sids = [f"T{i:05d}" for i in range(N_SENSORS)]
    lines: list[str] = []
    assert detector.stdout is not None
    out = detector.stdout
    reader = threading.Thread(target=lambda: lines.extend(b.decode() for b in out))
    reader.start()
    try:
        async with Observer(mosquitto.url, ["mqtt-anomaly/floods", "factory/+/alerts"]) as obs:
            await eventually(
                lambda: any("[SYSTEM] Listening" in line for line in lines),
                timeout=30,
                what="the detector subscribed",
            )
            for seq in range(2):
                await asyncio.to_thread(raw_publish, mosquitto.url, sids, seq)

            def all_silent() -> bool:
                floods = obs.json("mqtt-anomaly/floods")
                return bool(floods) and floods[-1]["active"] == N_SENSORS

            await eventually(all_silent, timeout=60, what="a flood of every sensor")
            floods = obs.json("mqtt-anomaly/floods")
            assert floods[0]["state"] == "raised" and floods[0]["group"] == "factory"
            assert floods[0]["detector"] == "silence"
            assert {f["id"] for f in floods} == {floods[0]["id"]}
            assert len(obs.on("/alerts")) < 50  # not 20,000 alerts one by one
            state.unlink()  # what is there after the stop, the stop saved
        stopping = time.monotonic()
        detector.send_signal(signal.SIGTERM)
        await asyncio.to_thread(detector.wait, 60)
        stopped = time.monotonic() - stopping
    finally:
        if detector.poll() is None:
            detector.kill()
            detector.wait()
        reader.join(10)
    assert detector.stderr is not None
    err = detector.stderr.read()
    assert detector.returncode == 0, err.decode()[-2000:]
    assert stopped < 15
    assert len(statefile.load(state)["sensor_ids"]) == N_SENSORS  # saved at the stop
    assert sum("[FLOOD]" in line for line in lines) <= 3, lines
    assert len(lines) <= 10, lines
    with sqlite3.connect(db) as conn:
        stored = conn.execute(
            "SELECT count(DISTINCT sensor_id) FROM alerts WHERE detector = 'silence'"
            " AND state = 'raised'"
        ).fetchone()[0]
    assert stored == N_SENSORS
    assert msgspec.json.decode(obs.on("mqtt-anomaly/floods")[0])["since"] > 0


async def test_shutdown_with_everything_unacknowledged_returns_and_keeps_the_round_state(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The broker goes away with alerts and health in flight and queued: the stop waits a
    bounded time, does not raise, and leaves the state of the last complete round."""
    base = settings_for(mosquitto, tmp_path, ack_after="durable")  # counts held acknowledgements
    settings = base.model_copy(
        update={
            "detector": base.detector.model_copy(update=FAST_SILENCE),
            "broker": base.broker.model_copy(update={"max_inflight": 5}),
        }
    )
    run = Running(settings, shutdown_timeout=1.0)
    await run.__aenter__()
    tracker = run.service.tracker
    assert tracker is not None
    async with publisher(mosquitto.url) as pub:
        await send_once(pub, [f"S{i}" for i in range(200)])
    await eventually(lambda: tracker.stats.acked == 200, what="readings acknowledged")
    state = run.service.state_path
    saved = state.read_bytes()
    mosquitto.stop()
    await eventually(lambda: not run.service.client.connected, what="broker gone")
    # a flood alert and 200 health changes wait for a broker that is not there
    await eventually(lambda: run.service.client.pending >= 201, what="alerts waiting")
    run.stop.set()
    assert run.task is not None
    started = time.monotonic()
    await asyncio.wait_for(run.task, 20)  # raises if the stop raised
    assert time.monotonic() - started < 10
    assert state.read_bytes() == saved  # the last round did not complete: its state stays


def test_console_lines_outside_floods_are_bounded() -> None:
    from mqtt_anomaly.console import LineBudget

    now = [0.0]
    budget = LineBudget(20.0, clock=lambda: now[0])
    assert sum(budget.allow() for _ in range(1000)) == 20  # one second's worth at once
    assert budget.summary() == (
        "[ALERT] … 980 more alerts not shown (the dashboard and `mqtt-anomaly alerts` list them)"
    )
    assert budget.summary() is None
    now[0] = 0.5
    assert sum(budget.allow() for _ in range(100)) == 10  # refilled at 20 per second

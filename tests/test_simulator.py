"""The sensor fleet simulator: signals and faults without a broker, then the fleet on Mosquitto."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from typer.testing import CliRunner

from mqtt_anomaly.cli import app
from mqtt_anomaly.config import FaultRates, Settings, load_settings
from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.messages import decode_reading
from mqtt_anomaly.simulate import FaultKind, Fleet, FleetModel, parse_injection, read_labels
from mqtt_anomaly.simulate.faults import NO_FAULTS, SPIKE_VALUE, Injection
from mqtt_anomaly.transport.client import MqttClient

from .helpers import eventually
from .mosquitto import Mosquitto

ALL_FAULTS = FaultRates(
    spike=200, level_shift=200, drift=200, stuck=200, noise_burst=200, dropout=200, crash=200
)


# ---- helpers --------------------------------------------------------------------------------
def sim_settings(url: str, **simulator: Any) -> Settings:
    sim = {"faults": NO_FAULTS.model_dump(), "seed": 1, **simulator}
    return load_settings(
        overrides={"broker": {"url": url, "reconnect_delay": 0.1}, "simulator": sim}
    )


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    await eventually(cond, timeout, what)


class Observer:
    """A subscriber that records everything it receives, with the receive time."""

    def __init__(self, url: str, client_id: str = "observer", persistent: bool = False) -> None:
        settings = load_settings(overrides={"broker": {"url": url, "reconnect_delay": 0.1}})
        self.client = MqttClient(
            settings.broker, client_id, clean_session=not persistent, on_message=self._on_message
        )
        self.messages: list[tuple[str, bytes, bool, float]] = []

    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages.append((topic, payload, retain, time.time()))

    async def start(self, *filters: str) -> Observer:
        await self.client.connect(timeout=5)
        await self.client.subscribe(filters or ("factory/#",), qos=1)
        return self

    async def close(self) -> None:
        await self.client.disconnect()

    def readings(self) -> list[dict[str, Any]]:
        return [
            msgspec.json.decode(p) for t, p, _, _ in self.messages if t.endswith("/temperature")
        ]

    def timed_readings(self) -> list[tuple[dict[str, Any], float]]:
        return [
            (msgspec.json.decode(p), at)
            for t, p, _, at in self.messages
            if t.endswith("/temperature")
        ]

    def statuses(self, sensor_id: str) -> list[tuple[bytes, bool, float]]:
        topic = f"factory/{sensor_id}/status"
        return [(p, r, at) for t, p, r, at in self.messages if t == topic]

    def seqs(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = defaultdict(set)
        for r in self.readings():
            out[r["sensor_id"]].add(r["seq"])
        return out


async def simulate_until_sigterm(args: list[str], until: Callable[[], bool], what: str) -> str:
    """Run ``mqtt-anomaly simulate ARGS`` until ``until()``, stop it with SIGTERM; it must exit
    0. Returns its stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqtt_anomaly", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"},
    )
    try:
        await wait_for(until, what)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def by_sensor(readings: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(readings, key=lambda r: (r["sensor_id"], r["seq"])):
        out[r["sensor_id"]].append(r)
    return out


# ---- signals and faults, no broker ----------------------------------------------------------
def record(model: FleetModel, steps: list[Any]) -> tuple[dict[int, list[Any]], list[Any]]:
    per: dict[int, list[Any]] = defaultdict(list)
    events: list[Any] = []
    for st in steps:
        for j, i in enumerate(st.idx.tolist()):
            per[i].append((int(st.k[j]), float(st.values[j]), bool(st.sent[j]), int(st.kinds[j])))
        events += [
            (e.sensor, e.kind, e.start_k, e.end_k, e.readings, e.magnitude)
            for e in st.started + st.ended
        ]
    return dict(per), sorted(events, key=repr)


def test_same_seed_same_values_and_faults_whatever_the_batching() -> None:
    n, rounds = 40, 400
    a = FleetModel(n, interval=1.0, seed=7, rates=ALL_FAULTS)
    steps_a = [a.step(np.arange(n)) for _ in range(rounds)]
    b = FleetModel(n, interval=1.0, seed=7, rates=ALL_FAULTS)
    rng = np.random.default_rng(0)
    steps_b = []
    while (b.next_k < rounds).any():  # random subsets, as ticks of a busy scheduler would give
        idx = np.flatnonzero((b.next_k < rounds) & (rng.random(n) < 0.4))
        steps_b.append(b.step(rng.permutation(idx)))
    values_a, events_a = record(a, steps_a)
    values_b, events_b = record(b, steps_b)
    assert values_a == values_b
    assert events_a == events_b
    assert {e[1] for e in events_a} == set(FaultKind)  # every kind was exercised
    c = FleetModel(n, interval=1.0, seed=8, rates=ALL_FAULTS)
    values_c, events_c = record(c, [c.step(np.arange(n)) for _ in range(rounds)])
    assert values_c != values_a and events_c != events_a


def test_healthy_signal_is_realistic() -> None:
    m = FleetModel(500, interval=1.0, seed=3, rates=NO_FAULTS)
    values = np.array([m.step(np.arange(500)).values for _ in range(300)])
    base = m.signals.base
    assert base.min() > 20 and base.max() < 30 and base.max() - base.min() > 9
    level = values.mean(axis=0)  # over 5 minutes: the base, moved by the daily cycle (±2 °C)
    assert np.abs(level - base).max() < 2.1 and np.abs(level - base).mean() > 0.2
    noise = np.diff(values, axis=0).std(axis=0) / np.sqrt(2)
    assert noise.min() > 0.03 and noise.max() < 0.3
    assert np.all(values == np.round(values, 2))


def test_forced_faults_change_readings_as_described() -> None:
    n = 6
    clean = FleetModel(n, interval=1.0, seed=5, rates=NO_FAULTS)
    m = FleetModel(n, interval=1.0, seed=5, rates=NO_FAULTS)
    assert m.inject(FaultKind.SPIKE, sensor=0, at=3) == 3
    m.inject(FaultKind.LEVEL_SHIFT, sensor=1, at=2, duration=5)
    m.inject(FaultKind.DRIFT, sensor=2, at=2, duration=5)
    m.inject(FaultKind.STUCK, sensor=3, at=2, duration=5)
    m.inject(FaultKind.NOISE_BURST, sensor=4, at=2, duration=5)
    m.inject(FaultKind.DROPOUT, sensor=5, at=2, duration=5)
    ref = np.array([clean.step(np.arange(n)).values for _ in range(10)])
    steps = [m.step(np.arange(n)) for _ in range(10)]
    got = np.array([s.values for s in steps])
    sent = np.array([s.sent for s in steps])
    diff = got - ref
    assert got[3, 0] == SPIKE_VALUE and np.all(diff[[0, 1, 2, 4, 5, 6, 7, 8, 9], 0] == 0)
    # sensors 1..5 read at 1/6, 2/6 ... of a second: reading 2 is the first at or after 2 s
    fault = slice(2, 7)
    assert np.allclose(diff[fault, 1], 5.0, atol=0.011) and np.all(diff[7:, 1] == 0)
    assert np.allclose(diff[fault, 2], np.arange(1, 6) * 3 / 60, atol=0.011)
    assert np.all(got[fault, 3] == got[1, 3]) and got[7, 3] != got[1, 3]
    sigma = m.signals.noise[4]  # a burst: noise x10, so 9 sigma more on top of the usual noise
    assert np.abs(diff[fault, 4]).mean() > 3 * sigma and np.all(diff[7:, 4] == 0)
    assert not sent[fault, 5].any() and sent[:2, 5].all() and sent[7:, 5].all()
    ended = {(e.sensor, e.kind): (e.start_k, e.end_k) for s in steps for e in s.ended}
    assert ended[(0, FaultKind.SPIKE)] == (3, 3)
    assert all(
        ended[(i, k)] == (2, 6) for i, k in enumerate(FaultKind) if k.value in (2, 3, 4, 5, 6)
    )


def test_random_faults_follow_their_rates_and_never_overlap() -> None:
    n, rounds = 1000, 100
    spikes_only = NO_FAULTS.model_copy(update={"spike": 36.0})  # 1 % of readings
    m = FleetModel(n, interval=1.0, seed=11, rates=spikes_only)
    spikes = [e for _ in range(rounds) for e in m.step(np.arange(n)).started]
    assert 900 < len(spikes) < 1100  # expected 1000, sd 32
    m = FleetModel(n, interval=1.0, seed=11, rates=ALL_FAULTS)
    active: dict[int, int] = {}
    kinds: set[FaultKind] = set()
    for _ in range(rounds):
        st = m.step(np.arange(n))
        for e in st.started:
            assert e.sensor not in active  # one fault at a time per sensor
            active[e.sensor] = e.start_k
            kinds.add(e.kind)
        for e in st.ended:  # a spike ends on the reading it started
            assert active.pop(e.sensor) == e.start_k
            assert e.end_k is not None and e.end_k - e.start_k + 1 == e.readings
    assert kinds == set(FaultKind)
    assert sorted(active) == sorted(e.sensor for e in m.active_faults())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spike@5", Injection(FaultKind.SPIKE, 5.0)),
        ("level-shift@10+30:SENSOR-03", Injection(FaultKind.LEVEL_SHIFT, 10.0, 30.0, "SENSOR-03")),
        ("crash@2.5:4", Injection(FaultKind.CRASH, 2.5, None, 4)),
        ("NOISE_BURST@0+1.5", Injection(FaultKind.NOISE_BURST, 0.0, 1.5)),
    ],
)
def test_parse_injection(text: str, expected: Injection) -> None:
    assert parse_injection(text) == expected


@pytest.mark.parametrize("text", ["spike", "spike@", "flood@5", "spike@-1", "drift@5+0", "x@1:0"])
def test_parse_injection_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_injection(text)


# ---- the fleet on a real broker -------------------------------------------------------------
async def test_payload_schema_topics_seq_and_clean_shutdown(mosquitto: Mosquitto) -> None:
    obs = await Observer(mosquitto.url).start()
    fleet = Fleet(sim_settings(mosquitto.url, sensors=3, interval=0.05))
    try:
        await fleet.start()
        assert fleet.sensor_ids == ["SENSOR-01", "SENSOR-02", "SENSOR-03"]
        assert fleet.client("SENSOR-02").client_id == "sim-SENSOR-02"
        await fleet.run(count=10)
        await wait_for(lambda: len(obs.readings()) == 30, "30 readings")
    finally:
        await fleet.stop()
    for topic, payload, _, at in obs.messages:
        if not topic.endswith("/temperature"):
            continue
        data = msgspec.json.decode(payload)
        assert set(data) == {"sensor_id", "ts", "value", "unit", "seq"}
        assert topic == f"factory/{data['sensor_id']}/temperature"
        assert isinstance(data["value"], float) and data["unit"] == "C"
        assert abs(data["ts"] - at) < 1.0
        decode_reading(payload, data["sensor_id"], at)  # what the detector accepts
    assert len(by_sensor(obs.readings())) == len(fleet.sensor_ids) == 3
    for sid, rs in by_sensor(obs.readings()).items():
        assert [r["seq"] for r in rs] == list(range(10)), sid
        ts = [r["ts"] for r in rs]
        assert np.allclose(np.diff(ts), 0.05, atol=0.0011), sid
    log = (mosquitto.workdir / "mosquitto.log").read_text()
    for sid in fleet.sensor_ids:  # one connection each, persistent session (c0)
        assert log.count(f" as sim-{sid} (p2, c0, k10)") == 1
    for sid in fleet.sensor_ids:  # online on connect, offline on a clean stop
        assert [p for p, _, _ in obs.statuses(sid)] == [b"online", b"offline"]
    late = await Observer(mosquitto.url, "late").start("factory/+/status")
    await wait_for(lambda: len(late.messages) == 3, "3 retained statuses")
    assert {(p, r) for _, p, r, _ in late.messages} == {(b"offline", True)}
    await asyncio.gather(obs.close(), late.close())


async def test_thousand_sensors_publish_and_are_online(mosquitto: Mosquitto) -> None:
    n = 1000
    fleet = Fleet(sim_settings(mosquitto.url, sensors=n, interval=0.5))
    obs = await Observer(mosquitto.url).start("factory/+/temperature")
    try:
        t0 = time.perf_counter()
        await fleet.start()
        assert time.perf_counter() - t0 < 15
        assert fleet.stats.connected == n
        status = await Observer(mosquitto.url, "status").start("factory/+/status")
        await wait_for(lambda: len(status.messages) == n, f"{n} retained statuses")
        assert all(p == b"online" and r for _, p, r, _ in status.messages)
        assert len({t for t, _, _, _ in status.messages}) == n
        await fleet.run(count=2)
        await wait_for(lambda: len(obs.messages) == 2 * n, f"{2 * n} readings")
    finally:
        await fleet.stop()
    seqs = obs.seqs()
    assert len(seqs) == n and all(s == {0, 1} for s in seqs.values())
    await asyncio.gather(obs.close(), status.close())


async def test_labels_record_every_injected_fault(mosquitto: Mosquitto, tmp_path: Path) -> None:
    interval = 0.05
    injections = [
        parse_injection(t)
        for t in (
            "spike@0.2:1",
            "level_shift@0.2+0.25:2",
            "drift@0.2+0.25:3",
            "stuck@0.2+0.25:4",
            "noise_burst@0.2+0.25:5",
            "dropout@0.2+0.25:6",
            "crash@0.2+0.25:7",
        )
    ]
    labels = tmp_path / "labels.jsonl"
    settings = sim_settings(mosquitto.url, sensors=7, interval=interval, labels_file=labels)
    obs = await Observer(mosquitto.url).start()
    fleet = Fleet(settings, injections=injections)
    try:
        await fleet.start()
        await fleet.run(count=20)
        await wait_for(
            lambda: b"online" in [p for p, _, _ in obs.statuses("SENSOR-07")[1:]],
            "SENSOR-07 back online",
        )
    finally:
        await fleet.stop()
    got = {lab.kind: lab for lab in read_labels(labels)}
    assert sorted(got) == sorted(str(k) for k in FaultKind)
    assert fleet.stats.faults == 7
    rs = by_sensor(obs.readings())
    spike = got["spike"]
    assert spike.sensor_id == "SENSOR-01" and spike.start == spike.end
    assert [r["ts"] for r in rs["SENSOR-01"] if r["value"] == SPIKE_VALUE] == [spike.start]
    for kind, sid in [
        ("level_shift", "SENSOR-02"),
        ("drift", "SENSOR-03"),
        ("stuck", "SENSOR-04"),
        ("noise_burst", "SENSOR-05"),
    ]:
        lab = got[kind]
        assert lab.sensor_id == sid
        inside = [r for r in rs[sid] if lab.start <= r["ts"] <= lab.end]
        assert len(inside) == 5, kind  # 0.25 s at 0.05 s
        assert inside[0]["ts"] == lab.start and inside[-1]["ts"] == lab.end
        assert abs(lab.start - (fleet.started_at or 0) - 0.2) < interval + 0.001
    assert (
        len(
            {
                r["value"]
                for r in rs["SENSOR-04"]
                if got["stuck"].start <= r["ts"] <= got["stuck"].end
            }
        )
        == 1
    )
    drop = got["dropout"]
    ts6 = [r["ts"] for r in rs["SENSOR-06"]]
    assert len(ts6) == 15 and not [t for t in ts6 if drop.start <= t <= drop.end]
    assert round((drop.end - drop.start) / interval) == 4
    crash = got["crash"]
    wills = [at for p, r, at in obs.statuses("SENSOR-07") if p == b"offline" and not r]
    assert wills and crash.start - 0.01 <= wills[0] <= crash.end
    assert not [r for r in rs["SENSOR-07"] if crash.start < r["ts"] < crash.end - 0.001]
    await obs.close()


async def test_crash_fires_the_will_then_the_sensor_comes_back(mosquitto: Mosquitto) -> None:
    obs = await Observer(mosquitto.url).start()
    fleet = Fleet(sim_settings(mosquitto.url, sensors=3, interval=0.05))
    stop = asyncio.Event()
    await fleet.start()
    runner = asyncio.create_task(fleet.run(stop))
    try:
        await wait_for(lambda: len(obs.readings()) > 15, "first readings")
        old = fleet.client("SENSOR-02")
        fleet.crash("SENSOR-02", downtime=0.5)
        crashed_at = time.time()
        await wait_for(
            lambda: (b"offline", False) in [(p, r) for p, r, _ in obs.statuses("SENSOR-02")],
            "the Last Will",
        )
        await wait_for(
            lambda: [p for p, _, _ in obs.statuses("SENSOR-02")][-1] == b"online",
            "SENSOR-02 online again",
            timeout=5,
        )
        assert fleet.client("SENSOR-02") is not old and not old.connected
        before = len([r for r in obs.readings() if r["sensor_id"] == "SENSOR-02"])
        await wait_for(
            lambda: len([r for r in obs.readings() if r["sensor_id"] == "SENSOR-02"]) > before + 5,
            "readings after the restart",
        )
    finally:
        stop.set()
        await runner
        await fleet.stop()
    assert [p for p, _, _ in obs.statuses("SENSOR-01")] == [b"online", b"offline"]
    back = [at for p, _, at in obs.statuses("SENSOR-02")][-2]  # online, before the final offline
    assert back - crashed_at > 0.4
    ts2 = [r["ts"] for r in obs.readings() if r["sensor_id"] == "SENSOR-02"]
    assert not [t for t in ts2 if crashed_at + 0.06 < t < crashed_at + 0.45]
    seq2 = sorted({r["seq"] for r in obs.readings() if r["sensor_id"] == "SENSOR-02"})
    assert seq2[0] == 0 and len(seq2) > before + 5  # seq carries on after the restart...
    assert seq2[-1] + 1 - len(seq2) <= fleet.stats.lost  # ...gaps only for what the crash lost
    await obs.close()


@pytest.mark.parametrize("buffer_size", [100_000, 10])
async def test_broker_outage_buffers_and_delivers(mosquitto: Mosquitto, buffer_size: int) -> None:
    n = 10
    obs = await Observer(mosquitto.url, persistent=True).start("factory/+/temperature")
    fleet = Fleet(sim_settings(mosquitto.url, sensors=n, interval=0.05, buffer_size=buffer_size))
    stop = asyncio.Event()
    await fleet.start()
    runner = asyncio.create_task(fleet.run(stop))
    try:
        await wait_for(lambda: len(obs.messages) > 2 * n, "readings before the outage")
        await asyncio.to_thread(mosquitto.stop)
        before = fleet.stats.readings
        await wait_for(lambda: fleet.stats.readings > before + 8 * n, "readings during the outage")
        assert fleet.stats.connected == 0
        assert fleet.stats.buffered > 0
        await asyncio.to_thread(mosquitto.start)
        await wait_for(
            lambda: fleet.stats.connected == n and fleet.stats.buffered == 0,
            "reconnected and flushed",
        )
    finally:
        stop.set()
        await runner
        await fleet.stop()
    stats = fleet.stats
    last = {sid: fleet.next_seq(sid) - 1 for sid in fleet.sensor_ids}
    await wait_for(
        lambda: {sid: max(s) for sid, s in obs.seqs().items()} == last,
        "the last reading of every sensor",
    )
    seqs = obs.seqs()
    assert sum(max(s) + 1 for s in seqs.values()) == stats.readings
    missing = stats.readings - sum(len(s) for s in seqs.values())
    if buffer_size > stats.readings:
        assert stats.dropped == 0 and missing == 0
    else:
        assert fleet.buffer_per_sensor == 1
        assert stats.dropped > 0 and missing == stats.dropped
    await obs.close()


@pytest.mark.parametrize(("interval", "duration"), [(1.0, 4.0), (0.02, 2.0)])
async def test_schedule_does_not_drift(
    mosquitto: Mosquitto, interval: float, duration: float
) -> None:
    n, per_sensor = 20, round(duration / interval)
    obs = await Observer(mosquitto.url).start("factory/+/temperature")
    fleet = Fleet(sim_settings(mosquitto.url, sensors=n, interval=interval))
    try:
        await fleet.start()
        t0 = time.monotonic()
        await fleet.run(duration=duration)
        elapsed = time.monotonic() - t0
        await wait_for(lambda: len(obs.messages) == n * per_sensor, f"{n * per_sensor} readings")
    finally:
        await fleet.stop()
    assert duration - interval < elapsed < duration + 0.1
    rs = by_sensor(obs.readings())
    assert len(rs) == n and all(len(r) == per_sensor for r in rs.values())
    for sid, readings in rs.items():
        ts = np.array([r["ts"] for r in readings])
        assert np.allclose(ts - ts[0], np.arange(per_sensor) * interval, atol=0.0011), sid
    timed = sorted(obs.timed_readings(), key=lambda x: x[0]["ts"])
    lateness = np.array([at - r["ts"] for r, at in timed])  # receive time - scheduled time
    assert lateness.min() >= -0.001 and lateness.max() < 0.25  # ts is rounded to the ms
    fifth = len(lateness) // 5  # sent late by a bounded amount that does not grow
    assert lateness[-fifth:].mean() - lateness[:fifth].mean() < 0.03
    assert fleet.stats.lag_max < 0.2


def test_simulate_command_rejects_mistakes_in_one_line() -> None:
    runner = CliRunner()
    for args in (["--inject", "spike5"], ["--qos", "3"], ["--rate", "flood=1"], ["--count", "0"]):
        result = runner.invoke(app, ["simulate", *args])
        assert result.exit_code == 2, args
        assert result.output.count("\n") == 1 and "error:" in result.output, args
    help_text = runner.invoke(app, ["simulate", "--help"]).output
    assert "KIND@SECONDS[+DURATION][:SENSOR]" in help_text


async def test_simulate_command_runs_and_stops_on_sigterm(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    obs = await Observer(mosquitto.url).start()
    labels = tmp_path / "truth.jsonl"
    args = [
        "-b",
        mosquitto.url,
        "-n",
        "2",
        "--interval",
        "0.1",
        "--seed",
        "4",
        "--no-faults",
        "--inject",
        "spike@0.3",
        "--labels",
        str(labels),
    ]
    text = await simulate_until_sigterm(
        args, lambda: any(r["value"] == SPIKE_VALUE for r in obs.readings()), "the forced spike"
    )
    assert "[SENSOR-01] Sending: 98.2°C <-- ANOMALY INJECTED!" in text
    assert "[SENSOR-02] Sending: " in text and "seed 4" in text
    await wait_for(lambda: len(obs.statuses("SENSOR-02")) == 2, "offline from SENSOR-02")
    assert [p for p, _, _ in obs.statuses("SENSOR-01")] == [b"online", b"offline"]
    (spike,) = read_labels(labels)
    assert spike.kind == "spike" and spike.sensor_id == "SENSOR-01"
    await obs.close()


# ---- simulated machines (--assets) ----------------------------------------------------------
def read_asset_csv(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text().splitlines()
    return lines[0].split(","), np.array([[float(c) for c in ln.split(",")] for ln in lines[1:]])


async def test_asset_fleet_publishes_each_sensor_and_writes_csv_and_labels(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from mqtt_anomaly.simulate.assetfleet import AssetFleet, build_model
    from mqtt_anomaly.simulate.assets import parse_asset_injection

    obs = await Observer(mosquitto.url).start()
    settings = sim_settings(mosquitto.url, interval=0.05)
    inj = parse_asset_injection("valve_restriction@0.5+0.5:2", "pump")
    model = build_model("pump", 2, interval=0.05, seed=3, rates={}, injections=[inj])
    labels = tmp_path / "labels.jsonl"
    fleet = AssetFleet(settings, model, labels=labels, csv_dir=tmp_path / "csv")
    try:
        await fleet.start()
        assert await fleet.run(count=30) == 30
        await wait_for(lambda: len(obs.messages) >= 2 * 8 * 30 + 2, "every sensor's readings")
    finally:
        await fleet.stop()
    sensors = model.sensor_names
    readings = [
        (t, msgspec.json.decode(p)) for t, p, _, _ in obs.messages if not t.endswith("/status")
    ]
    assert len(readings) == 2 * 8 * 30
    for topic, r in readings:
        _, asset, sensor = topic.split("/")
        assert r["sensor_id"] == f"{asset}/{sensor}" and sensor in sensors
        assert set(r) == {"sensor_id", "ts", "value", "unit", "seq"}
    flows = [r for t, r in readings if t == "factory/PUMP-02/flow"]
    assert [r["seq"] for r in flows] == list(range(30)) and flows[0]["unit"] == "m3/h"
    await wait_for(lambda: len(obs.statuses("PUMP-02")) == 2, "offline from PUMP-02")
    assert [p for p, _, _ in obs.statuses("PUMP-02")] == [b"online", b"offline"]
    # the labels file: the forced fault, for the whole asset, with the sensors it moves
    (label,) = read_labels(labels)
    assert (label.asset, label.kind) == ("PUMP-02", "valve_restriction")
    assert label.sensors == ("flow", "discharge_pressure", "suction_pressure", "motor_current")
    # one CSV per asset: the published values, the anomaly column on the labelled rows
    header, rows = read_asset_csv(tmp_path / "csv" / "PUMP-02.csv")
    assert header == ["timestamp", *sensors, "anomaly"] and len(rows) == 30
    assert np.allclose(rows[:, 1], [r["value"] for r in flows])
    assert np.allclose(rows[:, 0], [r["ts"] for r in flows], atol=1e-3)
    inside = (rows[:, 0] >= label.start - 1e-3) & (rows[:, 0] <= label.end + 1e-3)
    assert inside.sum() == 10 and np.array_equal(rows[:, -1] == 1, inside)
    assert read_asset_csv(tmp_path / "csv" / "PUMP-01.csv")[1][:, -1].sum() == 0
    await obs.close()


def test_simulate_assets_offline_writes_files_and_rejects_mistakes(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "plant"
    args = ["simulate", "--assets", "2", "--asset-kind", "compressor", "--offline"]
    result = runner.invoke(
        app,
        [
            *args,
            "--count",
            "1200",
            "--csv",
            str(out),
            "--labels",
            str(out / "labels.jsonl"),
            "--seed",
            "2",
            "--no-faults",
            "--inject",
            "internal_leak@700+200:COMPRESSOR-01",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 compressors, 1200 readings each" in result.output
    (label,) = read_labels(out / "labels.jsonl")
    assert (label.asset, label.kind, label.end - label.start) == (
        "COMPRESSOR-01",
        "internal_leak",
        199.0,
    )
    header, rows = read_asset_csv(out / "COMPRESSOR-01.csv")
    assert len(rows) == 1200 and header[1:4] == ["flow", "discharge_pressure", "motor_current"]
    assert rows[:, -1].sum() == 200 and np.all(np.diff(rows[:, 0]) == 1.0)
    for bad, message in (
        (["--count", "5"], "give --csv DIR and/or --labels FILE"),
        (["--csv", str(out)], "--offline needs --count N"),
        (["--count", "5", "--csv", str(out), "--rate", "flood=1"], "unknown compressor fault"),
        (["--count", "5", "--csv", str(out), "--inject", "internal_leak@5:7"], "no asset number 7"),
        (["--count", "5", "--csv", str(out), "--sensors", "3"], "exclude each other"),
    ):
        result = runner.invoke(app, [*args, *bad])
        assert result.exit_code == 2, bad
        assert result.output.count("\n") == 1 and message in result.output, (bad, result.output)
    result = runner.invoke(app, ["simulate", "--csv", str(out)])
    assert result.exit_code == 2 and "need --assets N" in result.output


async def test_simulate_assets_command_publishes_and_stops_on_sigterm(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    obs = await Observer(mosquitto.url).start()
    csv_dir, labels = tmp_path / "csv", tmp_path / "labels.jsonl"
    args = ["-b", mosquitto.url, "--assets", "2", "--asset-kind", "compressor"]
    args += ["--interval", "0.05", "--seed", "3", "--csv", str(csv_dir)]
    args += ["--labels", str(labels), "--inject", "cooler_fouling@0.2+60:2"]
    topic = "factory/COMPRESSOR-02/oil_temperature"
    text = await simulate_until_sigterm(
        args, lambda: sum(t == topic for t, *_ in obs.messages) >= 20, "20 readings"
    )
    assert "2 compressors, 8 sensors each" in text and "seed 3" in text
    assert "[COMPRESSOR-02] cooler fouling (oil_temperature, discharge_temperature)" in text
    await wait_for(lambda: len(obs.statuses("COMPRESSOR-02")) == 2, "offline")
    assert [p for p, _, _ in obs.statuses("COMPRESSOR-02")] == [b"online", b"offline"]
    sent = [msgspec.json.decode(p) for t, p, _, _ in obs.messages if t == topic]
    _, rows = read_asset_csv(csv_dir / "COMPRESSOR-02.csv")
    assert len(rows) >= len(sent) and np.allclose(rows[: len(sent), 7], [r["value"] for r in sent])
    # cut at the stop: the fault still in progress is labelled up to the last reading
    (label,) = read_labels(labels)
    assert label.kind == "cooler_fouling" and label.end == pytest.approx(rows[-1, 0], abs=1e-3)
    assert rows[-1, -1] == 1 and rows[0, -1] == 0
    await obs.close()

"""Delivery tracking: readings are acknowledged only once durable, so SIGKILL loses nothing.

The service is killed outright twice while 20,000 QoS 1 readings stream in, and restarted each
time. Afterwards every reading is in the store exactly once, and the stored alerts are exactly
those that one uninterrupted pass of the same readings through the same detector code raises.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.transport.client import MqttClient

from .helpers import eventually, reading_payload
from .kafka import unique
from .mosquitto import Mosquitto
from .postgres import private_database
from .test_kafka import Got, consume
from .test_service import publisher

SENSORS = 20
PER_SENSOR = 1000
TOTAL = SENSORS * PER_SENSOR
CONFIG = """
[detector]
detectors = ["threshold", "zscore", "stuck"]
silence_factor = 1e9
"""


def stream(t0: float) -> list[tuple[str, bytes]]:
    """The readings, sensor after sensor for each instant; a few spikes and a stuck stretch."""
    rng = random.Random(7)
    spikes = {(s, q) for s in range(SENSORS) for q in rng.sample(range(100, PER_SENSOR), 4)}
    out = []
    for q in range(PER_SENSOR):
        for s in range(SENSORS):
            sid = f"S{s:02d}"
            value = 25.0 + 2.0 * math.sin(q / 15.0 + s) + rng.gauss(0.0, 0.3)
            if (s, q) in spikes:
                value = 98.2
            elif s == 3 and 600 <= q < 700:
                value = 31.0  # stuck
            out.append((f"factory/{sid}/temperature", reading_payload(sid, value, q, t0 + q)))
    return out


def reference_alerts(settings_path: Path, messages: list[tuple[str, bytes]]) -> Counter[object]:
    """The alerts of one uninterrupted pass, in batches of another size than the service's."""
    settings = load_settings(settings_path, {})
    pipeline = Pipeline(settings)
    keys: list[tuple[str, str, str, float | None]] = []
    for i in range(0, len(messages), 137):
        out = pipeline.process([(t, p, time.time()) for t, p in messages[i : i + 137]])
        keys += [(a.sensor_id, a.detector, a.state, a.reading_ts) for a in out.alerts]
    return Counter(keys)


def count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


async def first_stored(history: History, pub: MqttClient, first: tuple[str, bytes]) -> None:
    """The detector's session must exist before readings are published: send the first reading
    again (the same one: a duplicate) until it is stored."""
    tries = 0

    def stored() -> bool:
        nonlocal tries
        if history.count() == 1:
            return True
        if tries % 50 == 0:
            pub.publish(*first)
        tries += 1
        return False

    await eventually(stored, timeout=30, what="first reading")


class History:
    """The history store a test's detector writes to, looked at from outside."""

    def __init__(self, url: str, db: Path | None = None) -> None:
        self.url, self.db = url, db

    def query(self, sql: str) -> list[tuple[object, ...]]:
        if self.db is not None:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1) as conn:
                return conn.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql.encode()).fetchall()

    def count(self) -> int:
        try:
            return int(self.query("SELECT count(*) FROM readings")[0][0])  # type: ignore[call-overload]
        except Exception:  # no file or no schema yet
            return 0


@pytest.fixture(params=["sqlite", "postgresql", "sqlite+kafka"])
def history(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[History]:
    if request.param == "postgresql":
        with private_database("delivery") as url:
            yield History(url)
        return
    db = tmp_path / "history.db"
    yield History(f"sqlite:///{db}", db)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigkill_twice_loses_and_doubles_nothing(
    mosquitto: Mosquitto, history: History, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    messages = stream(time.time() - 2 * PER_SENSOR)
    expected = reference_alerts(config, messages)
    assert sum(expected.values()) >= SENSORS * 4  # the spikes, at least
    kafka_args: tuple[str, ...] = ()
    if "kafka" in request.node.callspec.id:
        kafka = request.getfixturevalue("kafka")
        topic = unique("readings")
        kafka_args = ("--kafka", kafka.url)
        env = {**os.environ, "MQTT_ANOMALY_KAFKA__READINGS_TOPIC": topic}
    else:
        env = dict(os.environ)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "mqtt_anomaly"),
                *("detect", "-c", str(config), "--broker", mosquitto.url, *kafka_args),
                *("--store", history.url, "--state-dir", str(tmp_path / "state")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env=env,
        )

    detector = start()
    kills: list[int] = []
    try:
        async with publisher(mosquitto.url, "delivery-publisher") as pub:
            await first_stored(history, pub, messages[0])

            async def publish_rest() -> None:
                for i, (topic, payload) in enumerate(messages[1:], 1):
                    pub.publish(topic, payload)
                    if i % 200 == 0:
                        await asyncio.sleep(0.01)  # a stream, not one burst

            sending = asyncio.create_task(publish_rest())
            for at in (TOTAL // 4, TOTAL // 2):
                await eventually(lambda at=at: history.count() >= at, timeout=60, what=f"{at}")
                detector.send_signal(signal.SIGKILL)
                detector.wait(10)
                kills.append(history.count())
                detector = start()
            await sending
            await eventually(lambda: history.count() >= TOTAL, timeout=90, what="all readings")
    finally:
        detector.send_signal(signal.SIGTERM)
        _, err = detector.communicate(timeout=30)
    assert detector.returncode == 0, err.decode()
    assert all(0 < k < TOTAL for k in kills), kills  # killed mid-stream

    rows = history.query("SELECT sensor_id, seq, count(*) FROM readings GROUP BY 1, 2")
    stored = Counter(history.query("SELECT sensor_id, detector, state, reading_ts FROM alerts"))
    assert len(rows) == TOTAL
    assert {n for _, _, n in rows} == {1}
    assert stored == expected, (
        f"lost: {sorted((expected - stored).elements())[:10]}, "
        f"doubled or extra: {sorted((stored - expected).elements())[:10]}"
    )
    if kafka_args:  # at least once in Kafka: every reading is there
        seen: set[tuple[bytes, int]] = set()
        read = 0

        def all_there(got: list[Got]) -> bool:  # duplicates allowed: at least once
            nonlocal read
            seen.update((m.key, msgspec.json.decode(m.value)["seq"]) for m in got[read:])
            read = len(got)
            return len(seen) == TOTAL

        await asyncio.to_thread(consume, kafka, topic, TOTAL, 60.0, all_there)
        assert len(seen) == TOTAL


async def test_acknowledgements_wait_for_the_store(tmp_path: Path) -> None:
    from mqtt_anomaly.store.sqlite import SqliteStore
    from mqtt_anomaly.transport.memory import MemoryBroker

    from .test_service import Running, memory_settings

    db = tmp_path / "history.db"
    settings = memory_settings(tmp_path, ack_after="durable")
    broker = MemoryBroker()

    def send(seq: int) -> None:
        broker.send([("factory/S1/temperature", reading_payload("S1", 25.0, seq))])

    with SqliteStore(db, settings.store, busy_timeout=0.05) as store:
        async with Running(settings, store=store, transport=broker.transport) as run:
            tracker = run.service.tracker
            assert tracker is not None
            processed = run.processed
            send(0)
            await eventually(lambda: tracker.stats.acked == 1, what="first acknowledgement")
            assert broker.acknowledged == 1
            lock = sqlite3.connect(db, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            errors = store.stats.errors
            for seq in range(1, 51):
                send(seq)
            await eventually(lambda: len(processed) == 51, what="processed")
            await eventually(lambda: store.stats.errors > errors, what="a failed commit")
            assert tracker.stats.acked == 1  # processed, not stored: not acknowledged
            assert broker.acknowledged == 1  # the broker still has the 50 (held or in a round)
            lock.execute("ROLLBACK")
            lock.close()
            await eventually(lambda: tracker.stats.acked == 51, timeout=15, what="acks")
            assert count_rows(db) == 51 and broker.acknowledged == 51


async def test_a_broker_window_of_one_message_still_flows(tmp_path: Path) -> None:
    """With held acknowledgements a broker that sends one unacknowledged message at a time
    would wait for every round: rounds start as soon as the intake is quiet."""
    from .test_service import Running, settings_for

    broker = Mosquitto(tmp_path / "mosquitto", extra_config="max_inflight_messages 1\n").start()
    try:
        settings = settings_for(broker, tmp_path, ack_after="durable")
        async with Running(settings) as run, publisher(broker.url) as pub:
            for seq in range(200):
                pub.publish("factory/S1/temperature", reading_payload("S1", 25.0, seq))
            tracker = run.service.tracker
            assert tracker is not None
            await eventually(lambda: tracker.stats.acked == 200, timeout=30, what="200 acks")
            assert tracker.stats.rounds >= 200  # one message per round: the window held
    finally:
        broker.stop()


async def test_a_state_that_cannot_be_saved_holds_the_acknowledgements(tmp_path: Path) -> None:
    """A round whose state cannot be written (here a directory is in the way, as a full
    disk would refuse it) acknowledges nothing; the next round that can write sends them."""
    from mqtt_anomaly.transport.memory import MemoryBroker

    from .test_service import Running, memory_settings

    settings = memory_settings(tmp_path, ack_after="durable")
    broker = MemoryBroker()
    async with Running(settings, transport=broker.transport) as run:
        tracker = run.service.tracker
        assert tracker is not None
        broker.send([("factory/S1/temperature", reading_payload("S1", 25.0, 0))])
        await eventually(lambda: tracker.stats.acked == 1, what="first acknowledgement")
        blocker = run.service.state_path.with_name(run.service.state_path.name + ".tmp")
        blocker.mkdir()
        broker.send(
            ("factory/S1/temperature", reading_payload("S1", 25.0, seq)) for seq in range(1, 31)
        )
        await eventually(lambda: len(run.processed) == 31, what="processed")
        await eventually(lambda: tracker.stats.failed_rounds > 0, what="a failed round")
        assert tracker.stats.acked == 1 and broker.acknowledged == 1
        blocker.rmdir()
        await eventually(lambda: tracker.stats.acked == 31, timeout=15, what="acks")
        assert broker.acknowledged == 31

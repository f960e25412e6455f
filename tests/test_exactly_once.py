"""Exactly once across crashes: the intake journal, the alert outbox, and SIGKILL at any point.

The real ``mqtt-anomaly detect`` runs against a private Mosquitto with the stock in-flight
window (20) and is killed with SIGKILL before a burst, during it (twice in a row), while the
broker is down, and after the burst. Afterwards every reading is in the store exactly once,
every alert event of one uninterrupted pass reached a subscriber, and none reached it twice.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from mqtt_anomaly.config import BrokerSettings, load_settings
from mqtt_anomaly.journal import Journal, decode_frames, encode_batch
from mqtt_anomaly.outbox import Outbox
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.transport.client import MqttClient
from mqtt_anomaly.transport.memory import MemoryBroker, MemoryTransport
from mqtt_anomaly.web.metrics import ServiceMetrics

from .helpers import eventually, reading_payload
from .mosquitto import Mosquitto
from .test_delivery import History, first_stored
from .test_service import Running, memory_settings, publisher

SENSORS = 200
PER_SENSOR = 120
TOTAL = SENSORS * PER_SENSOR
CONFIG = """
[detector]
detectors = ["threshold", "zscore", "stuck"]
silence_factor = 1e9

[alerts]
flood_threshold = 0
"""


def stream(t0: float) -> list[tuple[str, bytes]]:
    """Instant after instant, every sensor; one 98.2 °C spike per sensor, spread out."""
    rng = random.Random(13)
    spikes = {(s, rng.randrange(40, PER_SENSOR)) for s in range(SENSORS)}
    out = []
    for q in range(PER_SENSOR):
        for s in range(SENSORS):
            sid = f"S{s:03d}"
            value = 98.2 if (s, q) in spikes else 25.0 + math.sin(q / 9.0 + s) + rng.gauss(0, 0.2)
            out.append((f"factory/{sid}/temperature", reading_payload(sid, value, q, t0 + q)))
    return out


def reference_ids(config: Path, messages: list[tuple[str, bytes]]) -> Counter[str]:
    """The alert ids of one uninterrupted pass (batches of another size than the service's)."""
    pipeline = Pipeline(load_settings(config, {}))
    ids: Counter[str] = Counter()
    for i in range(0, len(messages), 97):
        out = pipeline.process([(t, p, time.time()) for t, p in messages[i : i + 97]])
        ids.update(a.id for a in out.alerts)
    return ids


class AlertWatch(MqttClient):
    """A persistent QoS 1 subscriber to the alert topic counting alert ids as delivered.

    The broker's own redelivery to us after it restarted (DUP set) of an id already seen is not
    the service's repeat and is not counted; every other delivery is."""

    def __init__(self, url: str) -> None:
        super().__init__(BrokerSettings(url=url, reconnect_delay=0.1), "alert-watch")
        self.ids: Counter[str] = Counter()

    def _handle_message(
        self, _c: object, topic: str, payload: bytes, _qos: int, props: dict[str, object]
    ) -> int:
        alert_id = str(msgspec.json.decode(payload)["id"])
        if not (props.get("dup") and alert_id in self.ids):
            self.ids[alert_id] += 1
        return 0


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_anywhere_sends_every_alert_once(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", extra_config="max_inflight_messages 20\n").start()
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    messages = stream(time.time() - 2 * PER_SENSOR)
    expected = reference_ids(config, messages)
    assert sum(1 for i in expected if ":raised:" in i) >= SENSORS  # every spike, at least
    db = tmp_path / "history.db"
    history = History(f"sqlite:///{db}", db)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "mqtt_anomaly"),
                *("detect", "-c", str(config), "--broker", broker.url),
                *("--store", history.url, "--state-dir", str(tmp_path / "state")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env=dict(os.environ),
        )

    def kill(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return start()

    watch = AlertWatch(broker.url)
    await watch.connect(timeout=10)
    await watch.subscribe(["factory/+/alerts"], qos=1)
    detector = start()
    stored_at_kills: list[int] = []
    try:
        async with publisher(broker.url, "exactly-once-publisher") as pub:
            await first_stored(history, pub, messages[0])
            detector = kill(detector)  # before the burst

            async def publish_rest() -> None:
                for i, (topic, payload) in enumerate(messages[1:], 1):
                    pub.publish(topic, payload)
                    if i % 400 == 0:
                        await asyncio.sleep(0.01)

            sending = asyncio.create_task(publish_rest())
            await eventually(lambda: history.count() >= TOTAL // 3, timeout=60, what="a third")
            stored_at_kills.append(history.count())
            detector = kill(detector)  # during the burst, then again as soon as it works
            now = history.count()
            await eventually(lambda: history.count() > now, timeout=60, what="progress")
            stored_at_kills.append(history.count())
            detector = kill(detector)
            await eventually(lambda: history.count() >= 2 * TOTAL // 3, timeout=60, what="2/3")
            broker.stop()  # while the broker is down
            stored_at_kills.append(history.count())
            detector.send_signal(signal.SIGKILL)
            detector.wait(10)
            broker.start()
            detector = start()
            await sending
            await eventually(lambda: history.count() >= TOTAL, timeout=120, what="all readings")
            await eventually(
                lambda: set(watch.ids) >= set(expected), timeout=60, what="every alert"
            )
            detector = kill(detector)  # after the burst
            # a last spike on a new sensor: once its alert is here, whatever the restarted
            # service sends again (it would come first) is here too
            marker = ("factory/Z/temperature", reading_payload("Z", 98.2, 0))
            pub.publish(*marker)
            await eventually(
                lambda: any(i.startswith("Z:threshold:raised") for i in watch.ids),
                timeout=60,
                what="the marker's alert",
            )
    finally:
        detector.send_signal(signal.SIGTERM)
        _, err = detector.communicate(timeout=30)
        await watch.disconnect()
        broker.stop()
    assert detector.returncode == 0, err.decode()
    # the first kill during the burst came mid-stream; the second comes once the restarted
    # service made progress (a quiet machine may have stored the rest by then: the point is
    # killing it again while it catches up), and the one while the broker is down may likewise
    # find everything stored already
    assert 0 < stored_at_kills[0] < TOTAL, stored_at_kills

    rows = history.query("SELECT sensor_id, seq, count(*) FROM readings GROUP BY 1, 2")
    assert len(rows) == TOTAL + 1 and {n for *_, n in rows} == {1}
    got = Counter({i: n for i, n in watch.ids.items() if not i.startswith("Z:")})
    assert set(got) == set(expected), (set(expected) - set(got), set(got) - set(expected))
    repeated = {i: n for i, n in got.items() if n > 1}
    assert not repeated, f"{len(repeated)} alerts repeated, e.g. {list(repeated)[:5]}"


async def test_journaled_readings_come_back_from_the_journal(tmp_path: Path) -> None:
    """Acknowledged once journaled, even while no checkpoint can be saved; the next start
    processes them again from the journal (the broker has nothing left to send)."""
    settings = memory_settings(tmp_path)
    broker = MemoryBroker()
    blocker = tmp_path / "state" / "detector-state.mqas.tmp"
    blocker.mkdir(parents=True)
    payloads = [
        ("factory/S1/temperature", reading_payload("S1", 25.0 if q != 7 else 98.2, q))
        for q in range(10)
    ]
    async with Running(settings, transport=broker.transport, shutdown_timeout=1.0) as first:
        broker.send(payloads)
        await eventually(lambda: broker.acknowledged == 10, what="journaled and acknowledged")
        assert first.service.tracker is not None
        await eventually(lambda: first.service.tracker.stats.failed_rounds > 0, what="failed")  # type: ignore[union-attr]
    alerts = broker.payloads("factory/+/alerts")
    assert len(alerts) >= 1
    blocker.rmdir()
    async with Running(settings, transport=broker.transport) as second:
        await eventually(lambda: len(second.processed) == 10, what="processed again")
        assert second.service.outbox is not None
        assert second.service.outbox.suppressed >= 1  # the spike's alert: not sent again
        collected = ServiceMetrics(second.service).collect()
        metrics = {m.name: m.samples[0].value for m in collected if m.samples}
        assert metrics["mqtt_anomaly_alerts_not_repeated"] == second.service.outbox.suppressed
        assert metrics["mqtt_anomaly_alerts_resumed"] == 0
    assert broker.payloads("factory/+/alerts") == alerts
    assert second.processed == [("S1", q) for q in range(10)]


async def test_readings_without_seq_journaled_and_sent_again_are_processed_once(
    tmp_path: Path,
) -> None:
    """Killed after the journal write, before the PUBACKs reached the broker: the journal has
    the readings and the broker sends them again. Without seq nothing else tells them apart."""
    settings = memory_settings(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    at = time.time() - 10

    def plain(k: int) -> tuple[str, bytes]:
        payload = {"sensor_id": "S1", "ts": at + k, "value": 25.0, "unit": "C"}
        return "factory/S1/temperature", msgspec.json.encode(payload)

    journaled = [plain(k) for k in range(5)]
    with Journal(state / "journal") as journal:  # what the killed process had written
        journal.append([(t, p, at) for t, p in journaled])
    broker = MemoryBroker()
    async with Running(settings, transport=broker.transport) as run:
        await eventually(lambda: len(run.processed) == 5, what="the journal processed again")
        broker.send([*journaled[3:], plain(5)])  # the broker's redeliveries, then a new one
        await eventually(lambda: broker.acknowledged == 3, what="acknowledged")
        assert len(run.processed) == 6
        broker.send([plain(6)])
        await eventually(lambda: len(run.processed) == 7, what="the new reading")
    assert len(run.processed) == 7  # 5 from the journal, 2 new: the 2 sent again dropped


def test_a_journal_frame_cut_short_ends_the_segment(tmp_path: Path) -> None:
    batches = [[("a/S1/t", b"x" * n, 1.5 + n)] for n in range(1, 4)]
    data = b"".join(encode_batch(b) for b in batches)
    assert list(decode_frames(data)) == batches
    assert list(decode_frames(data[:-1])) == batches[:2]
    flipped = bytearray(data)
    flipped[-1] ^= 1
    assert list(decode_frames(bytes(flipped))) == batches[:2]
    with Journal(tmp_path / "j") as journal:
        journal.append(batches[0])
        first = journal.rotate()
        journal.append(batches[1])
        journal.rotate()
    with Journal(tmp_path / "j") as again:
        assert list(again.pending(0)) == batches[:2]
        assert list(again.pending(first)) == batches[1:2]
        again.unneeded(first)
        assert list(again.pending(0)) == batches[1:2]


async def test_the_outbox_sends_again_only_what_was_not_acknowledged(tmp_path: Path) -> None:
    broker = MemoryBroker()
    settings = memory_settings(tmp_path)

    def transport(name: str) -> MemoryTransport:
        return broker.transport(settings.broker, name, on_batch=lambda b: None, name=name)

    def alerts() -> list[str]:
        return [m.topic for m in broker.published]

    client = transport("one")
    await client.connect()
    outbox = Outbox(tmp_path / "outbox", client)
    outbox.send([("A", "t/a", b'{"id":"A"}', b""), ("B", "t/b", b'{"id":"B"}', b"")])
    assert client.acknowledged_mark() == 2
    outbox.note_acks(client.acknowledged_mark())
    broker.ack_publishes = False  # C reaches the broker, its acknowledgement never comes back
    outbox.send([("C", "t/c", b'{"id":"C"}', b""), ("A", "t/a", b'{"id":"A"}', b"")])
    assert outbox.suppressed == 1 and alerts() == ["t/a", "t/b", "t/c"]
    outbox.close()
    broker.ack_publishes = True
    other = transport("two")
    again = Outbox(tmp_path / "outbox", other)
    assert again.recover(0) == 1  # C only
    again.send([("B", "t/b", b'{"id":"B"}', b""), ("C", "t/c", b'{"id":"C"}', b"")])
    assert again.suppressed == 2
    await other.connect()
    await eventually(lambda: len(alerts()) == 4, what="C again")
    assert alerts()[-1] == "t/c"
    await other.drain(5)
    again.close()
    third = Outbox(tmp_path / "outbox", transport("three"))
    assert third.recover(0) == 0  # acknowledged now
    third.close()

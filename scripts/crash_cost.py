"""A crash as a user would have it: SIGKILL the real `mqtt-anomaly detect` mid-stream, restart.

    .venv/bin/python scripts/crash_cost.py [--sensors 1000] [--per-sensor 101] [--kill-at 0.4]
        [--runs 1] [--modes journaled,journaled+fsync,durable] [--inflight 20]

A private Mosquitto (Nagle on; ``max_inflight_messages`` 20 as Mosquitto ships it, or
``--inflight``), one detector process with the default detectors and a SQLite history, and a
publisher sending every reading at QoS 1 flat out: one 98.2 °C spike per sensor, spread through
the run. When ``--kill-at`` of the readings have been published the detector gets SIGKILL and
is started again at once with the same client id and state dir. A subscriber (persistent
session) counts the alert events by id; a broker redelivery to it (DUP) of an id it already has
is not counted.

Per mode, alternately (``journaled``: the default, intake journal and QoS 2 outbox;
``journaled+fsync``: with ``service.fsync``; ``durable``: acknowledgements held until the store
and state are saved, alerts at QoS 1 — the path before the journal): spikes lost and alerts
repeated (against one uninterrupted pass of the same readings), readings stored (of how many),
the wall time from the first publish to the last alert, and the detector processes' CPU
seconds per 10,000 readings. Flood aggregation is off (``alerts.flood_threshold = 0``): with
1,000 spikes the alert topic would carry flood events instead of the alerts counted here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgspec

from mqtt_anomaly.bench.broker import Mosquitto
from mqtt_anomaly.config import BrokerSettings, load_settings
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.transport.client import MqttClient

CONFIG = """
[detector]
silence_factor = 1e9

[service]
{service}

[alerts]
flood_threshold = 0
{alerts}
"""
MODES = {  # [service] and [alerts] lines
    "journaled": ("", ""),
    "journaled+fsync": ("fsync = true", ""),
    "journaled+qos1": ("", "qos = 1"),
    "durable": ('ack_after = "durable"', "qos = 1"),
}


def stream(sensors: int, per_sensor: int, t0: float) -> list[tuple[str, bytes]]:
    rng = random.Random(11)
    spikes = {(s, rng.randrange(per_sensor // 5, per_sensor)) for s in range(sensors)}
    out = []
    for q in range(per_sensor):
        for s in range(sensors):
            sid = f"S{s:04d}"
            value = 98.2 if (s, q) in spikes else 25.0 + math.sin(q / 9.0 + s) + rng.gauss(0, 0.2)
            payload = {"sensor_id": sid, "ts": t0 + q, "value": value, "unit": "C", "seq": q}
            out.append((f"factory/{sid}/temperature", msgspec.json.encode(payload)))
    return out


def reference(config: Path, messages: list[tuple[str, bytes]]) -> set[str]:
    pipeline = Pipeline(load_settings(config, {"service": {"max_sensors": 10_000}}))
    ids: set[str] = set()
    for i in range(0, len(messages), 97):
        out = pipeline.process([(t, p, time.time()) for t, p in messages[i : i + 97]])
        ids.update(a.id for a in out.alerts)
    return ids


class AlertWatch(MqttClient):
    def __init__(self, url: str, client_id: str) -> None:
        super().__init__(BrokerSettings(url=url, reconnect_delay=0.1), client_id)
        self.ids: Counter[str] = Counter()
        self.last = 0.0

    def _handle_message(
        self, _c: object, topic: str, payload: bytes, _qos: int, props: dict[str, object]
    ) -> int:
        alert_id = str(msgspec.json.decode(payload)["id"])
        if not (props.get("dup") and alert_id in self.ids):
            self.ids[alert_id] += 1
        self.last = time.monotonic()
        return 0


def stored(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


async def until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


async def run(args: argparse.Namespace, mode: str, n: int, workdir: Path) -> dict[str, object]:
    broker = Mosquitto(workdir / "broker", max_inflight=args.inflight).start()
    config = workdir / "config.toml"
    service, alerts = MODES[mode]
    config.write_text(CONFIG.format(service=service, alerts=alerts))
    messages = stream(args.sensors, args.per_sensor, time.time() - 2 * args.per_sensor)
    expected = reference(config, messages)
    db = workdir / "history.db"
    env = {**os.environ, "MQTT_ANOMALY_SERVICE__MAX_SENSORS": "10000"}

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "mqtt_anomaly", "detect", "-c", str(config)),
                *("--broker", broker.url, "--store", f"sqlite:///{db}"),
                *("--state-dir", str(workdir / "state")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "detector.log").open("ab"),
            cwd=workdir,
            env=env,
        )

    watch = AlertWatch(broker.url, f"watch-{n}")
    await watch.connect(timeout=10)
    await watch.subscribe(["factory/+/alerts"], qos=1)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    detector = start()
    pub = MqttClient(BrokerSettings(url=broker.url), f"crash-publisher-{n}")
    await pub.connect(timeout=10)
    tries = 0

    def first() -> bool:
        nonlocal tries
        if stored(db) >= 1:
            return True
        if tries % 25 == 0:
            pub.publish(*messages[0])
        tries += 1
        return False

    try:
        await until(first, 60, "the first reading")
    except TimeoutError:
        sys.exit((workdir / "detector.log").read_text()[-2000:])
    kill_at = int(len(messages) * args.kill_at)
    started = time.monotonic()
    for i, (topic, payload) in enumerate(messages[1:], 1):
        pub.publish(topic, payload)
        if i % 500 == 0:
            await asyncio.sleep(0)
        if i == kill_at:
            detector.send_signal(signal.SIGKILL)
            detector.wait(10)
            detector = start()
    total = len(messages)
    await until(lambda: stored(db) >= total, 300, "every reading stored")
    with contextlib.suppress(TimeoutError):  # a lost alert never comes: it is counted
        await until(lambda: set(watch.ids) >= expected, 60, "every alert")
    elapsed = watch.last - started
    detector.send_signal(signal.SIGTERM)
    detector.wait(60)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    await pub.disconnect()
    await watch.disconnect()
    broker.stop()
    with sqlite3.connect(db) as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT sensor_id || ':' || seq) FROM readings"
        ).fetchone()
    raised = {i for i in expected if ":raised:" in i}
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {
        "mode": mode,
        "lost_spikes": len(raised - set(watch.ids)),
        "lost_events": len(expected - set(watch.ids)),
        "repeated": sum(c - 1 for i, c in watch.ids.items() if c > 1),
        "stored": rows,
        "distinct": distinct,
        "readings": total,
        "first_publish_to_last_alert_s": round(elapsed, 2),
        "cpu_s_per_10k": round(cpu / total * 10_000, 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--per-sensor", type=int, default=101)
    parser.add_argument("--kill-at", type=float, default=0.4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--modes", default="journaled,journaled+fsync,durable")
    parser.add_argument("--inflight", type=int, default=20)
    args = parser.parse_args()
    modes = args.modes.split(",")
    print(
        f"{args.sensors} sensors × {args.per_sensor} readings at QoS 1, SIGKILL at "
        f"{args.kill_at:.0%}, Mosquitto max_inflight_messages {args.inflight}, Nagle on"
    )
    print(
        f"{'mode':<16} {'lost':>5} {'repeated':>8} {'stored':>15} "
        f"{'publish→last alert s':>21} {'CPU s/10k':>10}"
    )
    n = 0
    for _ in range(args.runs):
        for mode in modes:
            n += 1
            with tempfile.TemporaryDirectory(prefix="crash-cost-") as wd:
                r = await run(args, mode, n, Path(wd))
            print(
                f"{r['mode']:<16} {r['lost_spikes']:>5} {r['repeated']:>8} "
                f"{r['stored']:>7}/{r['readings']:<7} {r['first_publish_to_last_alert_s']:>21} "
                f"{r['cpu_s_per_10k']:>10}",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())

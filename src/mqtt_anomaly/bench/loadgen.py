"""The publisher side: a fleet of sensors multiplexed over one raw MQTT connection.

Two modes, both run in the publisher's own process (:func:`publisher_main`):

- **flat out** (:func:`flat_out`): readings encoded before the clock starts, joined into
  batches of :data:`BATCH` packets and written with one ``sendall`` each, while a thread
  drains the broker's PUBACKs; the publisher is never what limits the rate. The very last
  reading is a spike: with ``watch`` a subscriber on the alerts topic in this process notes
  when its alert arrives (the end of the run **end to end**: first publish → last alert);
- **paced** (:func:`paced`): a fixed rate (readings encoded as they are sent, so their ``ts``
  is the publish time), with a spike of 98.2 °C every ``spike_every`` readings, and a
  subscriber in this process that notes when each spike's first alert arrives: latency =
  that arrival − the reading's ``ts``, both on this process's clock. With ``watch="readings"``
  the same subscriber is on the readings topic instead and notes each reading's own arrival:
  the **harness floor** (publisher → broker → subscriber, no detector).

Readings look like the simulator's: JSON ``{"sensor_id", "ts", "value", "unit", "seq"}`` on
``factory/{sensor_id}/temperature``, sensor after sensor, ``seq`` +1 per sensor.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import numpy as np

from ..messages import Reading, encode
from ..topics import TopicTemplate
from ..transport import codec
from .payloads import Messages, values_per_message
from .rawmqtt import AckDrain, open_client, subscribe

BATCH = 2000
WINDOW = 60_000  # QoS 1 messages in flight at most (packet ids are 16 bits)
SPIKE = 98.2


@dataclass(frozen=True, slots=True)
class Fleet:
    """Who publishes: ``sensors`` ids, their topics, and normal values."""

    sensors: int
    readings_topic: str = "factory/{sensor_id}/temperature"
    alerts_topic: str = "factory/{sensor_id}/alerts"
    seed: int = 1
    payload: str = "flat"  # or nested-json, sparkplug (see payloads.py): sensors are sources

    def sensor_id(self, i: int) -> str:
        return f"SENSOR-{i + 1:05d}"

    @property
    def values(self) -> int:
        """Readings per message."""
        return values_per_message(self.payload)

    @property
    def alerts_filter(self) -> str:
        """Where the alerts of the fleet's sensors are (mapped ids have several levels)."""
        if self.payload == "flat":
            return TopicTemplate(self.alerts_topic).wildcard
        return self.alerts_topic.split("{sensor_id}")[0] + "#"


class Encoder:
    """Readings → PUBLISH packets; reading ``i`` is sensor ``i % sensors``, seq ``i // sensors``."""

    def __init__(self, fleet: Fleet, qos: int) -> None:
        self.fleet = fleet
        self.qos = qos
        template = TopicTemplate(fleet.readings_topic)
        self.ids = [fleet.sensor_id(i) for i in range(fleet.sensors)]
        self.topics = [template.format(s) for s in self.ids]
        rng = np.random.default_rng(fleet.seed)
        self.values = np.round(25.0 + rng.normal(0.0, 0.5, 8192), 2).tolist()
        self.mid = 0
        self.spike_ts = 0.0
        self.messages = Messages(fleet.payload, fleet.sensors) if fleet.payload != "flat" else None

    def packet(self, i: int, ts: float, value: float | None = None) -> bytes:
        s = i % self.fleet.sensors
        vals = self.values
        v = vals[i % len(vals)] if value is None else value
        seq = i // self.fleet.sensors + 1
        m = self.messages
        if m is None:
            payload = encode(Reading(self.ids[s], ts, v, "C", seq))
            topic = self.topics[s]
        else:
            k = self.fleet.values
            more = [vals[(i * k + j) % len(vals)] for j in range(1, k)]
            payload = m.payload_of(s, seq, ts, [v, *more])
            topic = m.topics[s]
        self.mid = self.mid % 65535 + 1
        return codec.publish(topic, payload, qos=self.qos, packet_id=self.mid)

    def births(self) -> list[bytes]:
        """Packets before the readings (the Sparkplug births), :meth:`batches` puts first."""
        if self.messages is None:
            return []
        packets, self.mid = self.messages.births(self.qos, self.mid)
        return packets

    def batches(self, n: int, size: int = BATCH) -> list[bytes]:
        """``n`` readings in writes of ``size``; the last one a spike with its own ``ts``
        (:meth:`last_spike` names it), so that its alert marks the end of the run."""
        ts = time.time()
        self.spike_ts = round((ts + 1e-3) * 1000) / 1000  # exact in milliseconds (Sparkplug)
        births = self.births()
        readings = [
            b"".join(
                self.packet(i, ts) if i < n - 1 else self.packet(i, self.spike_ts, SPIKE)
                for i in range(lo, min(n, lo + size))
            )
            for lo in range(0, n, size)
        ]
        return [b"".join(births[lo : lo + size]) for lo in range(0, len(births), size)] + readings

    def last_spike(self, n: int) -> tuple[str, float]:
        """(sensor_id, ts) of the spike :meth:`batches` put last."""
        s = (n - 1) % self.fleet.sensors
        sid = self.ids[s] if self.messages is None else self.messages.sensor_id(s)
        return sid, self.spike_ts

    def packets(self, n: int) -> int:
        """How many packets :meth:`batches` writes for ``n`` messages of readings."""
        return n + (2 * self.fleet.sensors if self.fleet.payload == "sparkplug" else 0)


def batch_size(rate: float) -> int:
    """Packets per write: :data:`BATCH` flat out, about a millisecond's worth at a rate."""
    return BATCH if rate <= 0 else max(1, min(BATCH, int(rate / 1000)))


def _client_id(role: str) -> str:
    return f"bench-{role}-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"


def flat_out(
    url: str,
    batches: list[bytes],
    n: int,
    qos: int,
    rate: float = 0.0,
    watch: tuple[str, str, float] | None = None,
) -> dict[str, Any]:
    """Write the pre-encoded ``batches`` as fast as the broker takes them, or at ``rate``.

    ``watch`` (alerts topic filter, sensor_id, ts of the last reading, a spike): also wait
    until that spike's alert arrived (``t_alert``, on the same clock as ``t_start``; None
    when it did not come within 30 s of the last PUBACK)."""
    alerts = None
    if watch is not None:
        alerts = AlertWatch(url, watch[0], clock=time.monotonic)
        alerts.start()
    sock = open_client(url, _client_id("pub"))
    drain = AckDrain(sock)
    drain.start()
    size = batch_size(rate)
    t_start = time.monotonic()
    sent = 0
    for batch in batches:
        if qos:
            while sent - drain.acked > WINDOW:
                time.sleep(0.001)
        if rate > 0:
            delay = t_start + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sock.sendall(batch)
        sent = min(n, sent + size)
    t_sent = time.monotonic()
    acked = drain.wait(n, 60.0) if qos else True
    t_acked = time.monotonic()
    sock.sendall(codec.disconnect())
    sock.close()
    t_alert = None
    if alerts is not None and watch is not None:
        key = (watch[1], watch[2])
        deadline = time.monotonic() + 30.0
        while key not in alerts.first and time.monotonic() < deadline:
            time.sleep(0.001)
        t_alert = alerts.first.get(key)
        alerts.close()
    return {
        "sent": n,
        "t_start": t_start,
        "t_sent": t_sent,
        "t_acked": t_acked,
        "t_alert": t_alert,
        "all_acked": acked,
        "rate": n / max(t_sent - t_start, 1e-9),
    }


class _AlertKey(msgspec.Struct):
    sensor_id: str
    state: str
    reading_ts: float | None = None


class _ReadingKey(msgspec.Struct):
    sensor_id: str
    ts: float


class AlertWatch(threading.Thread):
    """A QoS 1 subscriber on the alerts topic: when each reading's first raised alert arrived
    (``first``: (sensor_id, reading_ts) → arrival on ``clock``)."""

    def __init__(self, url: str, topic_filter: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(daemon=True, name="alert-watch")
        self.sock = open_client(url, _client_id("watch"))
        subscribe(self.sock, [topic_filter], 1)
        self.first: dict[tuple[str, float], float] = {}
        self.alerts = 0
        self._clock = clock
        self._decode: Callable[[bytes], _AlertKey] = msgspec.json.Decoder(_AlertKey).decode

    def run(self) -> None:
        pending = b""
        clock = self._clock
        try:
            while True:
                data = self.sock.recv(1 << 16)
                now = clock()
                if not data:
                    return
                packets, pending = codec.split(pending + data)
                acks = bytearray()
                for kind, flags, body in packets:
                    if kind != codec.PUBLISH:
                        continue
                    message = codec.decode_publish(flags, body)
                    if message.qos:
                        acks += codec.puback(message.packet_id)
                    self._record(message.payload, now)
                if acks:
                    self.sock.sendall(acks)
        except (OSError, codec.MalformedPacketError):
            return

    def _record(self, payload: bytes, now: float) -> None:
        self.alerts += 1
        try:
            a = self._decode(payload)
        except msgspec.DecodeError:
            return
        if a.state == "raised" and a.reading_ts is not None:
            self.first.setdefault((a.sensor_id, a.reading_ts), now)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class ReadingWatch(AlertWatch):
    """The same subscriber on the readings topic: when each reading itself arrived
    (``first``: (sensor_id, ts) → arrival), for the harness floor."""

    def __init__(self, url: str, topic_filter: str) -> None:
        super().__init__(url, topic_filter)
        self._decode_reading: Callable[[bytes], _ReadingKey] = msgspec.json.Decoder(
            _ReadingKey
        ).decode

    def _record(self, payload: bytes, now: float) -> None:
        self.alerts += 1
        try:
            r = self._decode_reading(payload)
        except msgspec.DecodeError:
            return
        self.first.setdefault((r.sensor_id, r.ts), now)


def spike_period(rate: float, spikes_per_s: float, sensors: int) -> int:
    """Readings between two spikes: about ``rate / spikes_per_s``, coprime with ``sensors``
    so that the spikes move across the fleet instead of hitting the same few sensors."""
    k = max(2, round(rate / max(spikes_per_s, 1e-9)))
    while math.gcd(k, sensors) != 1:
        k += 1
    return k


def paced(
    url: str,
    fleet: Fleet,
    qos: int,
    rate: float,
    seconds: float,
    spike_every: int,
    watch_topic: str = "alerts",
) -> dict[str, Any]:
    """Publish at ``rate`` for ``seconds`` with spikes; latency of each spike's first alert,
    or with ``watch_topic="readings"`` of each reading's arrival (``all_latencies``: every
    reading; ``latencies``: the spikes, as for the alerts)."""
    if watch_topic == "readings":
        watch: AlertWatch = ReadingWatch(url, TopicTemplate(fleet.readings_topic).wildcard)
    else:
        watch = AlertWatch(url, TopicTemplate(fleet.alerts_topic).wildcard)
    watch.start()
    enc = Encoder(fleet, qos)
    sock = open_client(url, _client_id("pub"))
    drain = AckDrain(sock)
    drain.start()
    spikes: list[tuple[str, float]] = []
    tick = 0.001
    sent = 0
    t0 = time.monotonic()
    next_tick = t0
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
        target = int(rate * elapsed) + 1
        if target > sent:
            ts = time.time()
            parts = []
            for i in range(sent, target):
                if i % spike_every == spike_every - 1:
                    parts.append(enc.packet(i, ts, SPIKE))
                    spikes.append((enc.ids[i % fleet.sensors], ts))
                else:
                    parts.append(enc.packet(i, ts))
            sock.sendall(b"".join(parts))
            sent = target
        next_tick += tick
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.monotonic()
    elapsed = time.monotonic() - t0
    if qos:
        drain.wait(sent, 10.0)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and sum(k in watch.first for k in spikes) < len(spikes):
        time.sleep(0.05)
    sock.sendall(codec.disconnect())
    sock.close()
    watch.close()
    latencies = [watch.first[k] - k[1] for k in spikes if k in watch.first]
    every = [t - k[1] for k, t in watch.first.items()] if watch_topic == "readings" else []
    return {
        "sent": sent,
        "seconds": elapsed,
        "rate": sent / elapsed,
        "spikes": len(spikes),
        "alerts_seen": watch.alerts,
        "latencies": latencies,
        "all_latencies": every,
        "spike_keys": spikes,
    }


def publisher_main(conn: Connection, url: str, fleet: Fleet) -> None:
    """The publisher process: runs commands from ``conn`` until ``("quit",)``."""
    sys.setswitchinterval(0.0005)  # the alert thread's timestamps should not wait for the GIL
    cache: dict[tuple[int, int, int], tuple[list[bytes], tuple[str, float], int]] = {}
    alerts = fleet.alerts_filter
    try:
        while True:
            cmd = conn.recv()
            if cmd[0] == "quit":
                return
            if cmd[0] in ("prepare", "flat"):
                _, qos, n, rate, *rest = cmd
                key = (qos, n, batch_size(rate))
                if key not in cache:
                    cache.clear()
                    enc = Encoder(fleet, qos)
                    cache[key] = (enc.batches(n, key[2]), enc.last_spike(n), enc.packets(n))
                batches, last, packets = cache[key]
                if cmd[0] == "prepare":
                    conn.send(("prepared", None))
                else:
                    watch = (alerts, *last) if rest and rest[0] else None
                    conn.send(("result", flat_out(url, batches, packets, qos, rate, watch)))
            elif cmd[0] == "paced":
                _, qos, rate, seconds, spike_every, *rest = cmd
                topic = rest[0] if rest else "alerts"
                conn.send(("result", paced(url, fleet, qos, rate, seconds, spike_every, topic)))
            elif cmd[0] == "fleet":
                from .httpcompare import fleet_command

                _, target, other_fleet, args = cmd
                conn.send(("result", fleet_command(target, other_fleet, args)))
            else:
                conn.send(("error", f"unknown command {cmd[0]!r}"))
    except Exception as exc:  # reported to the parent, which stops the run
        conn.send(("error", f"publisher: {type(exc).__name__}: {exc}"))
    except KeyboardInterrupt:
        return

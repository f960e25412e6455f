"""The virtual sensor fleet: one MQTT connection per sensor, one scheduler for all of them.

Each sensor is a device of its own on the wire: client id ``{client_id_prefix}{sensor_id}``, a
persistent session, a retained Last Will ``offline`` on its status topic, ``online`` published
on every (re)connect and ``offline`` on a clean stop. Readings go to the readings topic as
JSON ``{"sensor_id", "ts", "value", "unit", "seq"}``.

The schedule is absolute: reading ``k`` of sensor ``i`` is due at ``t0 + phase_i + k*interval``,
so the rate never drifts, however long the run. A single task wakes when readings are due
(at most every 10 ms), computes the values of every due sensor at once with numpy
(:class:`~mqtt_anomaly.simulate.model.FleetModel`) and hands them to the connections.
``ts`` is the scheduled time of the reading, not the time it was sent.

While the broker is unreachable every connection keeps its readings in a bounded buffer and
delivers them on reconnect. The bound is ``simulator.buffer_size`` for the whole fleet,
split evenly: each sensor keeps at most ``max(1, buffer_size // sensors)`` readings (0 if
``buffer_size`` is 0) and drops its oldest beyond that; drops are counted. Reconnect pauses
of a large fleet start spread over it (``broker.reconnect_delay`` plus up to ``sensors / 1000``
s), grow while the broker stays away and are drawn with jitter, so that the fleet does not
hammer a restarted broker all at once (:func:`_reconnect_policies`).

Use it from code as::

    async with Fleet(settings) as fleet:       # connects every sensor
        await fleet.run(count=10)              # or run(stop_event), run(duration=60)
        print(fleet.stats)
                                               # leaving: "offline", drain, disconnect
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import secrets
import signal
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .._lifecycle import AsyncClosing
from ..config import BrokerSettings, Settings
from ..console import RateLimitedLog, emit
from ..errors import ConfigError
from ..messages import Reading, encode
from ..retry import Backoff
from ..topics import TopicTemplate, valid_sensor_id
from ..transport.client import MqttClient, Will
from .faults import FaultEvent, FaultKind, Injection
from .labels import Label, LabelWriter
from .model import FleetModel, Step
from .signals import FloatArray, IntArray

log = logging.getLogger(__name__)

PER_READING_MAX = 10  # fleets up to this size print every reading
CONNECT_CONCURRENCY = 100
MIN_TICK = 0.01  # s, the scheduler wakes at most this often
MAX_CATCHUP = 10  # readings per sensor made up at once after a stall; beyond, skipped
FREEZE_GC_FROM = 1000  # fleets this large take their objects out of the garbage collector
RECONNECTS_PER_S = 1000  # fleet-wide pace of reconnect attempts while the broker is down
DELAY_STEPS = 64
RECONNECT_JITTER = 0.5  # each reconnect pause of a large fleet is shortened by up to this much


@dataclass(frozen=True, slots=True)
class FleetStats:
    """A snapshot of the fleet's counters."""

    sensors: int
    connected: int
    readings: int  # generated and handed to MQTT (sent, in flight or buffered)
    faults: int  # faults injected so far
    faults_by_kind: dict[str, int]
    buffered: int  # readings waiting for a connection now
    dropped: int  # readings dropped by the buffer bound
    lost: int  # readings unacknowledged when a crash dropped their connection
    skipped: int  # readings skipped because the scheduler fell too far behind
    lag_max: float  # s, worst lateness of a reading against its schedule
    lag_mean: float  # s
    elapsed: float  # s since the schedule started
    connect_seconds: float  # s the first connection of the whole fleet took


class Fleet(AsyncClosing):
    """``settings.simulator.sensors`` virtual sensors publishing to ``settings.broker``.

    ``injections`` are forced faults (``--inject``); ``labels`` the ground-truth file
    (default ``simulator.labels_file``). ``console`` prints operator lines: every reading
    for small fleets (≤ 10 sensors, or ``verbose``), else a summary every ``summary_every`` s.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        injections: Sequence[Injection] = (),
        labels: Path | None = None,
        console: bool = False,
        verbose: bool = False,
        summary_every: float = 5.0,
        connect_concurrency: int = CONNECT_CONCURRENCY,
    ) -> None:
        sim = settings.simulator
        n = sim.sensors
        self.settings = settings
        self.seed = sim.seed if sim.seed is not None else secrets.randbelow(2**31)
        self.sensor_ids = [sim.id_format.format(n=i + 1) for i in range(n)]
        self._index = {sid: i for i, sid in enumerate(self.sensor_ids)}
        bad = next((s for s in self.sensor_ids if not valid_sensor_id(s)), None)
        if bad is not None:
            raise ConfigError(f"simulator.id_format: {bad!r} is not a valid sensor id")
        if len(self._index) != n:
            raise ConfigError("simulator.id_format: gives the same id to several sensors")
        self.model = FleetModel(n, interval=sim.interval, seed=self.seed, rates=sim.faults)
        for inj in injections:
            self.model.inject(
                inj.kind, sensor=self._injection_target(inj), at=inj.at, duration=inj.duration
            )
        readings, status = (
            TopicTemplate(settings.topics.readings),
            TopicTemplate(settings.topics.status),
        )
        self._topics = [readings.format(s) for s in self.sensor_ids]
        self._status = [status.format(s) for s in self.sensor_ids]
        self._unit = sim.unit
        self._qos = settings.broker.qos
        self._labels_path = labels if labels is not None else sim.labels_file
        self._labels: LabelWriter | None = None
        self.buffer_per_sensor = max(1, sim.buffer_size // n) if sim.buffer_size else 0
        self._echo = console and (n <= PER_READING_MAX or verbose)
        self._summary = console and not self._echo
        self._summary_every = summary_every
        self._connect_slots = asyncio.Semaphore(connect_concurrency)
        self._reconnects = _reconnect_policies(settings.broker, n)

        self._clients: list[MqttClient] = []
        self._gen = [0] * n  # connection generation: a crash replaces the client
        self._down = [False] * n  # crashed, connection gone
        self._crashed_at: dict[int, float] = {}
        self._ever_lost = [False] * n
        self._seq = [0] * n
        self._reconnecting: dict[int, asyncio.Task[None]] = {}
        self._faults: Counter[str] = Counter()
        self._readings = 0
        self._lost = 0
        self._skipped = 0
        self._lag_max = 0.0
        self._lag_sum = 0.0
        self._lag_n = 0
        self.connect_seconds = 0.0
        self._mono0: float | None = None
        self.started_at: float | None = None  # epoch s of run time 0
        self._halt: asyncio.Event | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._froze_gc = False
        self._ratelog = RateLimitedLog(log)
        self._next_summary = math.inf
        self._last_summary = (0.0, 0)

    # ---- public ---------------------------------------------------------------------
    @property
    def stats(self) -> FleetStats:
        clients = self._clients
        now = time.monotonic()  # the event loop's clock
        return FleetStats(
            sensors=len(self.sensor_ids),
            connected=sum(1 for c in clients if c.connected),
            readings=self._readings,
            faults=sum(self._faults.values()),
            faults_by_kind=dict(self._faults),
            buffered=sum(c.stats.buffered for c in clients),
            dropped=sum(c.stats.dropped for c in clients),
            lost=self._lost,
            skipped=self._skipped,
            lag_max=self._lag_max,
            lag_mean=self._lag_sum / self._lag_n if self._lag_n else 0.0,
            elapsed=now - self._mono0 if self._mono0 is not None else 0.0,
            connect_seconds=self.connect_seconds,
        )

    def next_seq(self, sensor_id: str) -> int:
        """The ``seq`` of the sensor's next reading: how many it has published so far."""
        return self._seq[self._index[sensor_id]]

    def client(self, sensor_id: str) -> MqttClient:
        """The current connection of a sensor."""
        return self._clients[self._index[sensor_id]]

    async def start(self, timeout: float | None = None) -> None:
        """Connect every sensor (at most ``connect_concurrency`` at a time).

        While the broker is unreachable this retries (until ``timeout``, None = forever);
        a refusal raises :class:`~mqtt_anomaly.errors.BrokerError` at once.
        """
        if self._clients:
            return
        if self._labels_path is not None:
            self._labels = LabelWriter(self._labels_path)
        t0 = time.perf_counter()
        with self._quiet_gc():
            self._clients = [self._new_client(i) for i in range(len(self.sensor_ids))]
        # the first one alone: one warning if the broker is down, a quick failure if it refuses
        await self._connect(0, timeout)
        tasks = [
            asyncio.create_task(self._connect(i, timeout)) for i in range(1, len(self._clients))
        ]
        with self._quiet_gc():
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        self.connect_seconds = time.perf_counter() - t0
        b, sim = self.settings.broker, self.settings.simulator
        self._say(
            f"[INFO] Connected to Broker at {b.address}: {len(self._clients)} sensors "
            f"in {self.connect_seconds:.2f} s"
        )
        self._say(
            f"[INFO] One reading every {sim.interval:g} s per sensor, QoS {self._qos}, "
            f"seed {self.seed} (--seed {self.seed} repeats this run)"
        )

    async def run(
        self,
        stop: asyncio.Event | None = None,
        *,
        count: int | None = None,
        duration: float | None = None,
    ) -> FleetStats:
        """Publish until ``stop`` is set, each sensor has sent ``count`` more readings, or
        ``duration`` seconds have passed (whichever comes first; none: until :meth:`stop`).

        ``count`` counts schedule slots: a sensor in a dropout or crash sends fewer.
        """
        if self._closed:
            raise RuntimeError("fleet is stopped")
        await self.start()
        now = asyncio.get_running_loop().time()
        if self._mono0 is None:
            self._mono0 = now
            self.started_at = time.time()
            self._next_summary = now + self._summary_every
            self._last_summary = (now, 0)
        limit = self._limits(now, count, duration)
        halt = self._halt = asyncio.Event()
        relay = asyncio.create_task(_relay(stop, halt)) if stop is not None else None
        self._idle.clear()
        try:
            await self._schedule(halt, limit)
        finally:
            if relay is not None:
                relay.cancel()
            self._halt = None
            self._idle.set()
        return self.stats

    async def stop(self, graceful: bool = True, timeout: float = 10.0) -> None:
        """Stop publishing and leave.

        Graceful: ``offline`` (retained) from every sensor, wait up to ``timeout`` for the
        broker to acknowledge what is in flight, disconnect. Otherwise every connection is
        dropped as in a crash, so the broker publishes every Last Will.
        """
        if self._closed:
            return
        self._closed = True
        if self._halt is not None:
            self._halt.set()
        await self._idle.wait()
        tasks = list(self._reconnecting.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_labels()
        live = [c for i, c in enumerate(self._clients) if not self._down[i]]
        if graceful:
            # only connected sensors can still say goodbye; the others keep their buffers
            online = [i for i, c in enumerate(self._clients) if not self._down[i] and c.connected]
            for i in online:
                self._clients[i].publish(self._status[i], b"offline", qos=1, retain=True)
            acked = [self._clients[i] for i in online]
            if not await _drain(acked, timeout):
                log.warning(
                    "%d messages not acknowledged by the broker at shutdown",
                    sum(c.pending for c in acked),
                )
            await _bounded([c.disconnect() for c in live], self._connect_slots)
        else:
            for c in live:
                c.abort()
        if self._froze_gc:
            gc.unfreeze()
            self._froze_gc = False
        s = self.stats
        self._say(
            f"[INFO] Stopped: {_plural(s.readings, 'reading')}, "
            f"{_plural(s.faults, 'fault')} injected, {s.buffered} unsent, {s.dropped} dropped"
        )

    def crash(self, sensor_id: str, downtime: float | None = None) -> None:
        """Make a sensor vanish now without DISCONNECT (the broker publishes its Last Will);
        it comes back with a new connection after ``downtime`` s (default 15 s)."""
        if not self._clients:
            raise RuntimeError("start the fleet before crashing a sensor")
        i = self._index[sensor_id]
        if self._down[i] or self._closed:
            return
        self.model.inject(FaultKind.CRASH, sensor=i, duration=downtime)
        self._crash_now(i)

    async def _exit(self, clean: bool) -> None:
        await self.stop(graceful=clean)

    # ---- connections ------------------------------------------------------------------
    @contextlib.contextmanager
    def _quiet_gc(self) -> Iterator[None]:
        """Keep the garbage collector out of the way of a large fleet.

        Connecting creates ~25 KB of long-lived objects per sensor, and every full
        collection would rescan them all (measured: pauses of up to 1.2 s at 10,000 sensors,
        with the schedule stalled). So no collection while creating and connecting the
        clients, then :func:`gc.freeze` moves what is alive out of the collector's sight;
        :meth:`stop` unfreezes. Process-wide, hence only for fleets of ``FREEZE_GC_FROM``
        sensors or more.
        """
        if len(self.sensor_ids) < FREEZE_GC_FROM:
            yield
            return
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            gc.freeze()
            self._froze_gc = True
            if enabled:
                gc.enable()

    def _new_client(self, i: int) -> MqttClient:
        self._gen[i] += 1
        gen = self._gen[i]
        sid = self.sensor_ids[i]
        return MqttClient(
            self.settings.broker,
            f"{self.settings.simulator.client_id_prefix}{sid}",
            clean_session=False,
            will=Will(self._status[i], b"offline", qos=1, retain=True),
            on_connect=partial(self._on_connect, i, gen),
            on_disconnect=partial(self._on_disconnect, i, gen),
            buffer_size=self.buffer_per_sensor,
            name=sid,
            backoff=self._reconnects[i % len(self._reconnects)],
        )

    async def _connect(self, i: int, timeout: float | None) -> None:
        async with self._connect_slots:
            await self._clients[i].connect(timeout=timeout)

    def _on_connect(self, i: int, gen: int, _session_present: bool) -> None:
        if gen != self._gen[i]:
            return
        asyncio.get_running_loop().call_soon(self._announce, i, gen, 10)
        crashed_at = self._crashed_at.pop(i, None)
        if crashed_at is not None:
            self._label(i, FaultKind.CRASH, crashed_at, time.time())
            self._echo_line(f"[{self.sensor_ids[i]}] Back online (new connection)")
        elif self._ever_lost[i]:
            self._echo_line(f"[{self.sensor_ids[i]}] Reconnected; sending buffered readings")

    def _announce(self, i: int, gen: int, tries: int) -> None:
        """Publish ``online`` once the connection has sent what it buffered: published into a
        full buffer, the status would push out a reading."""
        client = self._clients[i]
        if gen != self._gen[i] or not client.connected:
            return  # gone again: the next connect announces
        if client.stats.buffered and tries > 0:
            asyncio.get_running_loop().call_soon(self._announce, i, gen, tries - 1)
            return
        client.publish(self._status[i], b"online", qos=1, retain=True)

    def _on_disconnect(self, i: int, gen: int) -> None:
        if gen != self._gen[i] or self._down[i] or self._closed:
            return
        self._ever_lost[i] = True
        self._echo_line(f"[{self.sensor_ids[i]}] Connection lost; buffering readings")

    def _crash_now(self, i: int) -> None:
        pending = self._reconnecting.pop(i, None)
        if pending is not None:
            pending.cancel()
        now = time.time()
        earlier = self._crashed_at.pop(i, None)
        if earlier is not None:  # crashed again before it was back
            self._label(i, FaultKind.CRASH, earlier, now)
        client = self._clients[i]
        self._lost += client.pending
        client.abort()
        self._down[i] = True
        self._crashed_at[i] = now

    def _restart(self, i: int) -> None:
        if self._closed or not self._down[i]:
            return
        self._clients[i] = self._new_client(i)
        self._down[i] = False
        task = asyncio.create_task(self._connect(i, None))
        self._reconnecting[i] = task
        task.add_done_callback(partial(self._reconnected, i))

    def _reconnected(self, i: int, task: asyncio.Task[None]) -> None:
        if self._reconnecting.get(i) is task:
            del self._reconnecting[i]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s could not reconnect: %s", self.sensor_ids[i], task.exception())

    # ---- schedule -----------------------------------------------------------------------
    def _limits(self, now: float, count: int | None, duration: float | None) -> IntArray:
        """Per sensor, the first reading index this run does not produce."""
        model = self.model
        limit = np.full(model.n, np.iinfo(np.int64).max // 2, np.int64)
        if count is not None:
            limit = np.minimum(limit, model.next_k + count)
        if duration is not None:
            assert self._mono0 is not None
            end = now + duration - self._mono0
            limit = np.minimum(limit, np.ceil((end - model.phase) / model.interval - 1e-9))
        return limit.astype(np.int64)

    async def _schedule(self, halt: asyncio.Event, limit: IntArray) -> None:
        loop = asyncio.get_running_loop()
        model, interval = self.model, self.model.interval
        assert self._mono0 is not None
        base: FloatArray = self._mono0 + model.phase
        due: FloatArray = base + model.next_k * interval
        due[model.next_k >= limit] = math.inf
        while not halt.is_set():
            now = loop.time()
            for passes in range(MAX_CATCHUP + 1):
                idx = np.flatnonzero(due <= now)
                if idx.size == 0:
                    break
                if passes == MAX_CATCHUP:
                    self._fall_behind(idx, now, limit)
                else:
                    self._produce(idx, due[idx], now)
                k = model.next_k[idx]
                due[idx] = np.where(k >= limit[idx], math.inf, base[idx] + k * interval)
            if self._summary and now >= self._next_summary:
                self._print_summary(now)
            next_due = float(due.min())
            if next_due == math.inf:
                break  # every sensor reached its count or the duration
            wake = min(next_due, self._next_summary)
            delay = max(wake, now + MIN_TICK) - loop.time()
            if delay <= 0:
                await asyncio.sleep(0)  # behind: still let the connections do their I/O
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await halt.wait()

    def _fall_behind(self, idx: IntArray, now: float, limit: IntArray) -> None:
        model = self.model
        assert self._mono0 is not None
        k_now = np.floor((now - self._mono0 - model.phase[idx]) / model.interval) + 1
        skipped = model.skip(idx, np.minimum(k_now.astype(np.int64), limit[idx]))
        self._skipped += skipped
        self._ratelog.warning(
            "behind", "scheduler fell %d readings behind (CPU starved?): skipped them", skipped
        )

    def _ts(self, t: FloatArray) -> FloatArray:
        assert self.started_at is not None
        return np.round(self.started_at + t, 3)

    def _produce(self, idx: IntArray, due: FloatArray, now: float) -> None:
        step = self.model.step(idx)
        lag = now - due
        self._lag_max = max(self._lag_max, float(lag.max()))
        self._lag_sum += float(lag.sum())
        self._lag_n += lag.size
        for ev in step.ended:
            self._fault_ended(ev)
        for ev in step.started:
            self._fault_started(ev)
        sent = np.flatnonzero(step.sent)
        who = idx[sent].tolist()
        values = step.values[sent].tolist()
        stamps = self._ts(step.t[sent]).tolist()
        unit, qos = self._unit, self._qos
        ids, topics, clients, seq = self.sensor_ids, self._topics, self._clients, self._seq
        for i, v, ts in zip(who, values, stamps, strict=True):
            n = seq[i]
            seq[i] = n + 1
            clients[i].publish(topics[i], encode(Reading(ids[i], ts, v, unit, n)), qos=qos)
        self._readings += len(who)
        if self._echo:
            self._echo_readings(step, sent)

    def _fault_started(self, ev: FaultEvent) -> None:
        self._faults[str(ev.kind)] += 1
        sid = self.sensor_ids[ev.sensor]
        seconds = ev.readings * self.model.interval
        if ev.kind is FaultKind.CRASH:
            if not self._down[ev.sensor]:
                self._crash_now(ev.sensor)
            self._echo_line(
                f"[{sid}] Crash: connection dropped without DISCONNECT, back in {seconds:g} s "
                "<-- ANOMALY INJECTED!"
            )
        elif ev.kind is FaultKind.DROPOUT:
            self._echo_line(f"[{sid}] Dropout: silent for {seconds:g} s <-- ANOMALY INJECTED!")

    def _fault_ended(self, ev: FaultEvent) -> None:
        if ev.kind is FaultKind.CRASH:
            self._restart(ev.sensor)  # the label is written when it is back online
            return
        assert ev.end_k is not None
        self._label_k(ev.sensor, ev.kind, ev.start_k, ev.end_k)

    # ---- labels -----------------------------------------------------------------------
    def _label_k(self, i: int, kind: FaultKind, start_k: int, end_k: int) -> None:
        m = self.model
        t = np.array([m.time_of(i, start_k), m.time_of(i, end_k)])
        start, end = self._ts(t).tolist()
        self._label(i, kind, start, end)

    def _label(self, i: int, kind: FaultKind, start: float, end: float) -> None:
        if self._labels is not None:
            self._labels.write(Label(self.sensor_ids[i], str(kind), start, end))

    def _close_labels(self) -> None:
        """Label the faults still in progress, cut at the last reading (crash: now)."""
        if self.started_at is not None:
            for ev in self.model.active_faults():
                if ev.kind is not FaultKind.CRASH:
                    last = int(self.model.next_k[ev.sensor]) - 1
                    self._label_k(ev.sensor, ev.kind, ev.start_k, max(last, ev.start_k))
        now = time.time()
        for i, crashed_at in sorted(self._crashed_at.items()):
            self._label(i, FaultKind.CRASH, crashed_at, now)
        self._crashed_at.clear()
        if self._labels is not None:
            self._labels.close()

    # ---- console ----------------------------------------------------------------------
    def _say(self, line: str) -> None:
        if self._echo or self._summary:
            emit(line)

    def _echo_line(self, line: str) -> None:
        if self._echo:
            emit(line)

    def _echo_readings(self, step: Step, sent: IntArray) -> None:
        unit = f"°{self._unit}" if self._unit in ("C", "F") else f" {self._unit}"
        start_k = self.model.faults.start_k
        for j in sent.tolist():
            i = int(step.idx[j])
            line = f"[{self.sensor_ids[i]}] Sending: {step.values[j]:.1f}{unit}"
            kind = int(step.kinds[j])
            if kind == FaultKind.SPIKE:
                line += " <-- ANOMALY INJECTED!"
            elif kind:
                name = str(FaultKind(kind)).replace("_", " ")
                first = int(step.k[j]) == int(start_k[i])
                line += f" <-- ANOMALY INJECTED! ({name})" if first else f" <-- {name}"
            emit(line)

    def _print_summary(self, now: float) -> None:
        s = self.stats
        t_prev, n_prev = self._last_summary
        rate = (s.readings - n_prev) / max(now - t_prev, 1e-9)
        self._last_summary = (now, s.readings)
        self._next_summary = now + self._summary_every
        emit(
            f"[FLEET] {s.connected}/{s.sensors} connected | {rate:.0f} readings/s | "
            f"{s.faults} faults injected | {s.buffered} buffered | {s.dropped} dropped"
        )

    def _injection_target(self, inj: Injection) -> int:
        if inj.sensor is None:
            return 0
        if isinstance(inj.sensor, int):
            sid = self.settings.simulator.id_format.format(n=inj.sensor)
        else:
            sid = inj.sensor
        if sid not in self._index:
            first, last = self.sensor_ids[0], self.sensor_ids[-1]
            raise ConfigError(f"--inject: no sensor {sid!r} in the fleet ({first} … {last})")
        return self._index[sid]


def _reconnect_policies(broker: BrokerSettings, sensors: int) -> list[Backoff]:
    """The fleet's reconnect pauses: :data:`DELAY_STEPS` policies, sensor ``i`` takes
    ``i % DELAY_STEPS``.

    While the broker is down every connection retries on its own; with one fixed delay for
    all, 10,000 connections retry twice a second in step and all knock at once when the broker
    is back. Measured at 10,000 sensors after a 5 s outage (busy 2-core machine): 32 s to
    recover with 7 s scheduler stalls with one delay, 25 s with 2.5 s stalls with the first
    pauses spread over ``sensors / RECONNECTS_PER_S`` s. So a large fleet's policies start at
    ``broker.reconnect_delay`` plus a step of that spread, double after each failed attempt
    up to the longest first pause (so the longest wait once the broker is back stays what the
    spread made it), and draw each pause with :data:`RECONNECT_JITTER`, so the sensors that
    share a step do not retry in step either. A small fleet (under 100 sensors) keeps the
    fixed ``broker.reconnect_delay``.
    """
    base = broker.reconnect_delay
    spread = sensors / RECONNECTS_PER_S
    if spread < 0.1:
        return [Backoff.fixed(base)]
    cap = base + spread
    return [
        Backoff(min(cap, base + spread * j / (DELAY_STEPS - 1)), 2.0, cap, RECONNECT_JITTER)
        for j in range(DELAY_STEPS)
    ]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _drain(clients: Sequence[MqttClient], timeout: float) -> bool:
    """Wait until no client has anything unacknowledged (or ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(c.pending for c in clients):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _bounded(coros: Sequence[Coroutine[Any, Any, None]], slots: asyncio.Semaphore) -> None:
    async def one(c: Coroutine[Any, Any, None]) -> None:
        async with slots:
            await c

    await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


async def run_fleet(
    settings: Settings,
    *,
    injections: Sequence[Injection] = (),
    count: int | None = None,
    duration: float | None = None,
    verbose: bool = False,
    console: bool = True,
) -> FleetStats:
    """Run a fleet as ``mqtt-anomaly simulate`` does: until ``count``/``duration`` or
    SIGINT/SIGTERM, then stop cleanly (``offline``, drain, disconnect)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    fleet = Fleet(settings, injections=injections, console=console, verbose=verbose)
    starting = asyncio.create_task(fleet.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a broker refusal ends here
            await fleet.run(stop, count=count, duration=duration)
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
    finally:
        stopping.cancel()
        await fleet.stop(graceful=True)
        for sig in signals:
            loop.remove_signal_handler(sig)
    return fleet.stats

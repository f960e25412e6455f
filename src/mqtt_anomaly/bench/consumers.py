"""The two consumers the benchmark compares, each run in its own process.

- :func:`baseline_main`: a subscriber that only counts (see :func:`.rawmqtt.count_messages`);
- :func:`service_main`: the detector service as ``mqtt-anomaly detect`` runs it — settings
  from the user's configuration, default detectors, alerting, the history store, operator
  lines (sent to /dev/null here) — with a listener that notes progress and detections.

Both subscribe to the same filters (readings and status wildcards) at QoS 1.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .children import quiet_child, report_errors
from .sysinfo import TcpCounters, cpu_seconds, rss_bytes, tcp_counters


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """What a consumer process does: where, how many readings, and for the service how."""

    url: str
    workdir: str
    expected: int | None  # None: until the parent sends "stop"
    mark: int = 0  # readings counted as warm-up before the rate window opens
    idle: float = 5.0
    filters: tuple[str, ...] = ("factory/+/temperature", "factory/+/status")  # the baseline's
    store_url: str = "none://"  # or "sqlite": a fresh SQLite file in workdir
    config: str | None = None
    max_sensors: int | None = None
    profile: str | None = None  # record the service with py-spy into this file
    ack_after: str | None = None  # the service's service.ack_after; None: the configured one
    overrides: dict[str, Any] | None = None  # the payload workload's settings (payloads.py)


def baseline_main(conn: Connection, spec: ConsumerSpec) -> None:
    """The counting subscriber's process."""
    quiet_child(spec.workdir, "baseline")
    report_errors(conn, "baseline", lambda: _count(conn, spec))


def _count(conn: Connection, spec: ConsumerSpec) -> dict[str, Any]:
    from ..transport import codec
    from .rawmqtt import count_messages, open_client, subscribe

    sock = open_client(spec.url, f"bench-baseline-{os.getpid()}")
    subscribe(sock, spec.filters, 1)
    cpu0 = cpu_seconds()
    conn.send(("ready", {"pid": os.getpid()}))
    res = count_messages(sock, spec.expected or 1 << 62, mark=spec.mark, idle=spec.idle)
    cpu1 = cpu_seconds()
    sock.sendall(codec.disconnect())
    sock.close()
    return {
        "count": res.count,
        "t_first": res.t_first,
        "t_mark": res.t_mark,
        "count_mark": res.count_mark,
        "t_last": res.t_last,
        "cpu_s": cpu1 - cpu0,
        "rss": rss_bytes(),
    }


def service_main(conn: Connection, spec: ConsumerSpec) -> None:
    """The detector service's process."""
    quiet_child(spec.workdir, "service")
    report_errors(conn, "detector service", lambda: asyncio.run(_serve(conn, spec)))


class _Probe:
    """A service listener: progress (count, time, CPU at the warm-up mark) and detections."""

    def __init__(self, counters: Any, spec: ConsumerSpec) -> None:
        self.counters = counters
        self.expected = spec.expected
        self.mark = spec.mark
        self.t_first = self.t_mark = self.t_last = 0.0
        self.count_mark = 0
        self.cpu_mark = 0.0
        self.done = asyncio.Event()
        self.detections: dict[tuple[str, float], float] = {}
        self.batches = 0

    def __call__(self, out: Any) -> None:
        if out.alerts:
            wall = time.time()
            for a in out.alerts:
                if a.state == "raised" and a.reading_ts is not None:
                    self.detections.setdefault((a.sensor_id, a.reading_ts), wall - a.reading_ts)
        if not out.readings:
            return
        self.batches += 1
        now = time.monotonic()
        c = self.counters.processed
        if not self.t_first:
            self.t_first = now
        if not self.t_mark and c >= self.mark:
            self.t_mark, self.count_mark, self.cpu_mark = now, c, cpu_seconds()
        self.t_last = now
        if self.expected is not None and c >= self.expected:
            self.done.set()


def _socket_counters(service: Any) -> TcpCounters:
    """Byte counters of the service's MQTT connection."""
    try:
        return tcp_counters(service.client.socket)
    except (AttributeError, OSError, TypeError):
        return TcpCounters()


async def _serve(conn: Connection, spec: ConsumerSpec) -> dict[str, Any]:
    from ..config import load_settings
    from ..service import DetectorService
    from ..store import open_store

    pid = os.getpid()
    service_overrides: dict[str, Any] = {"state_dir": Path(spec.workdir) / f"state-{pid}"}
    if spec.max_sensors:
        service_overrides["max_sensors"] = spec.max_sensors
    if spec.ack_after:  # "journaled+fsync": journaled with service.fsync
        mode, _, fsync = spec.ack_after.partition("+")
        service_overrides["ack_after"] = mode
        if fsync:
            service_overrides["fsync"] = True
    store_url = spec.store_url
    if store_url == "sqlite":
        store_url = f"sqlite:///{Path(spec.workdir).resolve() / f'store-{pid}.db'}"
    settings = load_settings(
        Path(spec.config) if spec.config else None,
        {
            "broker": {"url": spec.url, "client_id": f"bench-detector-{pid}"},
            "store": {"url": store_url},
            "service": service_overrides,
            # the load injects spikes at 100/s across the fleet, a flood by design: every
            # alert is published one by one, so each one's latency is measured
            "alerts": {"flood_threshold": 0},
            **(spec.overrides or {}),
        },
    )
    loop = asyncio.get_running_loop()
    with open_store(settings.store.url, settings.store) as store:
        service = DetectorService(settings, store=store)
        probe = _Probe(service.pipeline.counters, spec)
        service.listeners.append(probe)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        if not ready.done():
            ready.cancel()
            raise TimeoutError("not connected and subscribed after 30 s")
        stop_cmd = asyncio.Event()

        def on_command() -> None:
            try:
                cmd = conn.recv()
            except EOFError:
                stop_cmd.set()
                return
            if cmd[0] == "snapshot":
                conn.send(("snapshot", _socket_counters(service)))
            else:
                stop_cmd.set()

        loop.add_reader(conn.fileno(), on_command)
        if spec.profile:
            from .profile import start

            if start(pid, Path(spec.profile)) is None:
                raise RuntimeError("py-spy not found")
            await asyncio.sleep(0.5)  # attached before the load starts
        cpu0 = cpu_seconds()
        tcp0 = _socket_counters(service)
        conn.send(("ready", {"pid": pid}))
        try:
            await _until_done(probe, stop_cmd, spec.idle)
            t_stop, cpu_stop = time.monotonic(), cpu_seconds()
            flushed = await asyncio.to_thread(store.flush, 60.0)
            t_flushed, cpu_flushed = time.monotonic(), cpu_seconds()
            rss = rss_bytes()
            stats = store.stats
            tcp = _socket_counters(service) - tcp0
        finally:
            loop.remove_reader(conn.fileno())
            stop.set()
            await task
    c = service.pipeline.counters
    return {
        "count": c.processed,
        "received": c.received,
        "dead_letters": c.dead_letters,
        "duplicates": c.duplicates,
        "alerts_raised": c.alerts_raised,
        "readings_per_batch": c.processed / max(probe.batches, 1),
        "t_first": probe.t_first,
        "t_mark": probe.t_mark,
        "count_mark": probe.count_mark,
        "t_last": probe.t_last,
        "cpu_s": cpu_flushed - cpu0,
        "cpu_window_s": cpu_stop - probe.cpu_mark if probe.t_mark else 0.0,
        "store_flush_s": t_flushed - t_stop,
        "store_flushed": flushed,
        "store_written": stats.written,
        "store_dropped": stats.dropped,
        "rss": rss,
        "tcp": tcp,
        "detections": [(s, ts, lat) for (s, ts), lat in probe.detections.items()],
    }


async def _until_done(probe: _Probe, stop_cmd: asyncio.Event, idle: float) -> None:
    """Until the expected count, a "stop" from the parent, or ``idle`` seconds without input
    after the first reading."""
    last, since = -1, time.monotonic()
    while not (probe.done.is_set() or stop_cmd.is_set()):
        await asyncio.sleep(0.05)
        c = probe.counters.processed
        if c != last:
            last, since = c, time.monotonic()
        elif c and probe.expected is not None and time.monotonic() - since > idle:
            return

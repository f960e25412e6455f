"""A Sparkplug B fleet: the simulator's sensors grouped into edge nodes (``--format sparkplug``).

Edge node ``k`` (``edge-01``, …) owns ``per_node`` sensors as the metrics of one device
(``asset-01``, …) in the group ``group``, each metric named by its sensor id with alias
``1..per_node``. Per MQTT session the node:

- connects with a clean session and its Last Will: NDEATH with the session's ``bdSeq``
  (QoS 1, not retained), the number the next NBIRTH carries too;
- publishes NBIRTH (``seq`` 0, ``bdSeq``, ``Node Control/Rebirth``) and DBIRTH (``seq`` 1,
  every metric's name, alias, unit ``engUnit`` and range ``engLow``/``engHigh``, value null);
- every ``interval`` one DDATA with the values of its metrics by alias, ``seq`` +1 (mod 256);
- answers an NCMD ``Node Control/Rebirth`` with NBIRTH and DBIRTH again (``seq`` from 0);
- on a clean stop publishes NDEATH and disconnects; :meth:`SparkplugFleet.crash` drops the
  connection instead (the broker publishes the will) and comes back with ``bdSeq`` + 1.

The values and faults are the sensor fleet's (:class:`~.model.FleetModel`, same seed, same
``--inject``); a sensor in a dropout or crash sends no value (the node stays up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Sequence

import numpy as np

from .._lifecycle import AsyncClosing
from ..config import Settings
from ..console import emit
from ..errors import ConfigError
from ..sparkplug import (
    DOUBLE,
    NAMESPACE,
    data,
    device_birth,
    is_rebirth_request,
    node_birth,
    node_death,
)
from ..transport.client import MqttClient, Will
from .faults import Injection
from .model import FleetModel

log = logging.getLogger(__name__)

DEFAULT_GROUP = "plant"
DEFAULT_PER_NODE = 4
RANGE = (0.0, 90.0)  # engLow/engHigh every metric's birth declares (°C)


class EdgeNode:
    """One edge node and its one device (see the module docstring)."""

    def __init__(self, fleet: SparkplugFleet, k: int, sensors: Sequence[int]) -> None:
        self.fleet = fleet
        self.node_id = f"edge-{k + 1:02d}"
        self.device = f"asset-{k + 1:02d}"
        self.sensors = list(sensors)  # fleet sensor indexes; metric j has alias j + 1
        self.names = [fleet.sensor_ids[i] for i in self.sensors]
        g = fleet.group
        self.topics = {
            kind: f"{NAMESPACE}/{g}/{kind}/{self.node_id}" for kind in ("NBIRTH", "NDEATH", "NCMD")
        }
        self.topics["DBIRTH"] = f"{NAMESPACE}/{g}/DBIRTH/{self.node_id}/{self.device}"
        self.topics["DDATA"] = f"{NAMESPACE}/{g}/DDATA/{self.node_id}/{self.device}"
        self.bdseq = 0
        self.seq = 0
        self.births = 0
        self.rebirths = 0
        self.down = False
        self.client = self._new_client()

    def _new_client(self) -> MqttClient:
        f = self.fleet
        return MqttClient(
            f.settings.broker,
            f"{f.settings.simulator.client_id_prefix}{f.group}-{self.node_id}",
            clean_session=True,
            will=Will(self.topics["NDEATH"], node_death(bdseq=self.bdseq), qos=1, retain=False),
            on_message=self._on_message,
            on_connect=self._on_connect,
            name=self.node_id,
        )

    async def connect(self, timeout: float | None) -> None:
        await self.client.connect(timeout=timeout)
        await self.client.subscribe([self.topics["NCMD"]], qos=1)

    def _on_connect(self, _session_present: bool) -> None:
        asyncio.get_running_loop().call_soon(self.birth)

    def birth(self) -> None:
        """NBIRTH then DBIRTH: ``seq`` starts again at 0."""
        if not self.client.connected:
            return
        now = time.time()
        publish, qos = self.client.publish, self.fleet.qos
        publish(self.topics["NBIRTH"], node_birth(bdseq=self.bdseq, seq=0, ts=now), qos=qos)
        unit = self.fleet.settings.simulator.unit
        metrics = [(name, j + 1, DOUBLE, None, unit) for j, name in enumerate(self.names)]
        ranges = dict.fromkeys(self.names, RANGE)
        payload = device_birth(seq=1, metrics=metrics, ts=now, ranges=ranges)
        publish(self.topics["DBIRTH"], payload, qos=qos)
        self.seq = 1
        self.births += 1

    def _on_message(self, topic: str, payload: bytes, _retain: bool) -> None:
        if topic == self.topics["NCMD"] and is_rebirth_request(payload):
            self.rebirths += 1
            self.birth()

    def send(self, values: Sequence[tuple[int, float]], ts: float) -> None:
        """One DDATA: ``values`` are ``(alias, value)``."""
        if self.down:
            return
        self.seq = (self.seq + 1) & 0xFF
        metrics = [(alias, DOUBLE, v) for alias, v in values]
        self.client.publish(
            self.topics["DDATA"], data(seq=self.seq, metrics=metrics, ts=ts), qos=self.fleet.qos
        )

    def crash(self) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the NDEATH will."""
        if self.down:
            return
        self.client.abort()
        self.down = True

    async def restart(self) -> None:
        """A new session: ``bdSeq`` + 1, births on connect."""
        self.bdseq = (self.bdseq + 1) & 0xFF
        self.client = self._new_client()
        self.down = False
        await self.connect(None)

    async def stop(self, graceful: bool) -> None:
        if self.down:
            return
        if graceful and self.client.connected:
            self.client.publish(self.topics["NDEATH"], node_death(bdseq=self.bdseq), qos=1)
            await self.client.drain(5.0)
            await self.client.disconnect()
        else:
            self.client.abort()


class SparkplugFleet(AsyncClosing):
    """``simulator.sensors`` sensors as Sparkplug edge nodes of ``per_node`` metrics each."""

    def __init__(
        self,
        settings: Settings,
        *,
        group: str = DEFAULT_GROUP,
        per_node: int = DEFAULT_PER_NODE,
        injections: Sequence[Injection] = (),
        console: bool = False,
    ) -> None:
        sim = settings.simulator
        n = sim.sensors
        if per_node < 1:
            raise ConfigError("--per-node must be at least 1")
        if not group or set(group) & set("/+#\x00"):
            raise ConfigError(f"--group: {group!r} is not one topic level")
        self.settings = settings
        self.group = group
        self.qos = settings.broker.qos
        self.seed = sim.seed if sim.seed is not None else secrets.randbelow(2**31)
        self.sensor_ids = [sim.id_format.format(n=i + 1) for i in range(n)]
        self.model = FleetModel(n, interval=sim.interval, seed=self.seed, rates=sim.faults)
        index = {sid: i for i, sid in enumerate(self.sensor_ids)}
        for inj in injections:
            self.model.inject(
                inj.kind,
                sensor=_target(inj, index, sim.id_format),
                at=inj.at,
                duration=inj.duration,
            )
        self.nodes = [
            EdgeNode(self, k, range(lo, min(lo + per_node, n)))
            for k, lo in enumerate(range(0, n, per_node))
        ]
        self._console = console
        self.messages = 0
        self.readings = 0
        self.started_at: float | None = None
        self._closed = False

    def sensor_of(self, i: int) -> str:
        """The id the host gives sensor ``i``: ``{group}/{node}/{device}/{metric}``."""
        node = self.nodes[i // len(self.nodes[0].sensors)]
        return f"{self.group}/{node.node_id}/{node.device}/{self.sensor_ids[i]}"

    async def start(self, timeout: float | None = None) -> None:
        await asyncio.gather(*(node.connect(timeout) for node in self.nodes))
        b = self.settings.broker
        self._say(
            f"[INFO] Connected to Broker at {b.address}: {len(self.nodes)} Sparkplug edge "
            f"nodes, {len(self.sensor_ids)} metrics, group {self.group!r}, seed {self.seed}"
        )

    async def run(self, stop: asyncio.Event | None = None, *, count: int | None = None) -> None:
        """One DDATA per node every ``interval`` until ``stop`` or ``count`` rounds."""
        loop = asyncio.get_running_loop()
        model = self.model
        every = np.arange(model.n, dtype=np.int64)
        self.started_at = self.started_at or time.time()
        t0 = loop.time()
        rounds = 0
        while (count is None or rounds < count) and not (stop is not None and stop.is_set()):
            step = model.step(every)
            values = step.values.tolist()
            sent = step.sent.tolist()
            ts = round(self.started_at + float(step.t.max()), 3)
            for node in self.nodes:
                batch = [(j + 1, values[i]) for j, i in enumerate(node.sensors) if sent[i]]
                if batch:
                    node.send(batch, ts)
                    self.messages += 1
                    self.readings += len(batch)
            rounds += 1
            delay = t0 + rounds * model.interval - loop.time()
            if delay > 0:
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await stop.wait()
            else:
                await asyncio.sleep(0)

    def crash(self, node: int) -> None:
        self.nodes[node].crash()

    async def restart(self, node: int) -> None:
        await self.nodes[node].restart()

    async def stop(self, graceful: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(node.stop(graceful) for node in self.nodes))
        self._say(f"[INFO] Stopped: {self.messages} DDATA messages, {self.readings} values")

    async def _exit(self, clean: bool) -> None:
        await self.stop(graceful=clean)

    def _say(self, line: str) -> None:
        if self._console:
            emit(line)


def _target(inj: Injection, index: dict[str, int], id_format: str) -> int:
    if inj.sensor is None:
        return 0
    sid = id_format.format(n=inj.sensor) if isinstance(inj.sensor, int) else inj.sensor
    if sid not in index:
        raise ConfigError(f"--inject: no sensor {sid!r} in the fleet")
    return index[sid]


async def run_sparkplug_fleet(
    settings: Settings,
    *,
    group: str = DEFAULT_GROUP,
    per_node: int = DEFAULT_PER_NODE,
    injections: Sequence[Injection] = (),
    count: int | None = None,
    duration: float | None = None,
) -> None:
    """``mqtt-anomaly simulate --format sparkplug``: until Ctrl-C, ``count`` or ``duration``."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    fleet = SparkplugFleet(
        settings, group=group, per_node=per_node, injections=injections, console=True
    )
    async with fleet:
        await fleet.run(stop, count=count)

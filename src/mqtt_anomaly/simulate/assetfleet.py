"""Simulated machines on the wire: ``mqtt-anomaly simulate --assets N``.

Each asset is one device: one MQTT connection (client id ``{client_id_prefix}{asset}``,
persistent session), a retained Last Will ``offline`` on ``factory/{asset}/status``,
``online`` on connect and ``offline`` on a clean stop. Every ``interval`` seconds it publishes
one reading per sensor on ``factory/{asset}/{sensor}`` (:data:`ASSET_TOPIC`)::

    {"sensor_id": "PUMP-01/flow", "ts": 1767225600.25, "value": 96.41, "unit": "m3/h", "seq": 7}

``sensor_id`` is ``{asset}/{sensor}`` (unique in the plant, as the ids the ``[mapping]`` rules
join from topic levels); ``seq`` is the asset's reading number, the same for all its sensors;
``ts`` the reading's scheduled time. The values come from an
:class:`~.assets.AssetModel` (correlated sensors, faults within the normal range); faults go to
the labels file one line per fault, for the whole asset, and with ``csv`` to one CSV file per
asset (:class:`~.plant.AssetCsv`). The schedule is absolute: reading ``k`` of every asset goes
out at ``t0 + k * interval`` plus the last asset's phase, never drifting.

:func:`record_offline` writes the same CSV and labels without a broker, as fast as the model
runs (``simulate --assets N --offline --count K``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from .._lifecycle import AsyncClosing
from ..config import Settings
from ..console import emit
from ..messages import Reading, encode
from ..transport.client import MqttClient, Will
from .assets import AssetFault, AssetInjection, AssetModel, AssetStep
from .labels import LabelWriter
from .plant import AssetCsv, fault_label

log = logging.getLogger(__name__)

ASSET_TOPIC = "factory/{asset}/{sensor}"
STATUS_TOPIC = "factory/{asset}/status"
SUMMARY_EVERY = 5.0  # s between two summary lines


class AssetRecorder:
    """The labels file and the CSV files of a model's run (either may be None)."""

    def __init__(
        self,
        model: AssetModel,
        started_at: float,
        *,
        labels: Path | None,
        csv_dir: Path | None,
        follow: bool = True,
    ) -> None:
        self.model = model
        self.started_at = started_at
        self.faults = 0
        self._labels = LabelWriter(labels) if labels is not None else None
        try:
            self._csv = AssetCsv(csv_dir, model, follow=follow) if csv_dir is not None else None
        except BaseException:
            if self._labels is not None:
                self._labels.close()
            raise

    def step(self) -> AssetStep:
        """The model's next reading, recorded."""
        step = self.model.step()
        for fault in step.ended:
            self._label(fault)
        self.faults += len(step.started)
        if self._csv is not None:
            self._csv.write(self.started_at + step.t, step.values, step.fault)
        return step

    def _label(self, fault: AssetFault) -> None:
        if self._labels is not None:
            self._labels.write(fault_label(self.model, fault, self.started_at))

    def close(self) -> None:
        """Label the faults still in progress (cut at the last reading) and close the files."""
        for fault in self.model.stop():
            self._label(fault)
        if self._labels is not None:
            self._labels.close()
        if self._csv is not None:
            self._csv.close()


def build_model(
    kind: str,
    n: int,
    *,
    interval: float,
    seed: int,
    rates: dict[str, float] | None,
    injections: Sequence[AssetInjection] = (),
) -> AssetModel:
    """The model of ``n`` assets of ``kind`` with the forced faults applied."""
    model = AssetModel(kind, n, interval=interval, seed=seed, rates=rates)
    for inj in injections:
        asset = model.asset_index(inj.asset)
        model.inject(inj.fault, asset=asset, at=inj.at, duration=inj.duration)
    return model


def record_offline(
    model: AssetModel,
    count: int,
    *,
    labels: Path | None,
    csv_dir: Path | None,
    started_at: float | None = None,
) -> int:
    """``count`` readings of every asset to the CSV and labels files, no broker, no waiting;
    returns the faults started. Time 0 is ``started_at`` (default: now, to the second)."""
    t0 = float(round(time.time())) if started_at is None else started_at
    recorder = AssetRecorder(model, t0, labels=labels, csv_dir=csv_dir, follow=False)
    try:
        for _ in range(count):
            recorder.step()
    finally:
        recorder.close()
    return recorder.faults


class AssetFleet(AsyncClosing):
    """The assets of ``model`` publishing to ``settings.broker`` (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        model: AssetModel,
        *,
        labels: Path | None = None,
        csv_dir: Path | None = None,
        console: bool = False,
    ) -> None:
        self.settings = settings
        self.model = model
        self._labels_path = labels
        self._csv_dir = csv_dir
        self._console = console
        self._qos = settings.broker.qos
        units = {s.name: s.unit for s in model.kind.sensors}
        self._topics = [
            [
                (ASSET_TOPIC.format(asset=a, sensor=s), f"{a}/{s}", units[s])
                for s in model.sensor_names
            ]
            for a in model.ids
        ]
        self._status = [STATUS_TOPIC.format(asset=a) for a in model.ids]
        prefix = settings.simulator.client_id_prefix
        self.clients = [
            MqttClient(
                settings.broker,
                f"{prefix}{a}",
                clean_session=False,
                will=Will(self._status[i], b"offline", qos=1, retain=True),
                on_connect=partial(self._online, i),
                buffer_size=max(1, settings.simulator.buffer_size // model.n),
                name=a,
            )
            for i, a in enumerate(model.ids)
        ]
        self.recorder: AssetRecorder | None = None
        self.started_at: float | None = None
        self.readings = 0  # sensor readings handed to MQTT
        self._mono0: float | None = None
        self._closed = False

    def _online(self, i: int, _session_present: bool) -> None:
        self.clients[i].publish(self._status[i], b"online", qos=1, retain=True)

    async def start(self, timeout: float | None = None) -> None:
        """Connect every asset (retrying while the broker is unreachable, until ``timeout``)."""
        await asyncio.gather(*(c.connect(timeout=timeout) for c in self.clients))
        m = self.model
        self._say(
            f"[INFO] Connected to Broker at {self.settings.broker.address}: {m.n} "
            f"{m.kind.name}s, {m.kind.k} sensors each, one reading every {m.interval:g} s, "
            f"seed {m.seed} (--seed {m.seed} repeats this run)"
        )

    async def run(
        self,
        stop: asyncio.Event | None = None,
        *,
        count: int | None = None,
        duration: float | None = None,
    ) -> int:
        """Publish until ``stop``, ``count`` readings per asset or ``duration`` seconds;
        returns the readings per asset published so far."""
        loop = asyncio.get_running_loop()
        if self._mono0 is None:
            self._mono0 = loop.time()
            self.started_at = time.time()
            self.recorder = AssetRecorder(
                self.model, self.started_at, labels=self._labels_path, csv_dir=self._csv_dir
            )
        assert self.recorder is not None
        stop = stop or asyncio.Event()
        m = self.model
        last_phase = float(m.phase[-1])
        first_k = m.k
        next_summary = loop.time() + SUMMARY_EVERY
        while not stop.is_set() and not self._closed:
            k = m.k
            if count is not None and k - first_k >= count:
                break
            if duration is not None and (k - first_k) * m.interval >= duration:
                break
            due = self._mono0 + k * m.interval + last_phase
            delay = due - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                if stop.is_set():
                    break
            self._publish(self.recorder.step())
            if self._console and loop.time() >= next_summary:
                next_summary = loop.time() + SUMMARY_EVERY
                self._summary()
        return m.k

    def _publish(self, step: AssetStep) -> None:
        assert self.started_at is not None
        for fault in step.started:
            self._say(
                f"[{self.model.ids[fault.asset]}] {fault.kind.replace('_', ' ')} "
                f"({', '.join(fault.sensors)}) <-- ANOMALY INJECTED!"
            )
        stamps = (self.started_at + step.t).round(3).tolist()
        qos = self._qos
        for client, topics, ts, row in zip(
            self.clients, self._topics, stamps, step.values.tolist(), strict=True
        ):
            for (topic, sid, unit), v in zip(topics, row, strict=True):
                client.publish(topic, encode(Reading(sid, ts, v, unit, step.k)), qos=qos)
        self.readings += len(stamps) * self.model.kind.k

    def _summary(self) -> None:
        connected = sum(1 for c in self.clients if c.connected)
        faults = self.recorder.faults if self.recorder is not None else 0
        emit(
            f"[ASSETS] {connected}/{self.model.n} connected | {self.readings} readings | "
            f"{faults} faults injected | {sum(c.stats.buffered for c in self.clients)} buffered"
        )

    def _say(self, line: str) -> None:
        if self._console:
            emit(line)

    async def stop(self, timeout: float = 10.0) -> None:
        """``offline`` from every asset, wait for the broker's acknowledgements, disconnect;
        the labels of faults in progress are written, the files closed."""
        if self._closed:
            return
        self._closed = True
        if self.recorder is not None:
            self.recorder.close()
        online = [i for i, c in enumerate(self.clients) if c.connected]
        for i in online:
            self.clients[i].publish(self._status[i], b"offline", qos=1, retain=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(self.clients[i].pending for i in online) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.gather(*(c.disconnect() for c in self.clients), return_exceptions=True)
        self._say(f"[INFO] Stopped: {self.readings} readings sent")

    async def _exit(self, clean: bool) -> None:
        await self.stop()


async def run_asset_fleet(
    settings: Settings,
    model: AssetModel,
    *,
    labels: Path | None,
    csv_dir: Path | None,
    count: int | None = None,
    duration: float | None = None,
) -> int:
    """``simulate --assets``: run until ``count``/``duration`` or SIGINT/SIGTERM, stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    fleet = AssetFleet(settings, model, labels=labels, csv_dir=csv_dir, console=True)
    try:
        starting = asyncio.create_task(fleet.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 0
        starting.result()
        return await fleet.run(stop, count=count, duration=duration)
    finally:
        await fleet.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)

"""The detector service: MQTT in → :class:`~mqtt_anomaly.pipeline.Pipeline` → sinks.

The MQTT connection (a :class:`~.transport.base.Transport`: :mod:`.transport.lean` in
production, given as ``transport=``) hands over every message of one network read as a batch,
so a burst costs one pipeline call, not one per message. Each batch's output goes to the sinks
(:mod:`.sinks`), one contract for all, in this order: the history store, Kafka, the console,
MQTT (alerts through the flood filter, flood events, retained health, dead letters), alert
routing to receivers (:mod:`.routing`, with ``[[routes]]``), any extra sinks given, and the
listeners (the dashboard, tests). The flood filter (:mod:`.floods`)
applies to the MQTT alert topic and the console only: the store, Kafka and the listeners get
every alert.

Readings are acknowledged to the broker by delivery rounds (:mod:`.delivery`) once the durable
sinks (the store, Kafka) hold them and the detector state that saw them is saved
(``service.ack_after = "durable"``), or right after processing (``"processed"``).

Shutdown (SIGINT/SIGTERM → ``stop``): stop taking messages, run a last delivery round, wait
for the broker to acknowledge what was published, disconnect, close the sinks (the store
flushes), save detector state. On start, the state dir is checked writable (else the service
refuses to start) and saved state is restored, so a restart does not relearn. The state file
is data only (:mod:`.statefile`); one that cannot be loaded is moved aside, never run or
overwritten.

:func:`run_service` is the composition root of ``mqtt-anomaly detect``: the store, Kafka, the
HTTP server and the service, started in that order and stopped in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ._lifecycle import AsyncClosing
from .config import Settings
from .delivery import DeliveryTracker
from .detectors.river_adapter import RiverDetector
from .errors import ConfigError, StateFileError
from .gates import Gates
from .journal import Journal, Redeliveries
from .liveconf import ConfigSource
from .maintenance import MaintenanceBook
from .messages import Alert
from .outbox import Outbox
from .pipeline import Output, Pipeline
from .reloading import Reloads
from .routing.sink import RoutingSink
from .shadow import ShadowRun
from .sinks.base import DurableSink, Sink
from .sinks.bridge import KafkaBridge
from .sinks.console import ConsoleSink
from .sinks.history import StoreSink
from .sinks.listeners import Listener, ListenerSink
from .sinks.mqtt import MqttSink
from .sparkplug import state_payload, state_topic
from .statefile import dump, load, load_or_create_key, move_aside, prepare_dir
from .swap import swap_detection
from .transport.codec import Will
from .transport.lean import Batch, LeanClient

if TYPE_CHECKING:
    from .floods import FloodFilter
    from .models.format import LoadedModel
    from .sinks.kafka import KafkaSink
    from .store.base import Store
    from .transport.base import Transport, TransportFactory

log = logging.getLogger(__name__)
STATE_FILE = "detector-state.mqas"
MAINTENANCE_FILE = "maintenance.mqas"  # windows added at run time, the gates' states
LEGACY_STATE_FILE = "detector-state.pkl"  # pickles: never loaded, moved aside
DEFAULT_CLIENT_ID = "mqtt-anomaly-detector"
__all__ = ["DetectorService", "Listener", "run_service", "save_state", "write_state"]


class DetectorService(AsyncClosing):
    """Subscribe, detect, alert. ``await service.run(stop_event)`` until ``stop_event`` is set,
    or ``async with service:`` (start on entry, clean stop on exit).

    ``store``, ``kafka``: the history store and the Kafka producer (their owner opens and
    closes them; the service wraps them as sinks). ``console``: operator lines on stdout.
    ``transport``: builds the MQTT connection (default :class:`~.transport.lean.LeanClient`;
    :meth:`~.transport.memory.MemoryBroker.transport` for one in process). ``sinks``: more
    sinks, written after MQTT and before the listeners.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        kafka: KafkaSink | None = None,
        console: bool = True,
        clock: Callable[[], float] = time.time,
        checkpoint_every: float = 60.0,
        dead_letter_rate: float = 100.0,
        shutdown_timeout: float = 10.0,
        transport: TransportFactory | None = None,
        sinks: Sequence[Sink] = (),
        model: LoadedModel | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        """The registry's current model (:mod:`.models`): the pipeline starts from its state
        unless the saved state continues it; ``settings`` already carry its configuration."""
        shared = next((f for f in settings.subscriptions if f.startswith("$share/")), None)
        if shared is not None:  # see docs/plant.md#mqtt-5
            raise ConfigError(
                f"topics.subscribe: {shared}: a shared subscription hands each message to one "
                "of several subscribers, and a detector must see every reading of its sensor"
            )
        self.pipeline = Pipeline(settings)
        self.store = store
        self.kafka = kafka
        self.console = console
        self.clock = clock
        self.checkpoint_every = checkpoint_every
        self.shutdown_timeout = shutdown_timeout
        mode = settings.service.ack_after
        tracked = mode != "processed"
        self.journaled = mode == "journaled"
        """Readings acknowledged once journaled (:mod:`.journal`), alerts through the outbox."""
        self.journal: Journal | None = None  # opened by restore()
        self.outbox: Outbox | None = None
        self._replay_from = (0, 0)  # the first journal and outbox segments the state lacks
        self._redelivered: Redeliveries | None = None  # the journal's tail, sent again
        connect: TransportFactory = transport if transport is not None else LeanClient
        self.client: Transport = connect(
            settings.broker,
            settings.broker.client_id or DEFAULT_CLIENT_ID,
            on_batch=self._on_batch,
            clock=clock,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            name="detector",
            hold_acks=mode == "durable",
        )
        b = settings.broker
        if (  # MQTT 5: user properties of the readings
            isinstance(self.client, LeanClient)
            and b.protocol == "5"
            and (b.unit_property or b.asset_property)
        ):
            self.client.on_properties = self.pipeline.note_properties
        self._state_ts = clock()  # the Sparkplug host's STATE birth and will carry this time
        if settings.sparkplug.enabled and isinstance(self.client, LeanClient):
            topic = state_topic(settings.sparkplug.host_id)
            self.client.will = Will(topic, state_payload(False, self._state_ts), qos=1)
        self._console = (
            ConsoleSink(verbose=settings.service.verbose, rate=settings.alerts.console_rate)
            if console
            else None
        )
        counters = self.pipeline.counters
        self.mqtt = MqttSink(
            self.client,
            settings,
            clock=clock,
            console=self._console,
            dead_letter_rate=dead_letter_rate,
            evicted_total=lambda: counters.sensors_evicted,
        )
        self._listeners = ListenerSink()
        chain: list[Sink] = []
        if store is not None:
            chain.append(StoreSink(store))
        if kafka is not None:
            chain.append(KafkaBridge(kafka))
        if self._console is not None:
            chain.append(self._console)
        chain.append(self.mqtt)
        tags_of, group_of = self.pipeline.tags.get, self.mqtt.floods.group_of
        self.maintenance = MaintenanceBook(settings.maintenance, tags_of=tags_of, group_of=group_of)
        """Maintenance windows: configured, and added at run time (REST API, dashboard)."""
        self.gates: Gates | None = None
        """Operating-state gates (``[[gates]]``): the pipeline scores no held sensor."""
        self._gate_changes = 0  # gate state changes saved
        if settings.gates:
            self.gates = Gates(settings.gates, tags_of=tags_of, group_of=group_of)
            self.pipeline.gate = self.gates.filter_round
        self.routing: RoutingSink | None = None
        """Alerts to people (``[[routes]]``), when routes are configured."""
        if settings.routes:
            self.routing = RoutingSink(
                settings.routes,
                settings.receivers,
                settings.service.state_dir,
                tags_of=tags_of,
                group_of=group_of,
                clock=clock,
            )
            chain.append(self.routing)
        chain += [*sinks, self._listeners]
        self.sinks: tuple[Sink, ...] = tuple(chain)
        """Every output, in the order each batch is written to them."""
        self._writes = tuple(sink.write for sink in self.sinks)
        self.tracker: DeliveryTracker | None = None
        if tracked:
            durable: list[DurableSink] = [s.durable for s in self.sinks if s.durable is not None]
            self.tracker = DeliveryTracker(
                self.client,
                durable,
                self._snapshot,
                self._save_round,
                min_interval=settings.service.ack_interval,
                kept="in the journal" if self.journaled else "unacknowledged at the broker",
            )
        self.shadow: ShadowRun | None = None
        """The candidate configuration scored beside the live one (``[shadow]``)."""
        if settings.shadow.enabled:
            self.shadow = self._new_shadow(settings)
            self.shadow.attach()
        self.reloads = Reloads(self)
        """Configuration reloads (SIGHUP, ``POST /api/reload``, the file watch)."""
        self._state_key: bytes | None = None
        self.ready = asyncio.Event()
        self.last_batch = 0  # messages in the last network read: large when behind
        self._connected_once = False
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def state_path(self) -> Path:
        return self.settings.service.state_dir / STATE_FILE

    @property
    def listeners(self) -> list[Listener]:
        """Callables given every batch's output, after every other sink (append to it)."""
        return self._listeners.listeners

    @property
    def floods(self) -> FloodFilter:
        """The flood filter in front of the MQTT alert topic and the console."""
        return self.mqtt.floods

    @property
    def dead_letters_suppressed(self) -> int:
        """Dead letters not republished (rate limit)."""
        return self.mqtt.dead_letters_suppressed

    # ---- intake ---------------------------------------------------------------------
    def _on_batch(self, batch: Batch) -> None:
        self.last_batch = len(batch)
        if self._redelivered is not None:  # the first reads after a restart
            batch = self._redelivered.drop(batch)
            if not self._redelivered.active:
                self._redelivered = None
            if not batch:
                return
        if self.journal is not None:  # before processing: the PUBACKs follow on return
            self.journal.append(batch)
            if self.outbox is not None:
                self.outbox.note_acks(self.client.acknowledged_mark())
        self._process(batch)
        if self.tracker is not None:
            self.tracker.touch()

    def _process(self, batch: Batch) -> None:
        """Score a batch (received or journaled) and emit what it raised."""
        gates = self.gates
        if gates is not None and gates.by_topic:  # a gate's state topic is not a reading
            batch = [m for m in batch if not gates.on_state(*m)]
        out = self.pipeline.process(batch)
        self._emit(out)
        if self.shadow is not None:  # the candidate's alerts: the shadow topic and store only
            self.shadow.after(out)

    def _on_connect(self, session_present: bool) -> None:
        sp = self.settings.sparkplug
        if sp.enabled:  # the host application is online (retained; the will says offline)
            self.client.publish(
                state_topic(sp.host_id), state_payload(True, self._state_ts), qos=1, retain=True
            )
        if self._connected_once:
            log.info("reconnected to broker %s", self.settings.broker.address)
            self._line(f"[INFO] Reconnected to Broker at {self.settings.broker.address}")
        self._connected_once = True

    def _on_disconnect(self) -> None:
        if self._connected_once and not self._stopping:
            self._line("[WARN] Connection to broker lost; reconnecting")

    # ---- sinks ------------------------------------------------------------------------
    def _emit(self, out: Output) -> None:
        """One batch's output to every sink, in order (alerts marked ``suppressed`` first,
        inside a maintenance window or while a gate holds their sensor)."""
        if out.alerts and (self.gates is not None or self.maintenance.windows):
            out.alerts = [self._suppress(a) for a in out.alerts]
        for write in self._writes:
            write(out)

    def _suppress(self, a: Alert) -> Alert:
        ts = a.reading_ts if a.reading_ts is not None else a.alert_ts
        why = self.maintenance.reason(a.sensor_id, ts)
        if not why and self.gates is not None:
            why = self.gates.reason(a.sensor_id, ts, a.alert_ts)
        return msgspec.structs.replace(a, suppressed=why) if why else a

    @property
    def maintenance_path(self) -> Path:
        return self.settings.service.state_dir / MAINTENANCE_FILE

    def save_maintenance(self) -> None:
        """Save the windows added at run time and the gates' states (atomically; a failure
        is logged)."""
        state = self.maintenance.state_dict()
        if self.gates is not None:
            state["gates"] = self.gates.state_dict()
            self._gate_changes = self.gates.changes
        try:
            save_state(self.maintenance_path, state, sync=False)
        except (OSError, StateFileError) as exc:
            log.error("could not save maintenance windows to %s: %s", self.maintenance_path, exc)

    def _restore_maintenance(self) -> None:
        path = self.maintenance_path
        try:
            state = load(path)
            loaded = self.maintenance.load_state_dict(state, self.clock())
            if self.gates is not None and "gates" in state:
                self.gates.load_state_dict(state["gates"])
        except FileNotFoundError:
            return
        except (StateFileError, ValueError, KeyError, TypeError) as exc:
            with contextlib.suppress(OSError):
                move_aside(path, "corrupt")
            log.warning("maintenance windows %s not loaded (%s)", path, " ".join(str(exc).split()))
            return
        log.info("restored %d maintenance windows from %s", loaded, path)

    def _line(self, text: str) -> None:
        if self._console is not None:
            self._console.line(text)

    # ---- state ----------------------------------------------------------------------
    def restore(self) -> None:
        """Check the state dir (:class:`StateFileError` when it cannot be written), take the
        state key, and load the saved state. A state file that cannot be loaded is moved aside
        to ``detector-state.mqas.corrupt-<UTC time>`` with one warning, and the service
        starts fresh; a pickled state of an older version is moved aside unread."""
        state_dir = self.settings.service.state_dir
        prepare_dir(state_dir)
        if self.journaled and self.journal is None:
            fsync = self.settings.service.fsync
            self.journal = Journal(state_dir / "journal", fsync=fsync)
            qos = self.settings.alerts.qos
            self.outbox = Outbox(state_dir / "outbox", self.client, fsync=fsync, qos=qos)
            if qos == 2 and isinstance(self.client, LeanClient):
                self.outbox.attach(self.client)
            self.mqtt.outbox = self.outbox
        key = self._state_key = load_or_create_key(state_dir)
        for det in self.pipeline.detectors:
            if isinstance(det, RiverDetector):
                det.state_key = key
        self._restore_maintenance()
        legacy = state_dir / LEGACY_STATE_FILE
        if legacy.exists():
            try:
                where = f"moved to {move_aside(legacy, 'unsafe')}"
            except OSError as err:
                where = f"left in place: {err.strerror or err}"
            log.warning("not loading pickled state %s (a pickle can run code), %s", legacy, where)
        path = self.state_path
        model = self.model
        try:
            state = load(path)
            if model is not None and state.get("model") != model.version:
                skipped = self._start_from_model(model, f"saved state {path} is not of it")
            else:
                skipped = self.pipeline.load_state_dict(state)
        except FileNotFoundError:
            if model is not None:
                self._start_from_model(model, "no saved state")
            return
        except StateFileError as exc:
            try:
                where = f"moved to {move_aside(path, 'corrupt')}"
            except OSError as err:
                where = f"and cannot be moved aside: {err.strerror or err}"
            why = " ".join(str(exc).split())
            log.warning("saved state %s not loaded (%s), %s: starting fresh", path, why, where)
            if model is not None and not self.pipeline.sensor_ids:
                self._start_from_model(model, "saved state unusable")
            return
        if skipped:
            log.warning("saved state of %s does not fit their configuration: relearning", skipped)
        shadow_state = state.get("shadow")
        continued = model is None or state.get("model") == model.version  # the same slots
        if self.shadow is not None and isinstance(shadow_state, dict) and continued:
            missed = self.shadow.scorer.load_state_dict(shadow_state)
            if missed:
                log.warning("saved state of shadow %s does not fit: relearning", missed)
        covered = state.get("journal"), state.get("outbox")
        if all(type(n) is int and n >= 0 for n in covered):
            self._replay_from = covered  # type: ignore[assignment]
        if model is not None and state.get("model") == model.version:
            log.info("model %s: continued from the saved state", model.version)
        log.info("restored state of %d sensors from %s", len(self.pipeline.sensor_ids), path)

    def _start_from_model(self, model: LoadedModel, why: str) -> list[str]:
        """Load the model's state into the (new) pipeline; the model was checked when loaded."""
        skipped = self.pipeline.load_state_dict(model.state)
        log.info(
            "model %s: starting from its state (%d sensors; %s)",
            model.version,
            len(self.pipeline.sensor_ids),
            why,
        )
        return skipped

    # ---- reload --------------------------------------------------------------------
    def _new_shadow(self, settings: Settings) -> ShadowRun:
        store = self.store

        def keep(a: Alert) -> None:
            if store is not None:
                store.add_alert(a)

        model = None
        version = settings.shadow.model
        if version is not None:  # a model of the registry as the candidate
            from .models.registry import Registry, registry_path

            reg = Registry(registry_path(settings))
            loaded = reg.load(reg.ref(version))  # ModelError: one line
            model = (loaded.settings(settings), loaded.state)
        return ShadowRun(
            self.pipeline,
            settings,
            # QoS 0: never a place of the in-flight window the operator's alerts need
            publish=lambda topic, payload: self.client.publish(topic, payload, qos=0),
            store=keep if store is not None else None,
            model=model,
        )

    def reload(self, settings: Settings, state: Mapping[str, Any] | None = None) -> str:
        """Swap in new detection settings (and a model's detector ``state``, by sensor id)
        between two batches: see :mod:`.swap`; what cannot change live must be equal (the
        caller, :class:`~.reloading.Reloads`, checks). Raises, changing nothing, when they
        cannot be built; returns what changed, as text."""
        old = self.settings
        shadow = self.shadow
        new_shadow = shadow if settings.shadow.enabled else None
        same = (old.shadow, old.detector, old.overrides) == (
            settings.shadow,
            settings.detector,
            settings.overrides,
        )
        if settings.shadow.enabled and (shadow is None or not same):
            new_shadow = self._new_shadow(settings)  # raises before anything changed
        swap = swap_detection(self.pipeline, settings, state)  # raises before it changes
        if new_shadow is not shadow:
            if shadow is not None:
                shadow.detach()
            if new_shadow is not None:
                new_shadow.attach()
        self.shadow = new_shadow
        if old.maintenance != settings.maintenance:
            added = self.maintenance.added
            self.maintenance = MaintenanceBook(
                settings.maintenance, tags_of=self.pipeline.tags.get, group_of=self.floods.group_of
            )
            for window in added.values():
                try:
                    self.maintenance.add(window)
                except ValueError:
                    log.warning("maintenance window %s added at run time is configured", window.id)
        if self._state_key is not None:
            for det in self.pipeline.detectors:
                if isinstance(det, RiverDetector):
                    det.state_key = self._state_key
        self.settings = settings
        if swap.out:
            self._emit(swap.out)
        if self.tracker is not None:
            self.tracker.touch()  # the next round saves the state of the new configuration
        text = swap.summary()
        if new_shadow is not shadow:
            text += f"; shadow {new_shadow.label if new_shadow is not None else 'off'}"
        return text

    def recommission_asset(self, asset_id: str) -> bool:
        """Start learning an asset again (after maintenance, say); False if there is none.
        The next delivery round saves the state that has forgotten its model."""
        return self.pipeline.assets.recommission(asset_id)

    def save(self) -> None:
        """Save detector state now (atomically: a crash mid-write keeps the old file)."""
        state = self._snapshot()
        if write_state(self.state_path, state):
            self._covered(state)

    def _snapshot(self) -> dict[str, Any]:
        """The detector state; journaled, with the first journal and outbox segments it does
        not cover (both start a new segment here)."""
        state = self._tagged(self.pipeline.state_dict())
        if self.shadow is not None:  # the candidate's, by the same slots
            state["shadow"] = self.shadow.scorer.state_dict()
        if self.journal is not None and self.outbox is not None:
            state["journal"] = self.journal.rotate()
            state["outbox"] = self.outbox.rotate()
        return state

    def _tagged(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with the version of the model it continues (none: no model)."""
        if self.model is not None:
            state["model"] = self.model.version
        return state

    def _covered(self, state: dict[str, Any]) -> None:
        """``state`` is saved: the journal and outbox segments before it are not needed."""
        if self.journal is not None and self.outbox is not None:
            self.journal.unneeded(state["journal"])
            self.outbox.unneeded(state["outbox"])

    def _save_round(self, state: dict[str, Any]) -> None:
        """Save the state of a delivery round (atomic for a crash of the process; the fsync
        is left to the checkpoint at shutdown, or done with ``service.fsync``)."""
        try:
            save_state(self.state_path, state, sync=self.settings.service.fsync)
        except StateFileError as exc:  # not data: the round acknowledges nothing
            raise OSError(str(exc)) from exc
        self._covered(state)

    def _replay(self) -> None:
        """At start: send again the alerts no run saw acknowledged, then process again the
        journaled readings the saved state does not cover (their alerts already sent are
        not sent again)."""
        if self.journal is None or self.outbox is None:
            return
        first_journal, first_outbox = self._replay_from
        self.journal.unneeded(first_journal)
        self.outbox.recover(first_outbox)
        n = 0
        tail: deque[tuple[str, bytes]] = deque(maxlen=Redeliveries.TAIL)
        for batch in self.journal.pending(first_journal):
            n += len(batch)
            tail.extend((topic, payload) for topic, payload, _ in batch)
            self._process(batch)
        if tail:
            self._redelivered = Redeliveries(list(tail))
        if n:
            log.info(
                "processed again %d journaled messages (%d alerts already sent not repeated)",
                n,
                self.outbox.suppressed,
            )

    # ---- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Restore state, start the sinks, connect and subscribe; then the periodic tasks
        (silence checks, delivery rounds or checkpoints) run until :meth:`close`."""
        self.restore()
        for sink in self.sinks:
            await sink.start()
        self._replay()
        s = self.settings
        await self.client.connect()
        self._line(f"[INFO] Connected to Broker at {s.broker.address}")
        filters = s.subscriptions
        await self.client.subscribe(filters, qos=max(1, s.broker.qos))
        self._line(f"[SYSTEM] Listening for topics: {', '.join(filters)}")
        self.ready.set()
        self._tasks = [asyncio.create_task(self._silence_loop())]
        if self.tracker is None:
            self._tasks.append(asyncio.create_task(self._checkpoint_loop()))
        else:  # every delivery round saves the state
            self.tracker.start()
            self.tracker.touch()  # a first checkpoint (covers what the journal replayed)

    async def close(self) -> None:
        """Stop the periodic tasks, then shut down cleanly (:meth:`shutdown`)."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception:  # a failed task must not keep the state from being saved
                log.exception("a service task had failed")
        await self.shutdown()

    async def _exit(self, clean: bool) -> None:
        await self.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and process until ``stop`` is set; then shut down cleanly."""
        async with self:
            await stop.wait()

    async def shutdown(self) -> None:
        """Finish in-flight work, disconnect, close the sinks, save state.

        Never raises, whatever is in flight: each step waits a bounded time. When the last
        delivery round did not complete, the state of the last complete round stays (it
        matches what the broker was told to forget)."""
        self._stopping = True
        complete = True
        if self.tracker is not None:
            self.client.stop_intake()
            try:
                complete = await self.tracker.close(self.shutdown_timeout)
            except Exception:
                log.exception("the last delivery round failed at shutdown")
                complete = False
        sp = self.settings.sparkplug
        if sp.enabled and self.client.connected:  # a clean stop says offline itself
            payload = state_payload(False, self._state_ts)
            self.client.publish(state_topic(sp.host_id), payload, qos=1, retain=True)
        try:
            if not await self.client.drain(timeout=5.0):
                log.warning(
                    "%d outgoing messages not acknowledged at shutdown", self.client.pending
                )
            await self.client.disconnect()
        except Exception:
            log.exception("disconnecting from the broker failed at shutdown")
        for sink in self.sinks:  # the store flushes (at most 10 s)
            try:
                await sink.close(10.0)
            except Exception:
                log.exception("closing the %s sink failed at shutdown", sink.name)
        if complete:  # else the last complete round's state matches what the broker forgot
            self.save()
        if self.gates is not None and self.gates.changes != self._gate_changes:
            self.save_maintenance()
        for log_file in (self.journal, self.outbox):
            if log_file is not None:
                log_file.close()

    async def _silence_loop(self) -> None:
        period = min(1.0, self.settings.detector.interval)
        while True:
            await asyncio.sleep(period)
            try:
                now = self.clock()
                out = self.pipeline.check_silence(now)
                if out:
                    self._emit(out)
                    if self.tracker is not None:
                        self.tracker.touch()
                for sink in self.sinks:  # the flood filter's checks, the console's summary
                    sink.tick(now)
                if self.gates is not None and self.gates.changes != self._gate_changes:
                    self.save_maintenance()  # a machine turned on or off
            except Exception:  # like a failing batch: must never stop the checks or the service
                log.exception("the periodic silence check failed")

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_every)
            await asyncio.to_thread(write_state, self.state_path, self._snapshot())


def save_state(path: Path, state: dict[str, Any], *, sync: bool = True) -> None:
    """Write ``state`` to ``path`` as a state file (:func:`.statefile.dump`: mode 0600, a
    temporary file and an atomic rename; ``sync``: and to the disk before returning).
    Raises OSError, or StateFileError for a state that is not plain data."""
    dump(path, state, sync=sync)


def write_state(path: Path, state: dict[str, Any]) -> bool:
    """:func:`save_state`, logging a failure instead of raising it (then False)."""
    try:
        save_state(path, state)
    except (OSError, StateFileError) as exc:
        log.error("could not save detector state to %s: %s", path, exc)
        return False
    return True


async def run_service(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    transport: TransportFactory | None = None,
    model: LoadedModel | None = None,
    source: ConfigSource | None = None,
) -> None:
    """Run the service as ``mqtt-anomaly detect`` does, until ``stop`` (or SIGINT/SIGTERM).

    The composition root: opens the history store, starts the Kafka producer (``kafka.url``),
    builds the service on them, serves HTTP (``http.listen``), starts the service; stops them
    in reverse order: the service (last delivery round, disconnect, store flush, state
    saved), the HTTP server, Kafka (at most 10 s to confirm what it holds), the store."""
    from .store import open_store
    from .web import http_server

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running: list[DetectorService] = []  # SIGHUP reloads it once started

    def on_hangup() -> None:
        if running and running[0].ready.is_set():
            running[0].reloads.from_source("sighup")
        else:  # not the default action (which ends the process)
            log.warning("SIGHUP while the service starts or stops: no reload")

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)
        stack.callback(running.clear)
        store = stack.enter_context(open_store(settings.store.url, settings.store))
        kafka = None
        if settings.kafka.url:
            from .sinks.kafka import KafkaSink

            tracked = settings.service.ack_after != "processed"
            kafka = KafkaSink(settings.kafka, tracking=tracked)
            stack.push_async_callback(asyncio.to_thread, kafka.close, 10.0)
        service = DetectorService(
            settings, store=store, kafka=kafka, transport=transport, model=model
        )
        service.reloads = Reloads(service, source)
        await stack.enter_async_context(http_server(service, settings.http))
        await stack.enter_async_context(service)
        running.append(service)
        stack.callback(running.clear)  # first thing on the way out: no reload while stopping
        watch = settings.service.watch_config
        if watch > 0 and source is not None:  # the file and the model registry
            task = asyncio.create_task(service.reloads.watch(watch))
            stack.callback(task.cancel)
        await stop.wait()

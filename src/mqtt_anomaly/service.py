"""The detector service: MQTT in → :class:`~mqtt_anomaly.pipeline.Pipeline` → sinks.

The MQTT connection (:mod:`.transport.lean`) hands over every message of one network read
as a batch, so a burst costs one pipeline call, not one per message. Sinks: alerts and
retained health published back over MQTT (QoS 1), dead letters to the dead-letter topic,
readings and alerts to the history store and to Kafka, operator lines on the console, and any
listeners (the dashboard, tests). Alerts reach the MQTT alert topic and the console through
the flood filter (:mod:`.floods`): a flood of one kind from one group is one aggregated alert
on ``topics.floods``; the store, Kafka and the listeners get every alert.

Readings are acknowledged to the broker by delivery rounds (:mod:`.delivery`) once the store
and Kafka hold them and the detector state that saw them is saved (``service.ack_after =
"durable"``), or right after processing (``"processed"``).

Shutdown (SIGINT/SIGTERM → ``stop``): stop taking messages, run a last delivery round, wait
for the broker to acknowledge what was published, disconnect, flush the store, save detector
state. On start, the state dir is checked writable (else the service refuses to start) and
saved state is restored, so a restart does not relearn. The state file is data only
(:mod:`.statefile`); one that cannot be loaded is moved aside, never run or overwritten.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings
from .console import LineBudget, RateLimitedLog, emit
from .delivery import DeliveryTracker, DurableSink
from .detectors.river_adapter import RiverDetector
from .errors import StateFileError
from .floods import FloodEvent, FloodFilter
from .messages import Alert, encode
from .pipeline import Output, Pipeline
from .statefile import dump, load, load_or_create_key, move_aside, prepare_dir
from .topics import TopicTemplate
from .transport.lean import Batch, LeanClient

if TYPE_CHECKING:
    from .sinks.kafka import KafkaSink
    from .store.base import Store

log = logging.getLogger(__name__)
STATE_FILE = "detector-state.mqas"
LEGACY_STATE_FILE = "detector-state.pkl"  # pickles: never loaded, moved aside
DEFAULT_CLIENT_ID = "mqtt-anomaly-detector"
Listener = Callable[[Output], None]


class DetectorService:
    """Subscribe, detect, alert. ``await service.run(stop_event)`` until ``stop_event`` is set."""

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
    ) -> None:
        self.settings = settings
        self.pipeline = Pipeline(settings)
        self.store = store
        self.kafka = kafka
        self.console = console
        self.clock = clock
        self.checkpoint_every = checkpoint_every
        self.shutdown_timeout = shutdown_timeout
        self.listeners: list[Listener] = []
        tracked = settings.service.ack_after == "durable"
        self.client = LeanClient(
            settings.broker,
            settings.broker.client_id or DEFAULT_CLIENT_ID,
            on_batch=self._on_batch,
            clock=clock,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            name="detector",
            hold_acks=tracked,
        )
        self.tracker: DeliveryTracker | None = None
        if tracked:
            sinks: list[DurableSink] = [s for s in (store, kafka) if isinstance(s, DurableSink)]
            self.tracker = DeliveryTracker(
                self.client,
                sinks,
                self.pipeline.state_dict,
                self._save_round,
                min_interval=settings.service.ack_interval,
            )
        self.ready = asyncio.Event()
        self._alerts_topic = TopicTemplate(settings.topics.alerts)
        self.floods = FloodFilter(settings.alerts, settings.topics.readings)
        self._console_budget = LineBudget(settings.alerts.console_rate)
        self._health_topic = TopicTemplate(settings.topics.health)
        self._ratelog = RateLimitedLog(log)
        self._dl_budget = dead_letter_rate
        self._dl_rate = dead_letter_rate
        self._dl_refill = time.monotonic()
        self.dead_letters_suppressed = 0
        self.last_batch = 0  # messages in the last network read: large when behind
        self._connected_once = False
        self._stopping = False

    @property
    def state_path(self) -> Path:
        return self.settings.service.state_dir / STATE_FILE

    # ---- intake ---------------------------------------------------------------------
    def _on_batch(self, batch: Batch) -> None:
        self.last_batch = len(batch)
        self._emit(self.pipeline.process(batch))
        if self.tracker is not None:
            self.tracker.touch()

    def _on_connect(self, session_present: bool) -> None:
        if self._connected_once:
            log.info("reconnected to broker %s", self.settings.broker.address)
            self._line(f"[INFO] Reconnected to Broker at {self.settings.broker.address}")
        self._connected_once = True

    def _on_disconnect(self) -> None:
        if self._connected_once and not self._stopping:
            self._line("[WARN] Connection to broker lost; reconnecting")

    # ---- sinks ------------------------------------------------------------------------
    def _emit(self, out: Output) -> None:
        client = self.client
        if self.store is not None and out.readings:
            rs = out.readings
            self.store.add_readings(
                [r.sensor_id for r in rs],
                [r.ts for r in rs],
                [r.value for r in rs],
                [r.seq for r in rs],
            )
        if self.kafka is not None:
            self.kafka.send(out)
        if self.settings.service.verbose and self.console:
            for r in out.readings:
                emit(f"[DATA] Received {r.value:.1f}°{r.unit} from {r.sensor_id}")
        if out.alerts:
            self._alerts(out.alerts)
        if out.evicted:  # before health: an id evicted and back in one batch keeps its new
            self._evicted(out.evicted)
        for sid, state in out.health:
            client.publish(self._health_topic.format(sid), state.encode(), qos=1, retain=True)
        if out.dead:
            self._dead_letters(out)
        for listener in self.listeners:
            listener(out)

    def _alerts(self, alerts: list[Alert]) -> None:
        """Every alert to the store; to MQTT and the console one by one unless in a flood
        (:mod:`.floods`), whose aggregated events go to ``topics.floods``."""
        if self.store is not None:
            for alert in alerts:
                self.store.add_alert(alert)
        shown, floods = self.floods.feed(alerts, self.clock())
        self._publish_alerts(shown, floods)

    def _publish_alerts(self, shown: list[Alert], floods: list[FloodEvent]) -> None:
        publish, topic = self.client.publish, self._alerts_topic
        for alert in shown:
            publish(topic.format(alert.sensor_id), encode(alert), qos=1)
        if self.console:
            allow = self._console_budget.allow
            for alert in shown:
                if allow():
                    self._print_alert(alert)
        for event in floods:
            publish(self.settings.topics.floods, encode(event), qos=1)
        lines = self.floods.lines
        while lines:
            self._line(lines.pop(0))

    def _evicted(self, evicted: list[str]) -> None:
        """Clear the retained health of sensors that lost their slot; one log line a burst."""
        for sid in evicted:
            self.client.publish(self._health_topic.format(sid), b"", qos=1, retain=True)
        s = self.settings.service
        self._ratelog.info(
            "evicted",
            "sensor table full (service.max_sensors = %d): forgot %d sensor(s) silent for over "
            "service.evict_after = %gs, e.g. %s (%d in all)",
            s.max_sensors,
            len(evicted),
            s.evict_after,
            evicted[0],
            self.pipeline.counters.sensors_evicted,
        )

    def _dead_letters(self, out: Output) -> None:
        now = time.monotonic()
        self._dl_budget = min(
            self._dl_rate, self._dl_budget + (now - self._dl_refill) * self._dl_rate
        )
        self._dl_refill = now
        topic = self.settings.topics.deadletter
        for d in out.dead:
            self._ratelog.warning(
                d.reason, "rejected message on %s: %s %s", d.topic, d.reason, d.detail
            )
            if self._dl_budget >= 1:
                self._dl_budget -= 1
                self.client.publish(topic, encode(d), qos=1)
            else:
                self.dead_letters_suppressed += 1

    def _print_alert(self, a: Alert) -> None:
        value = f"{a.value:.1f}°C" if a.value is not None else ""
        if a.state == "cleared":
            self._line(f"[CLEAR] {a.sensor_id} {a.detector} alert cleared {value}".rstrip())
        elif a.detector == "offline":
            self._line(f"[ALERT] 🔌 {a.sensor_id} OFFLINE (Last Will)")
        elif a.detector == "silence":
            self._line(f"[ALERT] ⏱️ {a.sensor_id} SILENT: {a.message}")
        elif a.severity == "critical":
            self._line(
                f"[ALERT] 🚨 CRITICAL ANOMALY DETECTED: {value}! ({a.sensor_id}, {a.detector})"
            )
        else:
            self._line(f"[ALERT] ⚠️ WARNING: anomaly on {a.sensor_id}: {value} ({a.detector})")

    def _line(self, text: str) -> None:
        if self.console:
            emit(text)

    # ---- state ----------------------------------------------------------------------
    def restore(self) -> None:
        """Check the state dir (:class:`StateFileError` when it cannot be written), take the
        state key, and load the saved state. A state file that cannot be loaded is moved aside
        to ``detector-state.mqas.corrupt-<UTC time>`` with one warning, and the service
        starts fresh; a pickled state of an older version is moved aside unread."""
        state_dir = self.settings.service.state_dir
        prepare_dir(state_dir)
        key = load_or_create_key(state_dir)
        for det in self.pipeline.detectors:
            if isinstance(det, RiverDetector):
                det.state_key = key
        legacy = state_dir / LEGACY_STATE_FILE
        if legacy.exists():
            try:
                where = f"moved to {move_aside(legacy, 'unsafe')}"
            except OSError as err:
                where = f"left in place: {err.strerror or err}"
            log.warning("not loading pickled state %s (a pickle can run code), %s", legacy, where)
        path = self.state_path
        try:
            skipped = self.pipeline.load_state_dict(load(path))
        except FileNotFoundError:
            return
        except StateFileError as exc:
            try:
                where = f"moved to {move_aside(path, 'corrupt')}"
            except OSError as err:
                where = f"and cannot be moved aside: {err.strerror or err}"
            why = " ".join(str(exc).split())
            log.warning("saved state %s not loaded (%s), %s: starting fresh", path, why, where)
            return
        if skipped:
            log.warning("saved state of %s does not fit their configuration: relearning", skipped)
        log.info("restored state of %d sensors from %s", len(self.pipeline.sensor_ids), path)

    def save(self) -> None:
        """Save detector state now (atomically: a crash mid-write keeps the old file)."""
        write_state(self.state_path, self.pipeline.state_dict())

    def _save_round(self, state: dict[str, Any]) -> None:
        """Save the state of a delivery round (atomic for a crash of the process; the fsync
        is left to the checkpoint at shutdown)."""
        try:
            save_state(self.state_path, state, sync=False)
        except StateFileError as exc:  # not data: the round acknowledges nothing
            raise OSError(str(exc)) from None

    # ---- lifecycle ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and process until ``stop`` is set; then shut down cleanly."""
        self.restore()
        s = self.settings
        await self.client.connect()
        self._line(f"[INFO] Connected to Broker at {s.broker.address}")
        filters = s.topics.filters
        await self.client.subscribe(filters, qos=max(1, s.broker.qos))
        self._line(f"[SYSTEM] Listening for topics: {', '.join(filters)}")
        self.ready.set()
        tasks = [asyncio.create_task(self._silence_loop())]
        if self.tracker is None:
            tasks.append(asyncio.create_task(self._checkpoint_loop()))
        else:  # every delivery round saves the state
            self.tracker.start()
        try:
            await stop.wait()
        finally:
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

    async def shutdown(self) -> None:
        """Finish in-flight work, flush, save state, disconnect.

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
        try:
            if not await self.client.drain(timeout=5.0):
                log.warning(
                    "%d outgoing messages not acknowledged at shutdown", self.client.pending
                )
            await self.client.disconnect()
        except Exception:
            log.exception("disconnecting from the broker failed at shutdown")
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.flush, 10.0)
            except Exception:
                log.exception("flushing the store failed at shutdown")
        if complete:  # else the last complete round's state matches what the broker forgot
            self.save()

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
                self._publish_alerts(*self.floods.tick(now))
                if self.console and (more := self._console_budget.summary()):
                    self._line(more)
            except Exception:  # like a failing batch: must never stop the checks or the service
                log.exception("the periodic silence check failed")

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_every)
            await asyncio.to_thread(write_state, self.state_path, self.pipeline.state_dict())


def save_state(path: Path, state: dict[str, Any], *, sync: bool = True) -> None:
    """Write ``state`` to ``path`` as a state file (:func:`.statefile.dump`: mode 0600, a
    temporary file and an atomic rename; ``sync``: and to the disk before returning).
    Raises OSError, or StateFileError for a state that is not plain data."""
    dump(path, state, sync=sync)


def write_state(path: Path, state: dict[str, Any]) -> None:
    """:func:`save_state`, logging a failure instead of raising it."""
    try:
        save_state(path, state)
    except (OSError, StateFileError) as exc:
        log.error("could not save detector state to %s: %s", path, exc)


async def run_service(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the service as ``mqtt-anomaly detect`` does: store, signals, clean stop."""
    from .store import open_store

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from .web import http_server

    with open_store(settings.store.url, settings.store) as store:
        kafka = None
        if settings.kafka.url:
            from .sinks.kafka import KafkaSink

            tracked = settings.service.ack_after == "durable"
            kafka = KafkaSink(settings.kafka, tracking=tracked)
        try:
            service = DetectorService(settings, store=store, kafka=kafka)
            async with http_server(service, settings.http):  # nothing unless http.listen is set
                await service.run(stop)
        finally:
            if kafka is not None:
                await asyncio.to_thread(kafka.close, 10.0)

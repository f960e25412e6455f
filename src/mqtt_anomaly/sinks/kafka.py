"""The Kafka sink: readings, alerts and health, bridged from MQTT to Apache Kafka topics.

:class:`KafkaSink` is a :class:`~mqtt_anomaly.delivery.DurableSink` named ``kafka``. The
service hands it every batch's :class:`~mqtt_anomaly.pipeline.Output`; it never waits for
Kafka on the caller's thread. ``docs/kafka.md`` is the operator's guide.

Messages
    One Kafka message per reading (``readings_topic``), alert event (``alerts_topic``) and
    health change (``health_topic``); an empty topic name turns that kind off. The key is the
    sensor id (UTF-8), so all messages of one sensor land in one partition, in order. The
    value is what the service publishes over MQTT: the JSON of the
    :class:`~mqtt_anomaly.messages.Reading` or :class:`~mqtt_anomaly.messages.Alert`, and
    for health the bare state (``ok``, ``anomalous``, ``offline``, ``silent``). The message
    timestamp is the reading's ``ts`` (an alert's ``alert_ts``, a health change's send
    time) in milliseconds. An alert message also carries its id (``Alert.id``) in an ``id``
    header, so a consumer can drop an alert it has already seen (after a crash of the
    service, an alert may reach Kafka twice).

The producer
    confluent-kafka (librdkafka) with ``enable.idempotence``, ``acks=all`` and
    ``message.timeout.ms=0``: a message is retried until Kafka takes it, so an unreachable
    Kafka delays messages and never drops them.

Tickets and the buffer
    Every message accepted takes a ticket (a running count) and its copy is kept until Kafka
    confirms it. :meth:`KafkaSink.mark` is the latest ticket; :meth:`KafkaSink.wait_confirmed`
    returns once every message up to a ticket is confirmed (confirmations arrive out of order
    across partitions: the *lowest unconfirmed* ticket decides; the mark is the shared
    :class:`~mqtt_anomaly.writebehind.Confirmations`). ``backlog`` counts the kept
    copies; ``backlog_limit`` is ``kafka.max_buffered``. Past the limit, or when
    librdkafka's own queue is full, a sink made with ``tracking=False`` drops what does not
    fit (``stats.dropped``, one log line per 10 s at most); with ``tracking=True`` it never
    drops: the message waits in the sink and the background thread hands it to librdkafka
    when there is room (the service stops reading MQTT while the backlog is above the limit).

Recovery
    The background thread serves librdkafka's callbacks (``poll``), hands waiting messages
    over, and watches the producer. A fatal producer error, or an idempotent producer that
    bumps its epoch again and again without a single delivery (what librdkafka does against
    a broker that restarted without its data and does not know the producer id any more),
    makes it build a new producer and produce again *every unconfirmed message*, in ticket
    order; rebuilds (and attempts that fail) are spaced by the pauses of
    :data:`REBUILD_RETRY` (0.5 s doubling to 30 s, reset by a confirmation). Messages Kafka
    had stored but not yet confirmed are then stored twice: delivery is at-least-once,
    duplicates are told apart by ``(sensor_id, seq, ts)``.

Per message, the caller's thread pays for the JSON encoding, one dict insert and
librdkafka's ``produce``; the background thread for one delivery callback.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._lifecycle import Closing
from ..config import KafkaSettings
from ..console import RateLimitedLog
from ..errors import ConfigError, MqttAnomalyError, SinkError
from ..messages import encode
from ..retry import Backoff
from ..writebehind import Confirmations

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message, Producer

    from ..pipeline import Output

log = logging.getLogger(__name__)

Kept = tuple[str, bytes, bytes, int, list[tuple[str, str | bytes | None]] | None]
"""A message kept until confirmed: topic, key, value, timestamp (ms), headers (an alert's
``id``)."""

STATS_INTERVAL_MS: Final = 1000
DRAIN_CHUNK: Final = 2000  # waiting messages handed over per lock hold
STUCK_EPOCH_BUMPS: Final = 3  # epoch bumps without a delivery that mean "stuck"
STUCK_AFTER: Final = 2.0  # ... and for at least this long (seconds)
REBUILD_RETRY: Final = Backoff(initial=0.5, factor=2.0, max=30.0)
"""The pause before the next producer rebuild (reset by a confirmation)."""
THREAD_ERROR_PAUSE: Final = Backoff(initial=0.1, factor=1.0, max=0.1)
"""The background thread's pause after an unexpected error (fixed)."""
_TROUBLE_LOG_PERIOD: Final = 30.0  # at most one "unreachable" line (and its "again") per period
_UNBOUNDED: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class KafkaStats:
    """A snapshot of the sink's counters.

    ``produced`` counts messages accepted (each took a ticket), ``delivered`` those Kafka
    confirmed, ``backlog`` those accepted and not yet confirmed (``waiting`` of them not yet
    handed to librdkafka). ``dropped`` were never accepted (buffer full with
    ``tracking=False``, or the sink closed); ``refused`` were accepted but refused by Kafka as
    invalid (e.g. too large) and not retried. ``errors`` counts failed delivery reports and
    client errors (each retried); ``recoveries`` counts producers rebuilt after a fatal or
    stuck state. ``connected`` is True while a broker connection is up (librdkafka's
    statistics, once a second) and no delivery is overdue.
    """

    produced: int = 0
    delivered: int = 0
    dropped: int = 0
    refused: int = 0
    errors: int = 0
    recoveries: int = 0
    backlog: int = 0
    waiting: int = 0
    connected: bool = False
    last_error: str | None = None


def _client() -> ModuleType:
    try:
        import confluent_kafka
    except ImportError as exc:
        raise ConfigError(
            "kafka.url is set but the Kafka client is not installed: "
            "pip install 'mqtt-anomaly[kafka]'"
        ) from exc
    return confluent_kafka


def producer_config(settings: KafkaSettings) -> dict[str, str | int | float | bool]:
    """librdkafka settings for ``settings``: delivery guarantee, batching, TLS and SASL, then
    ``settings.options`` (which may not touch the guarantee: see ``KAFKA_RESERVED_OPTIONS``).

    Reads the SASL password file, so it raises :class:`ConfigError` when that fails.
    """
    if not settings.enabled:
        raise ConfigError("kafka.url: empty (the Kafka sink is off)")
    conf: dict[str, str | int | float | bool] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": 0,  # retry until Kafka takes it: delay, never drop
        "compression.type": settings.compression,
        "linger.ms": settings.linger_ms,
        "batch.size": settings.batch_bytes,
        "queue.buffering.max.messages": max(settings.max_buffered, 1000),
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 2000,
    }
    conf.update(security_config(settings))
    for key, value in settings.options.items():
        conf[key] = ("true" if value else "false") if isinstance(value, bool) else value
    return conf


def security_config(settings: KafkaSettings, *, tls: bool | None = None) -> dict[str, str]:
    """librdkafka's TLS and SASL settings for ``settings`` (shared by every Kafka client of
    ours); ``tls`` overrides what the URL's scheme says. Reads the SASL password file."""
    conf: dict[str, str] = {}
    sasl = settings.sasl_mechanism is not None
    if settings.tls if tls is None else tls:
        conf["security.protocol"] = "SASL_SSL" if sasl else "SSL"
        if settings.ca_file is not None:
            conf["ssl.ca.location"] = str(settings.ca_file)
        if settings.cert_file is not None:
            conf["ssl.certificate.location"] = str(settings.cert_file)
        if settings.key_file is not None:
            conf["ssl.key.location"] = str(settings.key_file)
    else:
        conf["security.protocol"] = "SASL_PLAINTEXT" if sasl else "PLAINTEXT"
    if settings.sasl_mechanism is not None:
        conf["sasl.mechanisms"] = settings.sasl_mechanism
        conf["sasl.username"] = settings.sasl_username or ""
        conf["sasl.password"] = settings.secret_password() or ""
    return conf


def kafka_error(exc: BaseException, *, config: bool = False) -> MqttAnomalyError:
    """The one place confluent-kafka's errors become the package's; raise it ``from exc``.

    ``config``: the error came from building a producer out of the settings, so it is a
    :class:`ConfigError` (a bad option); otherwise a :class:`SinkError`. The message is
    librdkafka's own text of the error, after ``kafka:``.
    """
    err: Any = exc.args[0] if exc.args else None
    text = str(err.str()) if callable(getattr(err, "str", None)) else str(exc)
    return ConfigError(f"kafka: {text}") if config else SinkError(f"kafka: {text}")


class _ClientLog:
    """librdkafka's own log lines, at DEBUG: the sink logs the operator's lines itself."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def log(self, level: int, msg: str, *args: object) -> None:
        self.logger.log(logging.WARNING if level >= logging.CRITICAL else logging.DEBUG, msg, *args)


class KafkaSink(Closing):
    """Readings, alerts and health to Kafka (see the module docstring).

    ``tracking=True`` when the service acknowledges MQTT messages only after Kafka has them
    (:meth:`wait_confirmed`): nothing is ever dropped, the backlog may pass its limit and the
    service applies back-pressure. ``tracking=False`` when Kafka is a best-effort copy: what
    does not fit is dropped and counted. ``slow_after``: seconds without a confirmation, while
    messages wait, before the sink reports Kafka unreachable or slow.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        tracking: bool = False,
        clock: Callable[[], float] = time.time,
        slow_after: float = 5.0,
    ) -> None:
        ck = _client()
        self.settings = settings
        self.tracking = tracking
        self._clock = clock
        self._slow_after = slow_after
        self._limit = settings.max_buffered
        self._topics = (settings.readings_topic, settings.alerts_topic, settings.health_topic)
        self._ck = ck
        err = ck.KafkaError
        self._ignored_codes = frozenset({err._PURGE_QUEUE, err._PURGE_INFLIGHT, err._FATAL})
        self._refused_codes = frozenset(
            {
                err.MSG_SIZE_TOO_LARGE,
                err.INVALID_MSG,
                err.INVALID_MSG_SIZE,
                err.INVALID_RECORD,
                err.INVALID_TIMESTAMP,
                err.RECORD_LIST_TOO_LARGE,
                err._INVALID_ARG,
                err._BAD_MSG,
            }
        )
        self._rl = RateLimitedLog(log, period=10.0)
        self._client_log = _ClientLog(logging.getLogger(f"{__name__}.librdkafka"))
        self._conf: dict[str, Any] = {
            **producer_config(settings),
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "error_cb": self._on_error,
            "stats_cb": self._on_stats,
            "logger": self._client_log,
        }

        self._lock = threading.Lock()  # send() and the thread's hand-over / producer swap
        self._pending: dict[int, Kept] = {}  # ticket → copy, insertion (= ticket) order
        self._waiting: deque[int] = deque()  # tickets not yet handed to librdkafka
        self._issued = 0  # the latest ticket
        self._confirmed = Confirmations()  # every ticket up to this one is confirmed
        self._closing = False
        self._closed = False
        self._stop = False
        self._discarding = False  # callbacks of a producer being thrown away are ignored

        # counters: plain ints, most written by one thread only; a rare race between the
        # caller's thread and the background thread could skew a count, never the data
        self._dropped = 0
        self._delivered = 0
        self._refused = 0
        self._errors = 0
        self._recoveries = 0
        self._last_error: str | None = None
        self._connected = False
        self._down: str | None = None  # why librdkafka says every broker is down
        self._rebuild_reason: str | None = None
        self._rebuild_at = 0.0
        self._rebuild_delays = REBUILD_RETRY.delays()
        self._epoch = 0  # the idempotent producer's epoch (statistics)
        self._epoch_at_progress = 0
        self._progress_at = time.monotonic()  # the last confirmation, or nothing waiting
        self._trouble_since: float | None = None
        self._trouble_logged = False
        self._trouble_logged_at = -_TROUBLE_LOG_PERIOD
        self._on_delivery = self._delivery_callback()

        self._producer = self._new_producer()
        self._produce = self._producer.produce
        self._thread = threading.Thread(target=self._run, name="kafka-sink", daemon=True)
        self._thread.start()

    def _new_producer(self) -> Producer:
        try:
            producer: Producer = self._ck.Producer(self._conf)
        except (self._ck.KafkaException, TypeError, ValueError) as exc:
            raise kafka_error(exc, config=True) from exc
        return producer

    # ---- the caller's side ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return "kafka"

    @property
    def backlog(self) -> int:
        """Messages accepted and not yet confirmed by Kafka."""
        return len(self._pending)

    @property
    def backlog_limit(self) -> int:
        """``kafka.max_buffered``: above it the service stops reading from the broker."""
        return self._limit

    @property
    def stats(self) -> KafkaStats:
        """A snapshot of the counters."""
        return KafkaStats(
            produced=self._issued,
            delivered=self._delivered,
            dropped=self._dropped,
            refused=self._refused,
            errors=self._errors,
            recoveries=self._recoveries,
            backlog=len(self._pending),
            waiting=len(self._waiting),
            connected=self._connected and self._trouble_since is None,
            last_error=self._last_error,
        )

    def mark(self) -> int:
        """The ticket of the latest message accepted (librdkafka sends within ``linger_ms``)."""
        return self._issued

    def wait_confirmed(self, ticket: int, timeout: float) -> bool:
        """Block until every message up to ``ticket`` is confirmed by Kafka (``acks=all``);
        False when ``timeout`` runs out first."""
        return self._confirmed.wait(ticket, timeout, self._thread.is_alive)

    def send(self, out: Output) -> None:
        """Accept one batch's readings, alerts and health; never waits for Kafka."""
        readings_topic, alerts_topic, health_topic = self._topics
        rs = out.readings if readings_topic else ()
        alerts = out.alerts if alerts_topic else ()
        health = out.health if health_topic else ()
        if not (rs or alerts or health):
            return
        others: list[Kept] = []
        for a in alerts:
            ms = int(a.alert_ts * 1000)
            others.append((alerts_topic, a.sensor_id.encode(), encode(a), ms, [("id", a.id)]))
        if health:
            now_ms = int(self._clock() * 1000)
            for sid, state in health:
                others.append((health_topic, sid.encode(), state.encode(), now_ms, None))
        with self._lock:
            if self._closing:
                self._drop(len(rs) + len(others), "the sink is closed")
                return
            room = _UNBOUNDED if self.tracking else self._limit - len(self._pending)
            if others:  # alerts and health first: they are few and matter most
                room = self._accept(others, room)
            if room <= 0:
                room = min(room, 0) - len(rs)
            elif rs:
                kept = [
                    (readings_topic, r.sensor_id.encode(), encode(r), int(r.ts * 1000), None)
                    for r in (rs if room >= len(rs) else rs[:room])
                ]
                room = self._accept(kept, room) - (len(rs) - len(kept))
            if room < 0:
                self._drop(-room, "buffer full")

    def _accept(self, messages: Iterable[Kept], room: int) -> int:
        """Take tickets for ``messages`` and produce them (caller holds ``_lock``).

        Returns the room left; when negative, minus the number of messages that did not fit
        (with ``tracking`` everything fits: what librdkafka cannot take now waits).
        """
        pending = self._pending
        waiting = self._waiting
        produce = self._produce
        callback = self._on_delivery
        partial = functools.partial
        direct = not waiting and self._rebuild_reason is None
        t = self._issued
        try:
            for m in messages:
                if room <= 0:
                    room -= 1
                    continue
                t += 1
                pending[t] = m
                room -= 1
                if not direct:
                    waiting.append(t)
                    continue
                try:
                    produce(
                        m[0], m[2], m[1], on_delivery=partial(callback, t), timestamp=m[3],
                        headers=m[4],
                    )  # fmt: skip
                except BufferError:
                    if self.tracking:
                        waiting.append(t)
                        direct = False
                    else:  # librdkafka's queue is full: this one and the rest do not fit
                        del pending[t]
                        t -= 1
                        room = min(room, 0) - 1
                except self._ck.KafkaException as exc:
                    direct = False
                    if not self._produce_failed(t, exc.args[0]):
                        waiting.append(t)
        finally:
            self._issued = t
        return room

    def _drop(self, n: int, why: str) -> None:
        self._dropped += n
        self._rl.warning(
            "dropped",
            "kafka: %s, messages dropped (%d so far, %d waiting for Kafka)",
            why,
            self._dropped,
            len(self._pending),
        )

    def _produce_failed(self, ticket: int, err: KafkaError) -> bool:
        """``produce`` raised: True when the message is refused for good (and forgotten)."""
        self._last_error = f"{err.name()}: {err.str()}"
        if err.fatal():
            self._rebuild_reason = f"fatal error {self._last_error}"
            return False
        if err.code() in self._refused_codes:
            if self._pending.pop(ticket, None) is not None:
                self._refused += 1
            self._rl.warning("refused", "kafka: message refused: %s", self._last_error)
            return True
        self._rl.warning("produce", "kafka: cannot produce (%s), retrying", self._last_error)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout``) until everything accepted is confirmed, then stop the
        background thread and the producer. Messages sent afterwards are dropped."""
        if self._closed:
            return
        with self._lock:
            self._closing = True
        if not self.wait_confirmed(self._issued, timeout):
            log.error(
                "kafka: closing with %d messages not confirmed (%s)",
                len(self._pending),
                self._last_error or "no error reported",
            )
        self._stop = True
        self._thread.join(5.0)
        self._discard(self._producer)
        self._closed = True

    # ---- librdkafka's callbacks (served by poll() on the background thread) ---------------
    def _delivery_callback(self) -> Callable[[int, KafkaError | None, Message], None]:
        pop = self._pending.pop
        failed = self._delivery_failed

        def on_delivery(ticket: int, err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                if pop(ticket, None) is not None:
                    self._delivered += 1
            else:
                failed(ticket, err)

        return on_delivery

    def _delivery_failed(self, ticket: int, err: KafkaError) -> None:
        if self._discarding or err.code() in self._ignored_codes:
            return  # a producer thrown away: its unconfirmed messages are produced again
        self._errors += 1
        self._last_error = f"{err.name()}: {err.str()}"
        if err.code() in self._refused_codes:
            if self._pending.pop(ticket, None) is not None:
                self._refused += 1
            self._rl.warning("refused", "kafka: message refused: %s", self._last_error)
        elif ticket in self._pending:
            self._waiting.append(ticket)  # produced again by the background thread
            self._rl.warning("delivery", "kafka: delivery failed (%s), retrying", self._last_error)

    def _on_error(self, err: KafkaError) -> None:
        if self._discarding:
            return
        self._errors += 1
        self._last_error = f"{err.name()}: {err.str()}"
        if err.fatal():
            self._rebuild_reason = f"fatal error {self._last_error}"
        elif err.code() == self._ck.KafkaError._ALL_BROKERS_DOWN:
            self._down = self._last_error
            self._connected = False

    def _on_stats(self, text: str) -> None:
        if self._discarding:
            return
        try:
            stats = msgspec.json.decode(text)
            brokers = stats.get("brokers") or {}
            up = any(b.get("state") == "UP" for b in brokers.values())
            epoch = int((stats.get("eos") or {}).get("producer_epoch", 0))
        except (msgspec.DecodeError, AttributeError, TypeError, ValueError):
            return
        self._connected = up
        if up:
            self._down = None
        self._epoch = epoch
        self._epoch_at_progress = min(self._epoch_at_progress, epoch)  # a new producer id
        if (
            self._pending
            and epoch - self._epoch_at_progress >= STUCK_EPOCH_BUMPS
            and time.monotonic() - self._progress_at >= STUCK_AFTER
            and self._rebuild_reason is None
        ):
            self._rebuild_reason = (
                f"the producer is stuck ({epoch - self._epoch_at_progress} epoch bumps without"
                " a delivery: the broker lost its producer state)"
            )

    # ---- the background thread -----------------------------------------------------------
    def _run(self) -> None:
        pause = THREAD_ERROR_PAUSE.delays()
        while not self._stop:
            try:
                self._producer.poll(0.01 if self._waiting else 0.1)
                if self._rebuild_reason is not None:
                    self._rebuild()
                if self._waiting:
                    self._hand_over()
                self._advance()
            except Exception:  # never let the thread die: the service would stall
                log.exception("kafka: background thread error")
                time.sleep(next(pause))

    def _advance(self) -> None:
        """Move the confirmed mark to just below the lowest unconfirmed ticket; watch health."""
        issued = self._issued  # read before the dict: every ticket up to it is in there
        pending = self._pending
        while True:
            try:
                first = next(iter(pending), None)
                break
            except RuntimeError:  # changed size under us (send() on the other thread)
                continue
        confirmed = issued if first is None else min(first - 1, issued)
        now = time.monotonic()
        if confirmed > self._confirmed.value:
            self._confirmed.confirm(confirmed)
            self._progress_at = now
            self._epoch_at_progress = self._epoch
            self._rebuild_delays.reset()
            self._connected = True
            self._down = None
        elif first is None:
            self._progress_at = now
        self._watch(now)

    def _watch(self, now: float) -> None:
        """One log line when Kafka becomes unreachable or slow, one when it delivers again."""
        overdue = bool(self._pending) and now - self._progress_at >= self._slow_after
        trouble = overdue or self._down is not None
        if trouble and self._trouble_since is None:
            self._trouble_since = now
            what = self._down or f"nothing confirmed for {now - self._progress_at:.0f} s"
            self._trouble_logged = now - self._trouble_logged_at >= _TROUBLE_LOG_PERIOD
            if self._trouble_logged:
                self._trouble_logged_at = now
                log.warning(
                    "kafka %s unreachable or slow (%s); %d messages waiting, retrying",
                    self.settings.bootstrap_servers,
                    what,
                    len(self._pending),
                )
        elif not trouble and self._trouble_since is not None:
            if self._trouble_logged:
                log.info(
                    "kafka %s reachable and delivering again after %.1f s; %d messages waiting",
                    self.settings.bootstrap_servers,
                    now - self._trouble_since,
                    len(self._pending),
                )
            self._trouble_since = None

    def _hand_over(self) -> None:
        """Produce waiting messages, oldest first, until librdkafka's queue is full."""
        with self._lock:
            waiting = self._waiting
            pending = self._pending
            produce = self._produce
            callback = self._on_delivery
            for _ in range(DRAIN_CHUNK):
                if not waiting or self._rebuild_reason is not None:
                    return
                t = waiting[0]
                m = pending.get(t)
                if m is not None:
                    try:
                        produce(
                            m[0], m[2], m[1], on_delivery=functools.partial(callback, t),
                            timestamp=m[3], headers=m[4],
                        )  # fmt: skip
                    except BufferError:
                        return
                    except self._ck.KafkaException as exc:
                        if not self._produce_failed(t, exc.args[0]):
                            return
                waiting.popleft()

    def _rebuild(self) -> None:
        """Replace the producer; everything unconfirmed is produced again, in ticket order."""
        now = time.monotonic()
        if now < self._rebuild_at:
            return
        reason = self._rebuild_reason
        try:
            new = self._ck.Producer(self._conf)
        except Exception as exc:
            self._rebuild_at = now + next(self._rebuild_delays)
            self._rl.warning("rebuild", "kafka: cannot create a new producer: %s", kafka_error(exc))
            return
        with self._lock:
            old = self._producer
            self._producer = new
            self._produce = new.produce
            self._waiting = deque(self._pending)
            again = len(self._waiting)
            self._rebuild_reason = None
            self._recoveries += 1
            self._epoch = self._epoch_at_progress = 0
            self._progress_at = now
        self._rebuild_at = now + next(self._rebuild_delays)
        log.warning(
            "kafka: %s; new producer, producing again %d unconfirmed messages "
            "(those Kafka already had are duplicated)",
            reason,
            again,
        )
        self._discard(old)

    def _discard(self, producer: Producer) -> None:
        """Drop a producer's queue and serve its last callbacks (confirmations still count)."""
        self._discarding = True
        try:
            producer.purge()
            producer.flush(1.0)
        except Exception as exc:
            log.debug("kafka: discarding a producer: %s", exc)
        finally:
            self._discarding = False

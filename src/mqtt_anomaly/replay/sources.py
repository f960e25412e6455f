"""Where replayed readings come from: a history store, or a Kafka topic of readings.

Both give :class:`~.engine.Columns` batches in time order, each sensor's readings in their
own order, holding a bounded number of readings at a time.

- **A store** (``sqlite:///PATH``, ``postgresql://...``): read with
  :meth:`~mqtt_anomaly.store.base.Store.scan_readings`, ordered by ``(ts, sensor_id, seq)``.
- **Kafka** (``kafka://HOST:PORT[,HOST:PORT]/TOPIC``): messages keyed by sensor id whose value
  is the JSON of a :class:`~mqtt_anomaly.messages.Reading`. Every partition is read from its
  start with a throw-away consumer group, nothing committed. Partitions are merged by time: a
  reading is handed on once every partition still being read has reached its time, so
  sensors of different partitions interleave as they did when they were recorded. Reading
  stops when every partition reported its end (``enable.partition.eof``), after ``idle``
  seconds without a message, or at ``limit``. A message that is not such a reading is
  counted by reason and skipped.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Final

import msgspec
import numpy as np

from ..config import Settings
from ..errors import ConfigError, MqttAnomalyError, StoreError
from ..messages import NO_SEQ
from ..store.base import Store
from ..topics import valid_sensor_id
from .engine import Columns

BATCH: Final = 20_000  # readings handed on at a time
_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")
_HOST_PORT: Final = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")
_SOURCES: Final = (
    "store, sqlite:///PATH, postgresql://USER@HOST/DB or kafka[+ssl]://HOST:PORT/TOPIC"
)


@dataclass(frozen=True, slots=True)
class StoreSource:
    """A history store URL."""

    url: str


@dataclass(frozen=True, slots=True)
class KafkaSource:
    """A Kafka topic of readings."""

    bootstrap: str
    topic: str
    tls: bool = False
    security: dict[str, str] = field(default_factory=dict)
    """librdkafka's TLS and SASL settings, from the ``kafka`` section."""


Source = StoreSource | KafkaSource


def parse_source(text: str, settings: Settings) -> Source:
    """``--from``: ``store`` (the configured ``store.url``), a store URL, or a Kafka URL."""
    if text == "store":
        return StoreSource(settings.store.url)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("sqlite", "postgresql", "postgres"):
        return StoreSource(text)
    if scheme not in ("kafka", "kafka+ssl"):
        raise ConfigError(f"--from {text!r}: expected {_SOURCES}")
    rest = text.split("://", 1)[1]
    hosts, _, topic = rest.partition("/")
    topic = topic or settings.kafka.readings_topic
    if not topic:
        raise ConfigError(f"--from {text!r}: no /TOPIC, and kafka.readings_topic is empty")
    brokers = hosts.split(",")
    for broker in brokers:
        match = _HOST_PORT.fullmatch(broker)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ConfigError(
                f"--from {text!r}: {broker!r} is not HOST:PORT "
                "(expected kafka://HOST:PORT[,HOST:PORT]/TOPIC)"
            )
    if not _TOPIC_NAME.fullmatch(topic):
        raise ConfigError(f"--from {text!r}: {topic!r} is not a Kafka topic name")
    from ..sinks.kafka import security_config

    tls = scheme == "kafka+ssl"
    return KafkaSource(",".join(brokers), topic, tls, security_config(settings.kafka, tls=tls))


# ---- a store ---------------------------------------------------------------------------------
def store_batches(
    store: Store,
    *,
    sensor_id: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int | None = None,
    chunk: int = BATCH,
) -> Iterator[Columns]:
    """The store's readings as time-ordered batches of at most ``chunk``."""
    left = math.inf if limit is None else limit
    scan = store.scan_readings(sensor_id=sensor_id, since=since, until=until, chunk=chunk)
    for chunk_rows in scan:
        rows = chunk_rows if len(chunk_rows) <= left else chunk_rows[: int(left)]
        left -= len(rows)
        if rows:
            sids, ts, values, seqs = zip(*rows, strict=True)
            yield Columns(sids, np.array(ts, dtype=np.float64), values, seqs)
        if left <= 0:
            return


# ---- Kafka ---------------------------------------------------------------------------------
class _Record(msgspec.Struct, gc=False):
    """A reading's JSON as the Kafka topic holds it (the sensor may be only in the key)."""

    value: float
    ts: float
    sensor_id: str | None = None
    unit: str | None = None
    seq: int | None = None


_decode_record: Final = msgspec.json.Decoder(_Record).decode
_Row = tuple[str, float, float, int, float]  # sensor, ts, value, seq, partition's time so far
_by_time: Final = itemgetter(4)
_kafka_log = logging.getLogger("mqtt_anomaly.replay.kafka")
_kafka_log.setLevel(logging.CRITICAL)  # librdkafka retries loudly; failures are raised here


def decode_message(key: bytes | None, value: bytes | None) -> tuple[str, float, float, int]:
    """``(sensor_id, ts, value, seq)`` of one Kafka message; ValueError(reason) if it is none."""
    if not value:
        raise ValueError("empty")
    try:
        rec = _decode_record(value)
    except msgspec.ValidationError as exc:
        raise ValueError("invalid_field") from exc
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError("not_json") from exc
    sid = rec.sensor_id
    if key:
        named = key.decode("utf-8", "replace")
        if sid is not None and sid != named:
            raise ValueError("key_mismatch")
        sid = named
    if not sid:
        raise ValueError("no_sensor_id")
    if "/" in sid or not valid_sensor_id(sid):
        raise ValueError("bad_sensor_id")
    if not (math.isfinite(rec.value) and math.isfinite(rec.ts)):
        raise ValueError("non_finite")
    seq = NO_SEQ if rec.seq is None else rec.seq
    if seq != NO_SEQ and not 0 <= seq < 2**62:
        raise ValueError("invalid_field")
    return sid, rec.ts, rec.value, seq


@dataclass
class KafkaReader:
    """Read a topic of readings once, merged by time across partitions (see the module)."""

    source: KafkaSource
    sensor_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = None
    idle: float = 3.0
    timeout: float = 10.0
    batch: int = BATCH
    max_buffered: int = 5 * BATCH
    messages: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    partitions: int = 0
    stopped: str = ""  # why reading stopped: "end", "idle", "limit"
    errors: int = 0  # client errors on the way (each retried by the client)
    last_error: str | None = None

    def __iter__(self) -> Iterator[Columns]:
        try:
            import confluent_kafka as ck
        except ImportError as exc:
            raise MqttAnomalyError(
                "replaying from Kafka needs confluent-kafka: pip install 'mqtt-anomaly[kafka]'"
            ) from exc
        consumer = ck.Consumer(
            {
                "bootstrap.servers": self.source.bootstrap,
                **self.source.security,
                "group.id": f"mqtt-anomaly-replay-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,
                # prefetch per partition: bounded memory, whatever the partition count
                "queued.min.messages": 10_000,
                "queued.max.messages.kbytes": 8192,
                "fetch.queue.backoff.ms": 10,  # a full queue: fetch again soon, not in 1 s
                "logger": _kafka_log,
            }
        )
        try:
            partitions = self._partitions(consumer, ck)
            consumer.assign(
                [ck.TopicPartition(self.source.topic, p, ck.OFFSET_BEGINNING) for p in partitions]
            )
            yield from self._consume(consumer, ck, partitions)
        finally:
            consumer.close()

    def _partitions(self, consumer: Any, ck: Any) -> list[int]:
        where = f"Kafka at {self.source.bootstrap}"
        try:
            meta = consumer.list_topics(self.source.topic, timeout=self.timeout)
        except ck.KafkaException as exc:
            raise MqttAnomalyError(
                f"cannot reach {where} within {self.timeout:g} s ({exc.args[0].str()})"
            ) from exc
        topic = meta.topics.get(self.source.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = topic.error.str() if topic is not None and topic.error else "no partitions"
            raise MqttAnomalyError(f"{where}: topic {self.source.topic!r}: {reason}")
        self.partitions = len(topic.partitions)
        return sorted(topic.partitions)

    def _consume(self, consumer: Any, ck: Any, partitions: list[int]) -> Iterator[Columns]:
        eof_code = ck.KafkaError._PARTITION_EOF
        buffers: dict[int, list[_Row]] = {p: [] for p in partitions}
        reached = dict.fromkeys(partitions, -math.inf)  # each partition's time so far
        done = dict.fromkeys(partitions, False)  # at its end (or given up on as idle)
        paused: set[int] = set()
        buffered = taken = 0
        sensor, since, until = self.sensor_id, self.since, self.until
        limit = math.inf if self.limit is None else self.limit
        heard = time.monotonic()
        while True:
            got = consumer.consume(num_messages=self.batch, timeout=0.1)
            now = time.monotonic()
            for msg in got:
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == eof_code:
                        done[p] = True
                    elif err.fatal():
                        raise MqttAnomalyError(f"Kafka: {err.str()}")
                    else:
                        self.errors += 1
                        self.last_error = err.str()
                    continue
                heard = now
                done[p] = False
                self.messages += 1
                try:
                    sid, ts, value, seq = decode_message(msg.key(), msg.value())
                except ValueError as exc:
                    self.malformed[str(exc)] += 1
                    continue
                reached[p] = max(reached[p], ts)
                if (
                    (sensor is not None and sid != sensor)
                    or (since is not None and ts < since)
                    or (until is not None and ts > until)
                ):
                    continue
                buffers[p].append((sid, ts, value, seq, reached[p]))
                buffered += 1
                taken += 1
                if taken >= limit:
                    break
            if taken >= limit:
                self.stopped = "limit"
            elif all(done.values()):
                self.stopped = "end"
            elif now - heard > self.idle:
                if not paused:
                    self.stopped = "idle"
                else:  # the partitions still read have gone quiet: on with the paused ones
                    for p in partitions:
                        done[p] = done[p] or p not in paused
                    consumer.resume([ck.TopicPartition(self.source.topic, p) for p in paused])
                    paused.clear()
                    heard = now
            if self.stopped:
                yield from self._release(buffers, math.inf)
                return
            open_ = [reached[p] for p in partitions if not done[p]]
            horizon = min(open_) if open_ else math.inf
            for part in self._release(buffers, horizon):
                buffered -= len(part)
                yield part
            # Too much waiting for the partitions behind: pause those ahead until they catch up.
            # The ones that hold the horizon always read on.
            ahead = {p for p in partitions if not done[p] and reached[p] > horizon}
            if buffered > self.max_buffered:
                want = ahead
            elif buffered < self.max_buffered // 2:
                want = set()
            else:
                want = paused & ahead
            if want != paused:
                topic = self.source.topic
                consumer.resume([ck.TopicPartition(topic, p) for p in paused - want])
                consumer.pause([ck.TopicPartition(topic, p) for p in want - paused])
                paused = want

    def _release(self, buffers: dict[int, list[_Row]], horizon: float) -> Iterator[Columns]:
        """The buffered readings whose partition time is at most ``horizon``, merged by it."""
        runs: list[list[_Row]] = []
        for buf in buffers.values():
            cut = bisect.bisect_right(buf, horizon, key=_by_time)
            if cut:
                runs.append(buf[:cut])
                del buf[:cut]
        if not runs:
            return
        rows = runs[0] if len(runs) == 1 else sorted((r for run in runs for r in run), key=_by_time)
        for start in range(0, len(rows), self.batch):
            part = rows[start : start + self.batch]
            sids, ts, values, seqs, _ = zip(*part, strict=True)
            yield Columns(sids, np.array(ts, dtype=np.float64), values, seqs)


def open_replay_store(url: str, settings: Settings) -> Store:
    """Open a store to read from; a SQLite file that does not exist is an error, not created."""
    from ..store import open_store, sqlite_path

    if url.split("://", 1)[0] == "sqlite":
        path = sqlite_path(url)
        if not path.is_file():
            raise StoreError(f"no history store at {path}")
    if url.split("://", 1)[0] == "none":
        raise StoreError("store.url is none://: there is no history to replay")
    return open_store(url, settings.store)

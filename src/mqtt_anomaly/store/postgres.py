"""The PostgreSQL history store: one writer thread, a bounded queue, binary COPY.

``store.url = "postgresql://user@host:5432/dbname"`` (any libpq connection URL; the password
may come from ``PGPASSWORD`` or ``~/.pgpass``). The schema is created when missing, under an
advisory lock so that two services starting together do not race.

Same contract and policy as the SQLite store (:mod:`.sqlite`), so the service cannot tell
them apart:

- the event loop only appends to an in-memory queue; a writer thread commits what is queued
  when ``batch_size`` rows are waiting or ``flush_interval`` seconds after the first of them,
  readings with one binary ``COPY`` and alerts with one ``executemany``, in one transaction;
- **back-pressure**: at most ``max_queued_rows`` readings wait (including a batch being
  retried). A batch that does not fit is dropped and counted (``stats.dropped``, one log line
  per 10 s at most); alerts have their own, much larger bound, so a slow or unreachable
  database costs readings first, never alerts first, and never stalls ingestion;
- **failures** after opening (server down, connection lost, lock timeout) are counted in
  ``stats.errors``, logged at most every 10 s and retried with a growing pause (0.1 s to 5 s)
  on a new connection; nothing is raised into the caller. Rows PostgreSQL could never store
  (a non-finite value, a NUL character) are dropped and counted before the ``COPY``, and
  data errors found by the server are isolated batch by batch, as in SQLite;
- **retention**: readings older than ``retention_days`` are deleted by the writer thread,
  ``retention_chunk`` rows per transaction, between writes (a BRIN index on ``ts`` finds them);
- reads use a small pool of separate connections and never wait for the writer.

Timestamps are ``double precision`` epoch seconds, as in SQLite and on the wire; Grafana and
SQL users convert with ``to_timestamp(ts)``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import numpy as np
import psycopg
from psycopg import sql

from ..config import StoreSettings
from ..console import RateLimitedLog
from ..errors import StoreError
from ..messages import Alert
from .base import FloatColumn, IntColumn, ReadingRow, StoreStats

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
_LOCK_KEY: Final = 0x6D71_7474  # advisory lock held while the schema is created
_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS schema_version (
        version integer NOT NULL,
        created_at double precision NOT NULL,
        flushed_at double precision
    )""",
    """CREATE TABLE IF NOT EXISTS readings (
        sensor_id text NOT NULL,
        ts double precision NOT NULL,
        value double precision NOT NULL,
        seq bigint NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS readings_sensor_ts ON readings (sensor_id, ts)",
    "CREATE INDEX IF NOT EXISTS readings_ts_brin ON readings USING brin (ts)",
    """CREATE TABLE IF NOT EXISTS alerts (
        id bigserial PRIMARY KEY,
        sensor_id text NOT NULL,
        detector text NOT NULL,
        severity text NOT NULL,
        state text NOT NULL,
        value double precision,
        score double precision,
        threshold double precision,
        expected_low double precision,
        expected_high double precision,
        reading_ts double precision,
        alert_ts double precision NOT NULL,
        message text NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (alert_ts)",
    "CREATE INDEX IF NOT EXISTS alerts_sensor_ts ON alerts (sensor_id, alert_ts)",
)
TABLES: Final = {
    "schema_version": ("version", "created_at", "flushed_at"),
    "readings": ("sensor_id", "ts", "value", "seq"),
    "alerts": (
        "id", "sensor_id", "detector", "severity", "state", "value", "score", "threshold",
        "expected_low", "expected_high", "reading_ts", "alert_ts", "message",
    ),
}  # fmt: skip
_ALERT_COLUMNS: Final = ", ".join(TABLES["alerts"][1:])
_COPY_READINGS: Final = "COPY readings (sensor_id, ts, value, seq) FROM STDIN (FORMAT BINARY)"
_INSERT_ALERT: Final = f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES ({', '.join(['%s'] * 12)})"
_EXPIRE: Final = (
    "DELETE FROM readings WHERE ctid = ANY(ARRAY(SELECT ctid FROM readings WHERE ts < %s LIMIT %s))"
)
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0
_POOL: Final = 4
_DATA_ERRORS: Final = (psycopg.DataError, psycopg.IntegrityError, TypeError, ValueError)

_Batch = tuple[Sequence[str], FloatColumn, FloatColumn, IntColumn]


@dataclass(slots=True)
class _Work:
    """What the writer thread took from the queue for one transaction."""

    batches: list[_Batch] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    ticket: int = 0
    sync: bool = False
    stop: bool = False
    expire: bool = False


class PostgresStore:
    """History in a PostgreSQL database. See the module docstring for the policy.

    ``max_queued_rows`` bounds the readings waiting (memory, and what a crash loses);
    ``max_queued_alerts`` bounds alerts separately. ``lock_timeout`` and ``connect_timeout``
    (seconds) bound how long one write attempt may wait before it counts as failed.
    """

    def __init__(
        self,
        url: str,
        settings: StoreSettings | None = None,
        *,
        max_queued_rows: int = 250_000,
        max_queued_alerts: int = 1_000_000,
        retention_interval: float = 60.0,
        retention_chunk: int = 5_000,
        lock_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = settings or StoreSettings()
        self.url = url
        self.name = _safe_url(url)
        self._keep_readings = settings.readings
        self._batch_size = settings.batch_size
        self._flush_interval = settings.flush_interval
        self._retention_s = settings.retention_days * 86400.0
        self._retention_interval = retention_interval
        self._retention_chunk = retention_chunk
        self._max_rows = max_queued_rows
        self._max_alerts = max_queued_alerts
        self._lock_timeout_ms = max(1, int(lock_timeout * 1000))
        self._connect_timeout = max(1, math.ceil(connect_timeout))
        self._clock = clock
        self._rl = RateLimitedLog(log, period=10.0)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._readings: list[_Batch] = []
        self._alerts: list[Alert] = []
        self._queued_rows = 0
        self._first_at = 0.0
        self._enqueued = 0
        self._flush_target = 0
        self._synced = 0
        self._closing = False
        self._closed = False
        self._held_rows = 0
        self._held_alerts = 0
        self._written = 0
        self._alerts_written = 0
        self._dropped = 0
        self._alerts_dropped = 0
        self._errors = 0
        self._last_error: str | None = None
        self._write_seconds = 0.0
        self._write_rows = 0
        self._expired = 0

        try:
            self._conn: psycopg.Connection[Any] | None = self._connect(schema=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open history store {self.name}: {_reason(exc)}") from None
        self._idle_readers: list[psycopg.Connection[Any]] = []
        self._readers_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="store-writer:pg", daemon=True)
        self._thread.start()

    # ---- the event-loop side ---------------------------------------------------------
    @property
    def stats(self) -> StoreStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return StoreStats(
                written=self._written,
                alerts_written=self._alerts_written,
                queued=self._queued_rows + len(self._alerts) + self._held_rows + self._held_alerts,
                dropped=self._dropped,
                alerts_dropped=self._alerts_dropped,
                errors=self._errors,
                last_error=self._last_error,
                write_seconds=self._write_seconds,
                write_rows=self._write_rows,
                expired=self._expired,
            )

    def add_readings(
        self,
        sensor_ids: Sequence[str],
        ts: FloatColumn,
        values: FloatColumn,
        seqs: IntColumn,
    ) -> None:
        """Enqueue a batch of readings column by column; never blocks."""
        if not self._keep_readings:
            return
        n = len(sensor_ids)
        if not len(ts) == len(values) == len(seqs) == n:
            raise ValueError("add_readings: columns of different lengths")
        if n == 0:
            return
        with self._lock:
            if self._closing or self._queued_rows + self._held_rows + n > self._max_rows:
                self._dropped += n
                dropped = self._dropped
            else:
                self._enqueue_locked()
                self._readings.append((sensor_ids, ts, values, seqs))
                before = self._queued_rows
                self._queued_rows = before + n
                if before < self._batch_size <= before + n:
                    self._wake.notify()
                return
        self._rl.warning(
            "queue-full",
            "history store %s: queue full (%d rows) or closed, readings dropped (%d so far)",
            self.name,
            self._max_rows,
            dropped,
        )

    def add_alert(self, alert: Alert) -> None:
        """Enqueue one alert; never blocks."""
        with self._lock:
            if not self._closing and len(self._alerts) + self._held_alerts < self._max_alerts:
                self._enqueue_locked()
                self._alerts.append(alert)
                return
            self._alerts_dropped += 1
            dropped = self._alerts_dropped
        self._rl.warning(
            "alerts-full",
            "history store %s: alert queue full or closed, alerts dropped (%d so far)",
            self.name,
            dropped,
        )

    def _enqueue_locked(self) -> None:
        if not (self._readings or self._alerts):
            self._first_at = time.monotonic()
            self._wake.notify()
        self._enqueued += 1

    def flush(self, timeout: float) -> bool:
        """Block until everything enqueued so far is committed; False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._enqueued
            if self._synced >= target:
                return True
            self._flush_target = max(self._flush_target, target)
            self._wake.notify()
            while self._synced < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._done.wait(remaining)
            return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (waiting at most ``timeout``), stop the writer, disconnect."""
        if self._closed:
            return
        if not self.flush(timeout):
            log.error("history store %s: could not write everything before closing", self.name)
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        self._closed = True
        with self._readers_lock:
            for conn in self._idle_readers:
                conn.close()
            self._idle_readers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- reads -----------------------------------------------------------------------
    def recent_alerts(
        self,
        *,
        limit: int = 50,
        sensor_id: str | None = None,
        since: float | None = None,
        detector: str | None = None,
    ) -> list[Alert]:
        """Alerts newest first (by ``alert_ts``), optionally filtered."""
        where: list[str] = []
        args: list[Any] = []
        for clause, arg in (
            ("sensor_id = %s", sensor_id),
            ("alert_ts >= %s", since),
            ("detector = %s", detector),
        ):
            if arg is not None:
                where.append(clause)
                args.append(arg)
        query = f"SELECT {_ALERT_COLUMNS} FROM alerts"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY alert_ts DESC, id DESC LIMIT %s"
        return [_alert_from_row(r) for r in self._query(query, (*args, limit))]

    def readings(
        self,
        sensor_id: str,
        *,
        start: float | None = None,
        end: float | None = None,
        limit: int = 10_000,
    ) -> list[ReadingRow]:
        """``(ts, value, seq)`` of one sensor, oldest first (see :class:`~.base.Store`)."""
        query = "SELECT ts, value, seq FROM readings WHERE sensor_id = %s"
        args: list[Any] = [sensor_id]
        if start is not None:
            query += " AND ts >= %s"
            args.append(start)
        if end is not None:
            query += " AND ts <= %s"
            args.append(end)
        if start is not None:
            return self._query(query + " ORDER BY ts ASC, seq ASC LIMIT %s", (*args, limit))
        rows = self._query(query + " ORDER BY ts DESC, seq DESC LIMIT %s", (*args, limit))
        rows.reverse()
        return rows

    def _query(self, query: str, args: Sequence[Any]) -> list[Any]:
        if self._closed:
            raise StoreError(f"history store {self.name} is closed")
        with self._readers_lock:
            conn = self._idle_readers.pop() if self._idle_readers else None
        pooled = conn is not None
        while True:
            try:
                if conn is None:
                    conn = self._connect(schema=False)
                rows = conn.execute(query.encode(), args).fetchall()
                break
            except psycopg.Error as exc:
                if conn is not None:
                    conn.close()
                    conn = None
                if pooled and isinstance(exc, psycopg.OperationalError):
                    pooled = False  # a pooled connection the server closed: once more
                    continue
                raise StoreError(f"history store {self.name}: read failed: {_reason(exc)}") from exc
        with self._readers_lock:
            if len(self._idle_readers) < _POOL and not self._closed:
                self._idle_readers.append(conn)
                conn = None
        if conn is not None:
            conn.close()
        return rows

    # ---- connections -------------------------------------------------------------------
    def _connect(self, *, schema: bool) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=self._connect_timeout,
            application_name="mqtt-anomaly",
        )
        try:
            conn.execute(
                sql.SQL("SET lock_timeout = {}").format(sql.Literal(self._lock_timeout_ms))
            )
            if schema:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                    for statement in _SCHEMA:
                        conn.execute(statement.encode())
                    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                    version = row[0] if row else None
                    if version is None:
                        conn.execute(
                            "INSERT INTO schema_version (version, created_at) VALUES (%s, %s)",
                            (SCHEMA_VERSION, time.time()),
                        )
                    elif version > SCHEMA_VERSION:
                        raise StoreError(
                            f"cannot open history store {self.name}: schema version {version} "
                            f"is newer than this program's ({SCHEMA_VERSION}); upgrade mqtt-anomaly"
                        )
        except BaseException:
            conn.close()
            raise
        return conn

    # ---- the writer thread -----------------------------------------------------------
    def _run(self) -> None:
        held = _Work()
        retry_at: float | None = None
        backoff = _BACKOFF_MIN
        next_expiry = time.monotonic() + min(self._retention_interval, 1.0)
        while True:
            work = self._next_work(retry_at, next_expiry)
            if work.expire:
                next_expiry = time.monotonic() + self._expire_chunk()
                continue
            held.batches += work.batches
            held.alerts += work.alerts
            held.ticket = work.ticket
            busy = bool(held.batches or held.alerts or work.sync)
            if not busy or self._write(held, work.sync):
                retry_at, backoff = None, _BACKOFF_MIN
                with self._lock:
                    if work.sync:
                        self._synced = max(self._synced, work.ticket)
                    self._done.notify_all()
            else:
                retry_at = time.monotonic() + backoff
                backoff = min(backoff * 2, _BACKOFF_MAX)
            if work.stop:
                break
        self._shutdown_writer(held)

    def _next_work(self, retry_at: float | None, next_expiry: float) -> _Work:
        """Wait for something to do: a batch to write, a retry, or old rows to delete."""
        with self._lock:
            while True:
                now = time.monotonic()
                flush = self._flush_target > self._synced
                queued = bool(self._readings or self._alerts)
                if retry_at is not None:
                    if self._closing or now >= retry_at:
                        return self._take_locked(flush)
                    deadline = retry_at
                elif (
                    self._closing
                    or flush
                    or self._queued_rows >= self._batch_size
                    or (queued and now >= self._first_at + self._flush_interval)
                ):
                    return self._take_locked(flush)
                elif now >= next_expiry:
                    return _Work(expire=True)
                else:
                    deadline = next_expiry
                    if queued:
                        deadline = min(deadline, self._first_at + self._flush_interval)
                self._wake.wait(deadline - now)

    def _take_locked(self, flush: bool) -> _Work:
        work = _Work(
            self._readings,
            self._alerts,
            ticket=self._enqueued,
            sync=flush or (self._closing and self._synced < self._enqueued),
            stop=self._closing,
        )
        self._held_rows += self._queued_rows
        self._held_alerts += len(self._alerts)
        self._readings, self._alerts, self._queued_rows = [], [], 0
        return work

    def _write(self, held: _Work, sync: bool) -> bool:
        """Commit everything held; True when nothing is left to retry."""
        try:
            self._commit(held.batches, held.alerts, sync)
        except _DATA_ERRORS as exc:
            self._write_failed(exc)
            return self._write_one_by_one(held, sync)
        except Exception as exc:
            self._write_failed(exc)
            return False
        held.batches, held.alerts = [], []
        return True

    def _write_one_by_one(self, held: _Work, sync: bool) -> bool:
        """After a data error: commit batch by batch, dropping the ones the server refuses."""
        while held.batches or held.alerts:
            batches, alerts = ([held.batches[0]], []) if held.batches else ([], [held.alerts[0]])
            try:
                self._commit(batches, alerts, False)
            except _DATA_ERRORS as exc:
                rows = sum(len(b[0]) for b in batches)
                with self._lock:
                    self._dropped += rows
                    self._alerts_dropped += len(alerts)
                    self._held_rows -= rows
                    self._held_alerts -= len(alerts)
                log.error("history store %s: dropped data it cannot store: %s", self.name, exc)
            except Exception as exc:
                self._write_failed(exc)
                return False
            if batches:
                held.batches.pop(0)
            else:
                held.alerts.pop(0)
        if sync:
            try:
                self._commit([], [], True)
            except Exception as exc:
                self._write_failed(exc)
                return False
        return True

    def _commit(self, batches: list[_Batch], alerts: list[Alert], sync: bool) -> None:
        """One transaction; raises what psycopg raises (rolled back)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = self._connect(schema=True)
        started = time.perf_counter()
        rows = bad = 0
        with conn.transaction(), conn.cursor() as cur:
            if batches:
                with cur.copy(_COPY_READINGS) as copy:
                    copy.set_types(["text", "float8", "float8", "int8"])
                    for batch in batches:
                        rows += len(batch[0])
                        bad += _copy_rows(copy, batch)
            if alerts:
                cur.executemany(_INSERT_ALERT, [_alert_row(a) for a in alerts])
            if sync:
                cur.execute("UPDATE schema_version SET flushed_at = %s", (time.time(),))
        elapsed = time.perf_counter() - started
        with self._lock:
            self._written += rows - bad
            self._dropped += bad
            self._alerts_written += len(alerts)
            self._held_rows -= rows
            self._held_alerts -= len(alerts)
            if rows or alerts:
                self._write_seconds = elapsed
                self._write_rows = rows - bad + len(alerts)
        if bad:
            self._rl.warning(
                "bad-rows",
                "history store %s: dropped %d readings it cannot store (not finite or NUL)",
                self.name,
                bad,
            )

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _write_failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {_reason(exc)}"
        with self._lock:
            self._errors += 1
            self._last_error = message
            queued = self._held_rows + self._queued_rows
        if isinstance(exc, _DATA_ERRORS):
            return  # the batch at fault is found, dropped and logged by _write_one_by_one
        self._rl.warning(
            "write-error",
            "history store %s: write failed (%s); %d rows waiting, retrying",
            self.name,
            message,
            queued,
        )
        self._drop_connection()

    def _expire_chunk(self) -> float:
        """Delete one chunk of expired readings; the pause before the next chunk."""
        conn = self._conn
        if conn is None:
            return self._retention_interval
        cutoff = self._clock() - self._retention_s
        try:
            deleted = conn.execute(_EXPIRE, (cutoff, self._retention_chunk)).rowcount
        except psycopg.Error as exc:
            self._write_failed(exc)
            return self._retention_interval
        with self._lock:
            self._expired += max(deleted, 0)
        return 0.0 if deleted > 0 else self._retention_interval

    def _shutdown_writer(self, held: _Work) -> None:
        if held.batches or held.alerts:
            rows = sum(len(b[0]) for b in held.batches)
            log.error(
                "history store %s: closing with %d readings and %d alerts not written (%s)",
                self.name,
                rows,
                len(held.alerts),
                self._last_error,
            )
        self._drop_connection()
        with self._lock:
            self._done.notify_all()


def _copy_rows(copy: psycopg.Copy, batch: _Batch) -> int:
    """Write one batch's storable rows to ``copy``; returns how many were left out."""
    ids, ts, values, seqs = (c.tolist() if isinstance(c, np.ndarray) else c for c in batch)
    bad = 0
    isfinite = math.isfinite
    for row in zip(ids, ts, values, seqs, strict=True):
        sid, t, v, s = row
        try:
            ok = isfinite(t) and isfinite(v) and "\x00" not in sid
        except TypeError:
            ok = False
        if ok:
            copy.write_row((str(sid), float(t), float(v), int(s)))
        else:
            bad += 1
    return bad


def _alert_row(a: Alert) -> tuple[Any, ...]:
    return (
        a.sensor_id,
        a.detector,
        a.severity,
        a.state,
        a.value,
        a.score,
        a.threshold,
        a.expected_low,
        a.expected_high,
        a.reading_ts,
        a.alert_ts,
        a.message,
    )


def _alert_from_row(r: tuple[Any, ...]) -> Alert:
    return Alert(
        sensor_id=r[0],
        detector=r[1],
        severity=r[2],
        state=r[3],
        value=r[4],
        score=math.nan if r[5] is None else r[5],
        threshold=r[6],
        expected_low=r[7],
        expected_high=r[8],
        reading_ts=r[9],
        alert_ts=r[10],
        message=r[11],
    )


def _reason(exc: BaseException) -> str:
    """The first line of a database error, without libpq's connection details."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://?"
    host = info.get("host", "localhost")
    port = info.get("port", "5432")
    return f"postgresql://{info.get('user', '')}@{host}:{port}/{info.get('dbname', '')}"


def iter_schema() -> Iterator[str]:
    """The schema's statements (documentation, tests)."""
    yield from _SCHEMA

"""The bounded queue and writer thread that the SQL history stores share.

:class:`QueuedStore` is the front-end the service writes to and the thread that writes in the
background; a backend (:mod:`.sqlite`, :mod:`.postgres`) adds only how to connect, how to
commit one transaction, how to delete one chunk of expired readings, and its reads.

The queue
    :meth:`~QueuedStore.add_readings` and :meth:`~QueuedStore.add_alert` only append to
    in-memory lists under a lock: they never wait for the database, so the event loop calls
    them directly. Readings are kept as the caller's columns, one tuple per batch. Every
    accepted batch or alert takes a ticket (a running count).

Drop policy
    At most ``max_queued_rows`` readings wait, counting those held for a retry; a batch that
    does not fit is dropped whole and counted (``stats.dropped``, one log line per 10 s at
    most). Alerts have their own, much larger bound (``max_queued_alerts``), so when the
    database is slow or unreachable readings are dropped first and alerts only after their
    own bound is reached; ingestion never stalls. After :meth:`~QueuedStore.close` starts,
    everything offered is dropped.

Delivery tracking
    The store is a :class:`~mqtt_anomaly.delivery.DurableSink`: :meth:`~QueuedStore.mark`
    returns the latest ticket and asks the writer to commit it without waiting for a batch to
    fill; :meth:`~QueuedStore.wait_confirmed` blocks until a ticket is committed (a commit
    survives a crash of the process; a flush's also a power cut). ``backlog_limit`` is half
    the queue bound, so a service that stops reading at that mark never reaches the drop
    policy. Writes are idempotent: a reading already stored (same sensor, timestamp and
    sequence number) or an alert already stored (same sensor, detector, state and reading
    timestamp) is ignored, so what the broker redelivers after a crash is stored once.

Flush
    :meth:`~QueuedStore.flush` waits until every ticket issued before the call is committed
    by a *sync* transaction (the backend's most durable commit, e.g. ``synchronous=FULL`` in
    SQLite), or until its timeout runs out (False). :meth:`~QueuedStore.close` flushes, then
    stops the writer and closes the connections.

The writer thread
    It commits what is queued when ``batch_size`` rows are waiting, ``flush_interval``
    seconds after the first of them, on a flush, or on close: everything taken, in one
    transaction. A failure (database unreachable, disk full, lock timeout) is counted in
    ``stats.errors``, logged at most every 10 s, and the same data is retried with a growing
    pause (0.1 s to 5 s) on a new connection; nothing is raised into the caller. A data error
    (a value the database refuses) is isolated by committing batch by batch and alert by
    alert, dropping only what is refused. Between writes, readings older than
    ``retention_days`` are deleted one chunk per transaction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TypeVar

from ..config import StoreSettings
from ..console import RateLimitedLog
from ..messages import Alert
from .base import AlertCount, FloatColumn, IntColumn, ReadingRow, StoredReading, StoreStats

Batch = tuple[Sequence[str], FloatColumn, FloatColumn, IntColumn]

_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0


class Connection(Protocol):
    """What the shared code does with a backend's connection: close it."""

    def close(self) -> None: ...


ConnT = TypeVar("ConnT", bound=Connection)


@dataclass(slots=True)
class _Work:
    """What the writer thread took from the queue for one transaction."""

    batches: list[Batch] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    ticket: int = 0
    sync: bool = False
    stop: bool = False
    expire: bool = False


class QueuedStore(ABC, Generic[ConnT]):
    """A history store with a bounded queue and one writer thread (see the module docstring).

    A backend sets the class attributes, calls ``super().__init__``, opens its writer
    connection into ``self._conn``, calls :meth:`_start_writer`, and implements
    :meth:`_commit` and :meth:`_delete_expired`. Idle read connections go in
    ``self._idle_readers`` and are closed by :meth:`close`.
    """

    _log: ClassVar[logging.Logger]
    """The backend's logger (its module's)."""
    _db_errors: ClassVar[tuple[type[Exception], ...]]
    """What the driver raises."""
    _data_errors: ClassVar[tuple[type[Exception], ...]]
    """Errors that mean "this data cannot be stored" rather than "cannot write now"."""

    _thread: threading.Thread

    def __init__(
        self,
        settings: StoreSettings,
        *,
        label: str,
        max_queued_rows: int,
        max_queued_alerts: int,
        retention_interval: float,
        retention_chunk: int,
        clock: Callable[[], float],
    ) -> None:
        self._label = label  # names the store in log messages
        self.name = label
        self._keep_readings = settings.readings
        self._batch_size = settings.batch_size
        self._flush_interval = settings.flush_interval
        self._retention_s = settings.retention_days * 86400.0
        self._retention_interval = retention_interval
        self._retention_chunk = retention_chunk
        self._max_rows = max_queued_rows
        self._max_alerts = max_queued_alerts
        self._clock = clock
        self._rl = RateLimitedLog(self._log, period=10.0)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits for work on this
        self._done = threading.Condition(self._lock)  # flush() waits for commits on this
        self._readings: list[Batch] = []
        self._alerts: list[Alert] = []
        self._queued_rows = 0
        self._first_at = 0.0
        self._enqueued = 0  # tickets: one per accepted batch or alert
        self._flush_target = 0
        self._synced = 0  # every ticket up to this one is committed by a sync transaction
        self._commit_target = 0
        self._committed = 0  # every ticket up to this one is committed
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
        self._duplicates = 0

        self._conn: ConnT | None = None
        self._idle_readers: list[ConnT] = []
        self._readers_lock = threading.Lock()

    def _start_writer(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
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
                duplicates=self._duplicates,
            )

    def add_readings(
        self,
        sensor_ids: Sequence[str],
        ts: FloatColumn,
        values: FloatColumn,
        seqs: IntColumn,
    ) -> None:
        """Enqueue a batch of readings column by column; never blocks (see :class:`Store`)."""
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
            self._label,
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
            self._label,
            dropped,
        )

    def _enqueue_locked(self) -> None:
        if not (self._readings or self._alerts):
            self._first_at = time.monotonic()
            self._wake.notify()
        self._enqueued += 1

    # ---- delivery tracking (see the module docstring) ----------------------------------
    def mark(self) -> int:
        """The ticket of everything enqueued so far; the writer commits it soon."""
        with self._lock:
            target = self._enqueued
            if target > self._committed and target > self._commit_target:
                self._commit_target = target
                self._wake.notify()
            return target

    def wait_confirmed(self, ticket: int, timeout: float) -> bool:
        """Block until every ticket up to ``ticket`` is committed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._committed < ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._done.wait(remaining)
            return True

    @property
    def backlog(self) -> int:
        """Readings and alerts enqueued and not yet committed."""
        return self._queued_rows + len(self._alerts) + self._held_rows + self._held_alerts

    @property
    def backlog_limit(self) -> int:
        return self._max_rows // 2

    def flush(self, timeout: float) -> bool:
        """Block until everything enqueued so far is committed and synced to disk.

        Returns False when ``timeout`` runs out first (e.g. the disk is full or the database
        is unreachable).
        """
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
            self._log.error(
                "history store %s: could not write everything before closing", self._label
            )
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

    # ---- what a backend provides -------------------------------------------------------
    # ---- reads ------------------------------------------------------------------------
    _PARAM: ClassVar[str]  # the driver's query placeholder

    @abstractmethod
    def _query(self, query: str, args: Sequence[Any]) -> list[Any]:
        """Rows of ``query`` from a reader connection (never waits for the writer)."""

    def recent_alerts(
        self,
        *,
        limit: int = 50,
        sensor_id: str | None = None,
        since: float | None = None,
        detector: str | None = None,
    ) -> list[Alert]:
        """Alerts newest first (by ``alert_ts``), optionally filtered."""
        p = self._PARAM
        where, args = self._where(
            ("sensor_id =", sensor_id), ("alert_ts >=", since), ("detector =", detector)
        )
        query = f"SELECT {ALERT_COLUMNS} FROM alerts{where} ORDER BY alert_ts DESC, id DESC"
        query += f" LIMIT {p}"
        return [alert_from_row(r) for r in self._query(query, (*args, limit))]

    def readings(
        self,
        sensor_id: str,
        *,
        start: float | None = None,
        end: float | None = None,
        limit: int = 10_000,
    ) -> list[ReadingRow]:
        """``(ts, value, seq)`` of one sensor, oldest first (see :class:`~.base.Store`)."""
        p = self._PARAM
        where, args = self._where(("sensor_id =", sensor_id), ("ts >=", start), ("ts <=", end))
        query = f"SELECT ts, value, seq FROM readings{where}"
        if start is not None:
            return self._query(query + f" ORDER BY ts ASC, seq ASC LIMIT {p}", (*args, limit))
        rows = self._query(query + f" ORDER BY ts DESC, seq DESC LIMIT {p}", (*args, limit))
        rows.reverse()
        return rows

    _JSON_TEXTS: ClassVar[str]
    """A table expression (aliased ``AS s``) whose ``value`` column holds the strings of the
    JSON array passed as one parameter: how a query takes a list of sensors of any length."""

    def scan_readings(
        self,
        *,
        sensor_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        chunk: int = 10_000,
    ) -> Iterator[list[StoredReading]]:
        """Every reading with ``since <= ts <= until``, oldest first (see :class:`~.base.Store`).

        Reads consecutive time windows, each through the ``(sensor_id, ts)`` index (one index
        range per sensor) and sized from the previous ones to hold about half a ``chunk``; a
        window holding more is read on with keyset pagination on ``(ts, sensor_id, seq)``.
        So every query reads about what it returns, however long the history. Rows alike in
        all of ``(ts, sensor_id, seq)`` that fall across a chunk boundary come once.
        """
        if chunk < 1:
            raise ValueError("scan_readings: chunk must be at least 1")
        p = self._PARAM
        ids = [sensor_id] if sensor_id is not None else [r[0] for r in self._query(_SENSORS, ())]
        if not ids:
            return
        sensors = json.dumps(ids)
        bounds = ""
        bound_args: list[Any] = []
        for clause, arg in (("ts >=", since), ("ts <=", until)):
            if arg is not None:
                bounds += f" AND {clause} {p}"
                bound_args.append(arg)
        first_last = self._query(
            f"SELECT min(lo), max(hi) FROM (SELECT "
            f"(SELECT min(ts) FROM readings WHERE sensor_id = s.value{bounds}) AS lo, "
            f"(SELECT max(ts) FROM readings WHERE sensor_id = s.value{bounds}) AS hi "
            f"FROM {self._JSON_TEXTS}) AS b",
            (*bound_args, *bound_args, sensors),
        )
        lo, hi = first_last[0] if first_last else (None, None)
        if lo is None or hi is None:
            return
        window = (
            "SELECT sensor_id, ts, value, seq FROM readings WHERE sensor_id IN "
            f"(SELECT s.value FROM {self._JSON_TEXTS}) AND ts >= {p} AND ts < {p}"
        )
        order = f" ORDER BY ts, sensor_id, seq LIMIT {p}"
        after = f" AND (ts, sensor_id, seq) > ({p}, {p}, {p})"
        stop = math.nextafter(hi, math.inf)
        start = lo
        width = max((hi - lo) / 4096, abs(lo) * 1e-12, 1e-9)
        while start < stop:
            end = min(start + width, stop)
            if end <= start:
                end = math.nextafter(start, math.inf)
            rows: list[StoredReading] = self._query(window + order, (sensors, start, end, chunk))
            got = len(rows)
            while len(rows) == chunk:
                yield rows
                sid, ts, _, seq = rows[-1]
                rows = self._query(window + after + order, (sensors, ts, end, ts, sid, seq, chunk))
                got += len(rows)
            if rows:
                yield rows
            grow = min(4.0, max(0.125, chunk / (2 * got))) if got else 4.0
            width = (end - start) * grow
            start = end

    def alert_counts(
        self,
        *,
        sensor_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[AlertCount]:
        """How many alerts with ``since <= alert_ts <= until``, by detector, state, severity."""
        where, args = self._where(
            ("sensor_id =", sensor_id), ("alert_ts >=", since), ("alert_ts <=", until)
        )
        query = f"SELECT detector, state, severity, count(*) FROM alerts{where}"
        query += " GROUP BY detector, state, severity ORDER BY detector, state, severity"
        return [(str(d), str(st), str(sev), int(n)) for d, st, sev, n in self._query(query, args)]

    def _where(self, *conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
        """`` WHERE a = ? AND …`` of the ``(clause, value)`` pairs whose value is not None,
        and their values."""
        used = [(clause, arg) for clause, arg in conditions if arg is not None]
        if not used:
            return "", []
        where = " AND ".join(f"{clause} {self._PARAM}" for clause, _ in used)
        return " WHERE " + where, [arg for _, arg in used]

    @abstractmethod
    def _commit(self, batches: list[Batch], alerts: list[Alert], sync: bool) -> None:
        """Write ``batches`` and ``alerts`` in one transaction (the most durable kind when
        ``sync``), reconnecting when ``self._conn`` is None, then call :meth:`_count_commit`.

        Raises what the driver raises, with the transaction rolled back.
        """

    @abstractmethod
    def _delete_expired(self, conn: ConnT, cutoff: float) -> int:
        """Delete up to ``retention_chunk`` readings older than ``cutoff``; how many went."""

    def _error_text(self, exc: BaseException) -> str:
        """``exc`` as one line for ``stats.last_error`` and the log."""
        return str(exc)

    def _report_bad_data(self, exc: BaseException) -> None:
        """Log a batch or alert dropped because the database refused it."""
        self._rl.warning(
            "bad-data", "history store %s: dropped data it cannot store: %s", self._label, exc
        )

    def _writer_stopping(self) -> None:
        """Last use of the writer connection before the writer thread closes it."""

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
                    self._committed = max(self._committed, work.ticket)
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
                commit = self._commit_target > self._committed
                if retry_at is not None:  # a failed write is held: only the pause decides
                    if self._closing or now >= retry_at:
                        return self._take_locked(flush)
                    deadline = retry_at
                elif (
                    self._closing
                    or flush
                    or commit
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
        except self._data_errors as exc:
            self._write_failed(exc)
            return self._write_one_by_one(held, sync)
        except Exception as exc:  # the database cannot be written now: retry later
            self._write_failed(exc)
            return False
        held.batches, held.alerts = [], []
        return True

    def _write_one_by_one(self, held: _Work, sync: bool) -> bool:
        """After a data error: commit batch by batch, dropping the ones the database refuses."""
        while held.batches or held.alerts:
            batches: list[Batch]
            alerts: list[Alert]
            batches, alerts = ([held.batches[0]], []) if held.batches else ([], [held.alerts[0]])
            try:
                self._commit(batches, alerts, False)
            except self._data_errors as exc:
                rows = sum(len(b[0]) for b in batches)
                with self._lock:
                    self._dropped += rows
                    self._alerts_dropped += len(alerts)
                    self._held_rows -= rows
                    self._held_alerts -= len(alerts)
                self._report_bad_data(exc)
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

    def _count_commit(
        self, rows: int, alerts: int, elapsed: float, bad: int = 0, duplicates: int = 0
    ) -> None:
        """Count a committed transaction: ``rows`` readings taken (``bad`` of them left out
        as unstorable, ``duplicates`` already stored) and ``alerts`` alerts, in ``elapsed``
        seconds."""
        with self._lock:
            self._written += rows - bad - duplicates
            self._duplicates += duplicates
            self._dropped += bad
            self._alerts_written += alerts
            self._held_rows -= rows
            self._held_alerts -= alerts
            if rows or alerts:
                self._write_seconds = elapsed
                self._write_rows = rows - bad + alerts

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(*self._db_errors):
                self._conn.close()
            self._conn = None

    def _write_failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {self._error_text(exc)}"
        with self._lock:
            self._errors += 1
            self._last_error = message
            queued = self._held_rows + self._queued_rows
        if isinstance(exc, self._data_errors):
            return  # the batch at fault is found, dropped and logged by _write_one_by_one
        self._rl.warning(
            "write-error",
            "history store %s: write failed (%s); %d rows waiting, retrying",
            self._label,
            message,
            queued,
        )
        self._drop_connection()  # reopened (with its schema) on the next attempt

    def _expire_chunk(self) -> float:
        """Delete one chunk of expired readings; the pause before the next chunk."""
        conn = self._conn
        if conn is None:
            return self._retention_interval
        cutoff = self._clock() - self._retention_s
        try:
            deleted = self._delete_expired(conn, cutoff)
        except self._db_errors as exc:
            self._write_failed(exc)
            return self._retention_interval
        with self._lock:
            self._expired += deleted
        # More may be waiting: go on soon, but after any queued writes (_next_work's order).
        return 0.0 if deleted > 0 else self._retention_interval

    def _shutdown_writer(self, held: _Work) -> None:
        if held.batches or held.alerts:
            rows = sum(len(b[0]) for b in held.batches)
            self._log.error(
                "history store %s: closing with %d readings and %d alerts not written (%s)",
                self._label,
                rows,
                len(held.alerts),
                self._last_error,
            )
        self._writer_stopping()
        self._drop_connection()
        with self._lock:
            self._done.notify_all()


_SENSORS: Final = (
    "WITH RECURSIVE s(id) AS (SELECT min(sensor_id) FROM readings UNION ALL "
    "SELECT (SELECT min(sensor_id) FROM readings WHERE sensor_id > s.id) FROM s "
    "WHERE s.id IS NOT NULL) SELECT id FROM s WHERE id IS NOT NULL"
)
"""Every sensor id in the readings, one index seek each (a loose index scan)."""

ALERT_COLUMNS: Final = (
    "sensor_id, detector, severity, state, value, score, threshold, expected_low, "
    "expected_high, reading_ts, alert_ts, message"
)


def alert_row(a: Alert) -> tuple[Any, ...]:
    """An alert as the row both backends store (columns in the schema's order)."""
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


def alert_from_row(r: Sequence[Any]) -> Alert:
    """The alert of a stored row (a NaN score comes back from SQLite as NULL)."""
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

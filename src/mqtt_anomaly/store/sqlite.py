"""The SQLite history store: one writer thread, a bounded queue, batched inserts.

The event loop only appends to an in-memory queue (:meth:`SqliteStore.add_readings` keeps the
caller's columns as they are, one tuple per batch). A writer thread commits what is queued
when ``batch_size`` rows are waiting or ``flush_interval`` seconds after the first of them, in
one transaction, one ``executemany`` per batch. The file is in WAL mode with
``synchronous=NORMAL``: a commit survives a crash of the process, and :meth:`~SqliteStore.flush`
commits with ``synchronous=FULL`` so that what it waited for also survives a power cut.

Back-pressure: the queue holds at most ``max_queued_rows`` readings. A batch that does not fit
is dropped and counted (``stats.dropped``, one log line per 10 s at most); alerts have their
own, much larger bound, so a full queue never costs an alert.

Failures after opening (disk full, file made read-only, I/O error) are counted in
``stats.errors``, logged at most every 10 s, and retried with a growing pause (0.1 s to 5 s);
nothing is raised into the caller. Data SQLite refuses as such (a value it cannot bind) is
dropped batch by batch, so one bad batch cannot block the queue.

Retention: readings older than ``retention_days`` are deleted by the writer thread, oldest
rows first and ``retention_chunk`` rows per transaction, between writes.

Reads use a pool of separate connections: in WAL mode they see the last commit and never wait
for the writer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import numpy as np

from ..config import StoreSettings
from ..console import RateLimitedLog
from ..errors import StoreError
from ..messages import Alert
from .base import FloatColumn, IntColumn, ReadingRow, StoreStats

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    flushed_at REAL
);
CREATE TABLE IF NOT EXISTS readings (
    sensor_id TEXT NOT NULL,
    ts REAL NOT NULL,
    value REAL NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_sensor_ts ON readings (sensor_id, ts);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    sensor_id TEXT NOT NULL,
    detector TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    value REAL,
    score REAL,
    threshold REAL,
    expected_low REAL,
    expected_high REAL,
    reading_ts REAL,
    alert_ts REAL NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (alert_ts);
CREATE INDEX IF NOT EXISTS alerts_sensor_ts ON alerts (sensor_id, alert_ts);
"""
_ALERT_COLUMNS: Final = (
    "sensor_id, detector, severity, state, value, score, threshold, expected_low, "
    "expected_high, reading_ts, alert_ts, message"
)
_INSERT_READING: Final = "INSERT INTO readings (sensor_id, ts, value, seq) VALUES (?, ?, ?, ?)"
_INSERT_ALERT: Final = f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES ({', '.join('?' * 12)})"
_EXPIRE: Final = (
    "DELETE FROM readings WHERE rowid IN "
    "(SELECT rowid FROM readings ORDER BY rowid LIMIT ?) AND ts < ?"
)
_PRAGMA_NAME: Final = re.compile(r"[a-z_]+")
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0
# Errors that mean "this data cannot be stored" rather than "the database cannot be written".
_DATA_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    TypeError,
    ValueError,
    OverflowError,
)

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


class SqliteStore:
    """History in one SQLite file. See the module docstring for the threading model.

    ``max_queued_rows`` bounds the readings waiting to be written, including a batch being
    retried (memory, and what a crash loses); ``max_queued_alerts`` bounds alerts separately.
    ``busy_timeout`` is how long a write waits for another process's lock before it counts
    as failed. ``pragmas`` are applied to the writer connection after the defaults
    (e.g. ``{"mmap_size": 268435456}``).
    """

    def __init__(
        self,
        path: Path | str,
        settings: StoreSettings | None = None,
        *,
        max_queued_rows: int = 250_000,
        max_queued_alerts: int = 1_000_000,
        retention_interval: float = 60.0,
        retention_chunk: int = 5_000,
        busy_timeout: float = 10.0,
        pragmas: Mapping[str, int | str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = settings or StoreSettings()
        self.path = Path(path)
        self._keep_readings = settings.readings
        self._batch_size = settings.batch_size
        self._flush_interval = settings.flush_interval
        self._retention_s = settings.retention_days * 86400.0
        self._retention_interval = retention_interval
        self._retention_chunk = retention_chunk
        self._max_rows = max_queued_rows
        self._max_alerts = max_queued_alerts
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._pragmas = dict(pragmas or {})
        for name in self._pragmas:
            if not _PRAGMA_NAME.fullmatch(name):
                raise StoreError(f"history store: invalid pragma name {name!r}")
        self._rl = RateLimitedLog(log, period=10.0)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits for work on this
        self._done = threading.Condition(self._lock)  # flush() waits for commits on this
        self._readings: list[_Batch] = []
        self._alerts: list[Alert] = []
        self._queued_rows = 0
        self._first_at = 0.0
        self._enqueued = 0  # tickets: one per accepted batch or alert
        self._flush_target = 0
        self._synced = 0  # every ticket up to this one is committed with synchronous=FULL
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

        self._conn: sqlite3.Connection | None = self._open_writer()
        self._idle_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        try:
            self._release_reader(self._open_reader())
        except StoreError:
            self._conn.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"store-writer:{self.path.name}", daemon=True
        )
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
            self.path,
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
            self.path,
            dropped,
        )

    def _enqueue_locked(self) -> None:
        if not (self._readings or self._alerts):
            self._first_at = time.monotonic()
            self._wake.notify()
        self._enqueued += 1

    def flush(self, timeout: float) -> bool:
        """Block until everything enqueued so far is committed and synced to disk.

        Returns False when ``timeout`` runs out first (e.g. the disk is full).
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
        """Write what is queued (waiting at most ``timeout``), stop the writer, close files."""
        if self._closed:
            return
        if not self.flush(timeout):
            log.error("history store %s: could not write everything before closing", self.path)
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
            ("sensor_id = ?", sensor_id),
            ("alert_ts >= ?", since),
            ("detector = ?", detector),
        ):
            if arg is not None:
                where.append(clause)
                args.append(arg)
        sql = f"SELECT {_ALERT_COLUMNS} FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY alert_ts DESC, id DESC LIMIT ?"
        rows = self._query(sql, (*args, limit))
        return [_alert_from_row(r) for r in rows]

    def readings(
        self,
        sensor_id: str,
        *,
        start: float | None = None,
        end: float | None = None,
        limit: int = 10_000,
    ) -> list[ReadingRow]:
        """``(ts, value, seq)`` of one sensor, oldest first (see :class:`Store`)."""
        sql = "SELECT ts, value, seq FROM readings WHERE sensor_id = ?"
        args: list[Any] = [sensor_id]
        if start is not None:
            sql += " AND ts >= ?"
            args.append(start)
        if end is not None:
            sql += " AND ts <= ?"
            args.append(end)
        if start is not None:
            return self._query(sql + " ORDER BY ts ASC LIMIT ?", (*args, limit))
        rows = self._query(sql + " ORDER BY ts DESC LIMIT ?", (*args, limit))
        rows.reverse()
        return rows

    def _query(self, sql: str, args: Sequence[Any]) -> list[Any]:
        if self._closed:
            raise StoreError(f"history store {self.path} is closed")
        conn = self._acquire_reader()
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"history store {self.path}: read failed: {exc}") from exc
        finally:
            self._release_reader(conn)

    def _acquire_reader(self) -> sqlite3.Connection:
        with self._readers_lock:
            if self._idle_readers:
                return self._idle_readers.pop()
        return self._open_reader()

    def _release_reader(self, conn: sqlite3.Connection) -> None:
        with self._readers_lock:
            if not self._closed:
                self._idle_readers.append(conn)
                return
        conn.close()

    def _open_reader(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise StoreError(_open_message(self.path, exc)) from None
        return conn

    # ---- opening ---------------------------------------------------------------------
    def _open_writer(self) -> sqlite3.Connection:
        """Open the file, set it up, create the schema; StoreError with one clear line."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            reason = f"{self.path.parent} is not a directory (a file is in the way)"
            raise StoreError(f"cannot open history store {self.path}: {reason}") from None
        except OSError as exc:
            reason = f"cannot create directory {self.path.parent}: {exc.strerror}"
            raise StoreError(f"cannot open history store {self.path}: {reason}") from None
        if self.path.is_dir():
            raise StoreError(f"cannot open history store {self.path}: is a directory")
        try:
            return self._connect()
        except (sqlite3.Error, StoreError) as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(_open_message(self.path, exc)) from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("history store %s: WAL not available, journal mode %s", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: the index's hot pages fit
            for name, value in self._pragmas.items():
                conn.execute(f"PRAGMA {name} = {_pragma_value(value)}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            if row[0] is None:
                conn.execute(
                    "INSERT INTO schema_version (version, created_at) VALUES (?, ?)",
                    (SCHEMA_VERSION, time.time()),
                )
            elif row[0] > SCHEMA_VERSION:
                raise StoreError(
                    f"cannot open history store {self.path}: schema version {row[0]} is newer "
                    f"than this program's ({SCHEMA_VERSION}); upgrade mqtt-anomaly"
                )
            else:  # a real write, so that a read-only file fails here and not later
                conn.execute("UPDATE schema_version SET version = version")
            conn.execute("COMMIT")
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
                if retry_at is not None:  # a failed write is held: only the pause decides
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
        except Exception as exc:  # the database cannot be written now: retry later
            self._write_failed(exc)
            return False
        held.batches, held.alerts = [], []
        return True

    def _write_one_by_one(self, held: _Work, sync: bool) -> bool:
        """After a data error: commit batch by batch, dropping the ones SQLite refuses."""
        while held.batches or held.alerts:
            if held.batches:
                batches, alerts = [held.batches[0]], []
            else:
                batches, alerts = [], [held.alerts[0]]
            try:
                self._commit(batches, alerts, False)
            except _DATA_ERRORS as exc:
                rows = sum(len(b[0]) for b in batches)
                with self._lock:
                    self._dropped += rows
                    self._alerts_dropped += len(alerts)
                    self._held_rows -= rows
                    self._held_alerts -= len(alerts)
                self._rl.warning(
                    "bad-data", "history store %s: dropped data it cannot store: %s", self.path, exc
                )
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
        """One transaction; raises what SQLite raises (rolled back, connection reset)."""
        conn = self._conn or self._reconnect()
        started = time.perf_counter()
        rows = 0
        try:
            if sync:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN")
            for batch in batches:
                _insert_readings(conn, batch)
                rows += len(batch[0])
            if alerts:
                conn.executemany(_INSERT_ALERT, [_alert_row(a) for a in alerts])
            if sync:
                conn.execute("UPDATE schema_version SET flushed_at = ?", (time.time(),))
            conn.execute("COMMIT")
            if sync:
                conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            self._rollback()
            raise
        elapsed = time.perf_counter() - started
        with self._lock:
            self._written += rows
            self._alerts_written += len(alerts)
            self._held_rows -= rows
            self._held_alerts -= len(alerts)
            if rows or alerts:
                self._write_seconds = elapsed
                self._write_rows = rows + len(alerts)

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error:
            self._drop_connection()

    def _reconnect(self) -> sqlite3.Connection:
        try:
            self._conn = self._connect()
        except StoreError as exc:
            raise sqlite3.OperationalError(str(exc)) from None
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _write_failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._errors += 1
            self._last_error = message
            queued = self._held_rows + self._queued_rows
        if isinstance(exc, _DATA_ERRORS):
            return  # the batch at fault is found, dropped and logged by _write_one_by_one
        self._rl.warning(
            "write-error",
            "history store %s: write failed (%s); %d rows waiting, retrying",
            self.path,
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
            deleted = conn.execute(_EXPIRE, (self._retention_chunk, cutoff)).rowcount
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return self._retention_interval
        with self._lock:
            self._expired += deleted
        # More may be waiting: go on soon, but after any queued writes (_next_work's order).
        return 0.0 if deleted > 0 else self._retention_interval

    def _shutdown_writer(self, held: _Work) -> None:
        if held.batches or held.alerts:
            rows = sum(len(b[0]) for b in held.batches)
            log.error(
                "history store %s: closing with %d readings and %d alerts not written (%s)",
                self.path,
                rows,
                len(held.alerts),
                self._last_error,
            )
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")
        self._drop_connection()
        with self._lock:
            self._done.notify_all()


def _insert_readings(conn: sqlite3.Connection, batch: _Batch) -> None:
    """Insert one batch with one ``executemany``, straight from its columns."""
    conn.executemany(_INSERT_READING, zip(*(_plain_column(c) for c in batch), strict=True))


def _plain_column(column: Sequence[Any] | np.ndarray[Any, Any]) -> Sequence[Any]:
    """Python values for sqlite3, which would bind a numpy scalar as a BLOB."""
    if isinstance(column, np.ndarray):
        return column.tolist()  # type: ignore[no-any-return]
    if len(column) and isinstance(column[0], np.generic):
        return [x.item() if isinstance(x, np.generic) else x for x in column]
    return column


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
    score = math.nan if r[5] is None else r[5]  # SQLite stores NaN as NULL
    return Alert(
        sensor_id=r[0],
        detector=r[1],
        severity=r[2],
        state=r[3],
        value=r[4],
        score=score,
        threshold=r[6],
        expected_low=r[7],
        expected_high=r[8],
        reading_ts=r[9],
        alert_ts=r[10],
        message=r[11],
    )


def _pragma_value(value: int | str) -> str:
    if isinstance(value, int):
        return str(int(value))
    if not _PRAGMA_NAME.fullmatch(value.lower()):
        raise StoreError(f"history store: invalid pragma value {value!r}")
    return value


def _open_message(path: Path, exc: sqlite3.Error) -> str:
    """One line saying why ``path`` cannot be used, in the user's terms."""
    text = str(exc)
    lowered = text.lower()
    directory = path.parent
    if "readonly" in lowered or "read-only" in lowered:
        reason = "the file or its directory is read-only"
    elif "disk is full" in lowered or "database or disk is full" in lowered:
        reason = "the disk is full"
    elif "not a database" in lowered:
        reason = "the file exists but is not a SQLite database"
    elif "unable to open" in lowered:
        if not os.access(directory, os.W_OK | os.X_OK):
            reason = f"directory {directory} is not writable"
        elif path.exists() and not os.access(path, os.R_OK | os.W_OK):
            reason = "the file is not readable and writable by this user"
        else:
            reason = "unable to open the database file"
    else:
        reason = text
    return f"cannot open history store {path}: {reason}"

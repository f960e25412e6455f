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
import os
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np

from ..config import StoreSettings
from ..errors import StoreError
from ..messages import Alert
from .feedback import FeedbackSql
from .migrations import SCHEMA_VERSION, create_steps, sqlite_steps
from .queued import QueuedStore
from .rows import ALERT_COLUMNS, ALERT_WIDTH, Batch, alert_row

log = logging.getLogger(__name__)

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
CREATE UNIQUE INDEX IF NOT EXISTS readings_key ON readings (sensor_id, ts, seq);
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
-- the alerts' unique key is a migration step (version 6 of migrations.MIGRATIONS)
"""
# Version 1 had no unique keys: keep the first copy of each row, then add them.
_MIGRATE_1: Final = """
DELETE FROM readings WHERE rowid NOT IN
    (SELECT min(rowid) FROM readings GROUP BY sensor_id, ts, seq);
DELETE FROM alerts WHERE reading_ts IS NOT NULL AND id NOT IN
    (SELECT min(id) FROM alerts GROUP BY sensor_id, detector, state, reading_ts);
DROP INDEX IF EXISTS readings_sensor_ts;
"""
# ON CONFLICT skips a row already stored (uniqueness only: NOT NULL still refuses NaN)
_INSERT_READING: Final = (
    "INSERT INTO readings (sensor_id, ts, value, seq) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_INSERT_ALERT: Final = (
    f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ({', '.join('?' * ALERT_WIDTH)}) "
    "ON CONFLICT DO NOTHING"
)
_EXPIRE: Final = (
    "DELETE FROM readings WHERE rowid IN "
    "(SELECT rowid FROM readings ORDER BY rowid LIMIT ?) AND ts < ?"
)
_PRAGMA_NAME: Final = re.compile(r"[a-z_]+")
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


class SqliteStore(FeedbackSql, QueuedStore[sqlite3.Connection]):
    """History in one SQLite file. See the module docstring for the threading model.

    ``max_queued_rows`` bounds the readings waiting to be written, including a batch being
    retried (memory, and what a crash loses); ``max_queued_alerts`` bounds alerts separately.
    ``busy_timeout`` is how long a write waits for another process's lock before it counts
    as failed. ``pragmas`` are applied to the writer connection after the defaults
    (e.g. ``{"mmap_size": 268435456}``).
    """

    _log = log
    _db_errors = (sqlite3.Error,)
    _data_errors = _DATA_ERRORS

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
        super().__init__(
            settings,
            label=str(self.path),
            max_queued_rows=max_queued_rows,
            max_queued_alerts=max_queued_alerts,
            retention_interval=retention_interval,
            retention_chunk=retention_chunk,
            clock=clock,
        )
        self._busy_timeout = busy_timeout
        self._pragmas = dict(pragmas or {})
        for name in self._pragmas:
            if not _PRAGMA_NAME.fullmatch(name):
                raise StoreError(f"history store: invalid pragma name {name!r}")

        self._conn = self._open_writer()
        try:
            self._release_reader(self._open_reader())
        except StoreError:
            self._conn.close()
            raise
        self._start_writer(f"store-writer:{self.path.name}")

    # ---- reads (recent_alerts and readings come from QueuedStore) ------------------------
    _PARAM: ClassVar[str] = "?"
    _JSON_TEXTS: ClassVar[str] = "json_each(?) AS s"

    def _query(self, sql: str, args: Sequence[Any]) -> list[Any]:
        if self._closed:
            raise StoreError(f"history store {self.path} is closed")
        conn = self._acquire_reader()
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise store_error(self.path, exc, "read") from exc
        finally:
            self._release_reader(conn)

    def _write_now(self, statement: str, args: Sequence[Any]) -> None:
        """One statement on a connection of its own, committed on return (feedback)."""
        if self._closed:
            raise StoreError(f"history store {self.path} is closed")
        try:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
            try:
                conn.execute(statement, args)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise store_error(self.path, exc, "write") from exc

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
            raise store_error(self.path, exc) from exc
        return conn

    # ---- opening ---------------------------------------------------------------------
    def _open_writer(self) -> sqlite3.Connection:
        """Open the file, set it up, create the schema; StoreError with one clear line."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            reason = f"{self.path.parent} is not a directory (a file is in the way)"
            raise StoreError(f"cannot open history store {self.path}: {reason}") from exc
        except OSError as exc:
            reason = f"cannot create directory {self.path.parent}: {exc.strerror}"
            raise StoreError(f"cannot open history store {self.path}: {reason}") from exc
        if self.path.is_dir():
            raise StoreError(f"cannot open history store {self.path}: is a directory")
        try:
            return self._connect()
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc

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
            conn.execute(_SCHEMA.split(";")[0])  # schema_version
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            if row[0] is not None and row[0] < 2:
                for statement in _MIGRATE_1.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if row[0] is None or row[0] <= SCHEMA_VERSION:  # the added columns, idempotently
                existing = {
                    table: {c[1] for c in conn.execute(f"PRAGMA table_info({table})")}
                    for table in ("readings", "alerts")
                }
                for statement in sqlite_steps(existing) + create_steps("sqlite"):
                    conn.execute(statement)
            if row[0] is not None and row[0] < SCHEMA_VERSION:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
                log.info("history store %s: schema upgraded to %d", self.path, SCHEMA_VERSION)
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
    def _commit(self, batches: list[Batch], alerts: list[Alert], sync: bool) -> None:
        """One transaction; raises what SQLite raises (rolled back, connection reset)."""
        conn = self._conn or self._reconnect()
        started = time.perf_counter()
        rows = inserted = 0
        try:
            if sync:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN")
            for batch in batches:
                inserted += _insert_readings(conn, batch)
                rows += len(batch[0])
            if alerts:
                conn.executemany(_INSERT_ALERT, [alert_row(a) for a in alerts])
            if sync:
                conn.execute("UPDATE schema_version SET flushed_at = ?", (time.time(),))
            conn.execute("COMMIT")
            if sync:
                conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            self._rollback()
            raise
        self._count_commit(
            rows, len(alerts), time.perf_counter() - started, duplicates=rows - inserted
        )

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
        except StoreError as exc:  # to the writer, a failed reconnect is a failed write
            raise sqlite3.OperationalError(str(exc)) from exc
        return self._conn

    def _delete_expired(self, conn: sqlite3.Connection, cutoff: float) -> int:
        return conn.execute(_EXPIRE, (self._retention_chunk, cutoff)).rowcount

    def _writer_stopping(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")


def _insert_readings(conn: sqlite3.Connection, batch: Batch) -> int:
    """Insert one batch with one ``executemany``, straight from its columns; how many rows
    were new."""
    cur = conn.executemany(_INSERT_READING, zip(*(_plain_column(c) for c in batch), strict=True))
    return max(cur.rowcount, 0)


def _plain_column(column: Sequence[Any] | np.ndarray[Any, Any]) -> Sequence[Any]:
    """Python values for sqlite3, which would bind a numpy scalar as a BLOB."""
    if isinstance(column, np.ndarray):
        return column.tolist()  # type: ignore[no-any-return]
    if len(column) and isinstance(column[0], np.generic):
        return [x.item() if isinstance(x, np.generic) else x for x in column]
    return column


def _pragma_value(value: int | str) -> str:
    if isinstance(value, int):
        return str(int(value))
    if not _PRAGMA_NAME.fullmatch(value.lower()):
        raise StoreError(f"history store: invalid pragma value {value!r}")
    return value


def store_error(path: Path, exc: sqlite3.Error, action: str = "open") -> StoreError:
    """The one place sqlite3's errors become :class:`StoreError`; raise it ``from exc``.

    ``action`` is ``"open"`` (the message says why the file cannot be used) or what failed
    (``"read"``)."""
    if action == "open":
        return StoreError(_open_message(path, exc))
    return StoreError(f"history store {path}: {action} failed: {exc}")


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

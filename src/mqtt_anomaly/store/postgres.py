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

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Final

import numpy as np
import psycopg
from psycopg import sql

from ..config import StoreSettings
from ..errors import StoreError
from ..messages import Alert
from .feedback import FeedbackSql
from .migrations import ADDED_COLUMNS, SCHEMA_VERSION, create_steps, postgres_steps
from .queued import QueuedStore
from .rows import ALERT_WIDTH, Batch, alert_row

log = logging.getLogger(__name__)

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
    "CREATE UNIQUE INDEX IF NOT EXISTS readings_key ON readings (sensor_id, ts, seq)",
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
)  # the alerts' unique key is a migration step (version 6 of migrations.MIGRATIONS)
# Version 1 had no unique keys: keep the first copy of each row, then add them (_SCHEMA).
_MIGRATE_1: Final = (
    """DELETE FROM readings r USING readings d
        WHERE r.sensor_id = d.sensor_id AND r.ts = d.ts AND r.seq = d.seq AND r.ctid > d.ctid""",
    """DELETE FROM alerts a USING alerts d
        WHERE a.sensor_id = d.sensor_id AND a.detector = d.detector AND a.state = d.state
        AND a.reading_ts = d.reading_ts AND a.id > d.id""",
    "DROP INDEX IF EXISTS readings_sensor_ts",
)
# Readings are copied into a per-connection staging table, then inserted with ON CONFLICT:
# COPY itself cannot skip a row that is already stored.
_STAGING: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS readings_in "
    "(LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_FROM_STAGING: Final = "INSERT INTO readings SELECT * FROM readings_in ON CONFLICT DO NOTHING"
TABLES: Final = {
    "schema_version": ("version", "created_at", "flushed_at"),
    "readings": ("sensor_id", "ts", "value", "seq"),
    "alerts": (
        "id", "sensor_id", "detector", "severity", "state", "value", "score", "threshold",
        "expected_low", "expected_high", "reading_ts", "alert_ts", "message",
        *ADDED_COLUMNS["alerts"],
    ),
}  # fmt: skip
_ALERT_COLUMNS: Final = ", ".join(TABLES["alerts"][1:])
_COPY_READINGS: Final = "COPY readings_in (sensor_id, ts, value, seq) FROM STDIN (FORMAT BINARY)"
_INSERT_ALERT: Final = (
    f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES ({', '.join(['%s'] * ALERT_WIDTH)}) "
    "ON CONFLICT DO NOTHING"
)
_EXPIRE: Final = (
    "DELETE FROM readings WHERE ctid = ANY(ARRAY(SELECT ctid FROM readings WHERE ts < %s LIMIT %s))"
)
_POOL: Final = 4
_DATA_ERRORS: Final = (psycopg.DataError, psycopg.IntegrityError, TypeError, ValueError)


class PostgresStore(FeedbackSql, QueuedStore[psycopg.Connection[Any]]):
    """History in a PostgreSQL database. See the module docstring for the policy.

    ``max_queued_rows`` bounds the readings waiting (memory, and what a crash loses);
    ``max_queued_alerts`` bounds alerts separately. ``lock_timeout`` and ``connect_timeout``
    (seconds) bound how long one write attempt may wait before it counts as failed.
    """

    _log = log
    _db_errors = (psycopg.Error,)
    _data_errors = _DATA_ERRORS

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
        super().__init__(
            settings,
            label=self.name,
            max_queued_rows=max_queued_rows,
            max_queued_alerts=max_queued_alerts,
            retention_interval=retention_interval,
            retention_chunk=retention_chunk,
            clock=clock,
        )
        self._lock_timeout_ms = max(1, int(lock_timeout * 1000))
        self._connect_timeout = max(1, math.ceil(connect_timeout))

        try:
            self._conn = self._connect(schema=True)
        except psycopg.Error as exc:
            raise store_error(self.name, exc) from exc
        self._start_writer("store-writer:pg")

    # ---- reads (recent_alerts and readings come from QueuedStore) ------------------------
    _PARAM: ClassVar[str] = "%s"
    _JSON_TEXTS: ClassVar[str] = "json_array_elements_text(%s::json) AS s"

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
                raise store_error(self.name, exc, "read") from exc
        with self._readers_lock:
            if len(self._idle_readers) < _POOL and not self._closed:
                self._idle_readers.append(conn)
                conn = None
        if conn is not None:
            conn.close()
        return rows

    def _write_now(self, statement: str, args: Sequence[Any]) -> None:
        """One statement on a connection of its own, committed on return (feedback)."""
        if self._closed:
            raise StoreError(f"history store {self.name} is closed")
        try:
            with self._connect(schema=False) as conn:
                conn.execute(statement.encode(), args)
        except psycopg.Error as exc:
            raise store_error(self.name, exc, "write") from exc

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
                    conn.execute(_SCHEMA[0].encode())  # schema_version
                    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                    version = row[0] if row else None
                    if version is not None and version < 2:
                        for statement in _MIGRATE_1:
                            conn.execute(statement.encode())
                    for statement in _SCHEMA[1:]:
                        conn.execute(statement.encode())
                    if version is None or version <= SCHEMA_VERSION:  # idempotent steps
                        for statement in postgres_steps() + create_steps("postgres"):
                            conn.execute(statement.encode())
                    if version is not None and version < SCHEMA_VERSION:
                        conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
                        log.info(
                            "history store %s: schema upgraded to %d", self.name, SCHEMA_VERSION
                        )
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
    def _commit(self, batches: list[Batch], alerts: list[Alert], sync: bool) -> None:
        """One transaction; raises what psycopg raises (rolled back)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = self._connect(schema=True)
        started = time.perf_counter()
        rows = bad = inserted = 0
        with conn.transaction(), conn.cursor() as cur:
            if batches:
                cur.execute(_STAGING)
                with cur.copy(_COPY_READINGS) as copy:
                    copy.set_types(["text", "float8", "float8", "int8"])
                    for batch in batches:
                        rows += len(batch[0])
                        bad += _copy_rows(copy, batch)
                cur.execute(_FROM_STAGING)
                inserted = max(cur.rowcount, 0)
            if alerts:
                cur.executemany(_INSERT_ALERT, [alert_row(a) for a in alerts])
            if sync:
                cur.execute("UPDATE schema_version SET flushed_at = %s", (time.time(),))
        self._count_commit(
            rows, len(alerts), time.perf_counter() - started, bad, rows - bad - inserted
        )
        if bad:
            self._rl.warning(
                "bad-rows",
                "history store %s: dropped %d readings it cannot store (not finite or NUL)",
                self.name,
                bad,
            )

    def _delete_expired(self, conn: psycopg.Connection[Any], cutoff: float) -> int:
        return max(conn.execute(_EXPIRE, (cutoff, self._retention_chunk)).rowcount, 0)

    def _error_text(self, exc: BaseException) -> str:
        return _reason(exc)

    def _report_bad_data(self, exc: BaseException) -> None:
        log.error("history store %s: dropped data it cannot store: %s", self.name, exc)


def _copy_rows(copy: psycopg.Copy, batch: Batch) -> int:
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


def store_error(name: str, exc: psycopg.Error, action: str = "open") -> StoreError:
    """The one place psycopg's errors become :class:`StoreError`; raise it ``from exc``.

    ``name`` is the URL without its password; ``action`` is ``"open"`` or what failed
    (``"read"``). The message is the error's first line, without libpq's details."""
    if action == "open":
        return StoreError(f"cannot open history store {name}: {_reason(exc)}")
    return StoreError(f"history store {name}: {action} failed: {_reason(exc)}")


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

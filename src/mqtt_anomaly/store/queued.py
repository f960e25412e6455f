"""The history-store front-end both SQL backends share: a :class:`~mqtt_anomaly.writebehind.
WriteBehind` queue in front of the database, and the SQL reads of :mod:`.queries`.

:class:`QueuedStore` is what the service writes to; a backend (:mod:`.sqlite`,
:mod:`.postgres`) adds only how to connect, how to commit one transaction, how to delete one
chunk of expired readings, and how to run one read query.

The queue
    :meth:`~QueuedStore.add_readings` and :meth:`~QueuedStore.add_alert` only append to the
    write-behind queue under a lock: they never wait for the database, so the event loop
    calls them directly. Readings are kept as the caller's columns, one tuple per batch (a
    *bulk* item weighing its rows); alerts are *priority* items. Every accepted batch or
    alert takes a ticket (a running count).

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
    ``stats.errors``, logged at most every 10 s, and the same data is retried after a pause
    of :data:`WRITE_RETRY` (0.1 s doubling to 5 s) on a new connection; nothing is raised
    into the caller. A data error (a value the database refuses) is isolated by committing
    batch by batch and alert by alert, dropping only what is refused. Between writes,
    readings older than ``retention_days`` are deleted one chunk per transaction.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Final, Generic, Protocol, TypeVar

from .._lifecycle import Closing
from ..config import StoreSettings
from ..console import RateLimitedLog
from ..messages import Alert
from ..retry import Backoff
from ..writebehind import Pending, WriteBehind
from .base import FloatColumn, IntColumn, StoreStats
from .queries import SqlReads
from .rows import Batch, batch_rows

WRITE_RETRY: Final = Backoff(initial=0.1, factor=2.0, max=5.0)
"""The pause before a failed write is tried again (reset by a success)."""


class Connection(Protocol):
    """What the shared code does with a backend's connection: close it."""

    def close(self) -> None: ...


ConnT = TypeVar("ConnT", bound=Connection)


class QueuedStore(SqlReads, Closing, Generic[ConnT]):
    """A history store with a write-behind queue and one writer thread (see the module
    docstring).

    A backend sets the class attributes, calls ``super().__init__``, opens its writer
    connection into ``self._conn``, calls :meth:`_start_writer`, and implements
    :meth:`_commit`, :meth:`_delete_expired` and :meth:`_query`. Idle read connections go in
    ``self._idle_readers`` and are closed by :meth:`close`.
    """

    _log: ClassVar[logging.Logger]
    """The backend's logger (its module's)."""
    _db_errors: ClassVar[tuple[type[Exception], ...]]
    """What the driver raises."""
    _data_errors: ClassVar[tuple[type[Exception], ...]]
    """Errors that mean "this data cannot be stored" rather than "cannot write now"."""

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
        self._retention_s = settings.retention_days * 86400.0
        self._retention_interval = retention_interval
        self._retention_chunk = retention_chunk
        self._clock = clock
        self._rl = RateLimitedLog(self._log, period=10.0)

        self._lock = threading.Lock()  # the counters below
        self._written = 0
        self._alerts_written = 0
        self._errors = 0
        self._last_error: str | None = None
        self._write_seconds = 0.0
        self._write_rows = 0
        self._expired = 0
        self._duplicates = 0
        self._closed = False

        self._conn: ConnT | None = None
        self._idle_readers: list[ConnT] = []
        self._readers_lock = threading.Lock()
        self._queue: WriteBehind[Batch, Alert] = WriteBehind(
            name="store-writer",
            write=self._write,
            weigh=batch_rows,
            max_bulk=max_queued_rows,
            max_priority=max_queued_alerts,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            retry=WRITE_RETRY,
            on_error=self._write_failed,
            idle=self._expire_chunk,
            idle_first=min(retention_interval, 1.0),
            on_stop=self._shutdown_writer,
        )

    def _start_writer(self, name: str) -> None:
        self._queue.start(name)

    # ---- the event-loop side ---------------------------------------------------------
    @property
    def stats(self) -> StoreStats:
        """A snapshot of the counters."""
        queued, dropped, alerts_dropped = self._queue.snapshot()
        with self._lock:
            return StoreStats(
                written=self._written,
                alerts_written=self._alerts_written,
                queued=queued,
                dropped=dropped,
                alerts_dropped=alerts_dropped,
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
        if n == 0 or self._queue.offer_bulk((sensor_ids, ts, values, seqs), n):
            return
        self._rl.warning(
            "queue-full",
            "history store %s: queue full (%d rows) or closed, readings dropped (%d so far)",
            self._label,
            self._queue.max_bulk,
            self._queue.dropped_bulk,
        )

    def add_alert(self, alert: Alert) -> None:
        """Enqueue one alert; never blocks."""
        if self._queue.offer(alert):
            return
        self._rl.warning(
            "alerts-full",
            "history store %s: alert queue full or closed, alerts dropped (%d so far)",
            self._label,
            self._queue.dropped_priority,
        )

    # ---- delivery tracking (see the module docstring) ----------------------------------
    def mark(self) -> int:
        """The ticket of everything enqueued so far; the writer commits it soon."""
        return self._queue.mark()

    def wait_confirmed(self, ticket: int, timeout: float) -> bool:
        """Block until every ticket up to ``ticket`` is committed; False on timeout."""
        return self._queue.wait_confirmed(ticket, timeout)

    @property
    def backlog(self) -> int:
        """Readings and alerts enqueued and not yet committed."""
        return self._queue.backlog

    @property
    def backlog_limit(self) -> int:
        return self._queue.backlog_limit

    def flush(self, timeout: float) -> bool:
        """Block until everything enqueued so far is committed and synced to disk.

        Returns False when ``timeout`` runs out first (e.g. the disk is full or the database
        is unreachable).
        """
        return self._queue.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (waiting at most ``timeout``), stop the writer, disconnect."""
        if self._closed:
            return
        if not self._queue.close(timeout):
            self._log.error(
                "history store %s: could not write everything before closing", self._label
            )
        self._closed = True
        with self._readers_lock:
            for conn in self._idle_readers:
                conn.close()
            self._idle_readers.clear()

    # ---- what a backend provides -------------------------------------------------------
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

    # ---- the writer thread (WriteBehind's callbacks) -------------------------------------
    def _write(self, held: Pending[Batch, Alert], sync: bool) -> None:
        """Commit everything held; raises (what is left in ``held`` is retried)."""
        try:
            self._commit(held.bulk, held.priority, sync)
        except self._data_errors as exc:
            self._write_failed(exc)
            self._write_one_by_one(held, sync)

    def _write_one_by_one(self, held: Pending[Batch, Alert], sync: bool) -> None:
        """After a data error: commit batch by batch, dropping the ones the database refuses."""
        while held.bulk or held.priority:
            batches: list[Batch]
            alerts: list[Alert]
            batches, alerts = ([held.bulk[0]], []) if held.bulk else ([], [held.priority[0]])
            try:
                self._commit(batches, alerts, False)
            except self._data_errors as exc:
                self._queue.count_dropped(sum(batch_rows(b) for b in batches), len(alerts))
                self._report_bad_data(exc)
            if batches:
                held.bulk.pop(0)
            else:
                held.priority.pop(0)
        if sync:
            self._commit([], [], True)

    def _count_commit(
        self, rows: int, alerts: int, elapsed: float, bad: int = 0, duplicates: int = 0
    ) -> None:
        """Count a committed transaction: ``rows`` readings taken (``bad`` of them left out
        as unstorable, ``duplicates`` already stored) and ``alerts`` alerts, in ``elapsed``
        seconds."""
        if bad:
            self._queue.count_dropped(bad, 0)
        with self._lock:
            self._written += rows - bad - duplicates
            self._duplicates += duplicates
            self._alerts_written += alerts
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
        if isinstance(exc, self._data_errors):
            return  # the batch at fault is found, dropped and logged by _write_one_by_one
        self._rl.warning(
            "write-error",
            "history store %s: write failed (%s); %d rows waiting, retrying",
            self._label,
            message,
            self._queue.backlog_bulk,
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
        # More may be waiting: go on soon, but after any queued writes (WriteBehind's order).
        return 0.0 if deleted > 0 else self._retention_interval

    def _shutdown_writer(self, held: Pending[Batch, Alert]) -> None:
        if held.bulk or held.priority:
            self._log.error(
                "history store %s: closing with %d readings and %d alerts not written (%s)",
                self._label,
                sum(batch_rows(b) for b in held.bulk),
                len(held.priority),
                self._last_error,
            )
        self._writer_stopping()
        self._drop_connection()

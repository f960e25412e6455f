"""The history-store interface the service writes to, and a store that keeps nothing.

Writes (:meth:`Store.add_readings`, :meth:`Store.add_alert`) only enqueue: they never wait for
the disk, so the event loop can call them directly. A store writes in the background and is
made durable with :meth:`Store.flush`. Reads may block and belong in a worker thread
(``await asyncio.to_thread(store.recent_alerts)``) when the event loop must stay responsive.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

from .._lifecycle import Closing
from ..messages import Alert

FloatColumn = Sequence[float] | npt.NDArray[np.floating]
IntColumn = Sequence[int] | npt.NDArray[np.integer]
ReadingRow = tuple[float, float, int]
StoredReading = tuple[str, float, float, int]
"""``(sensor_id, ts, value, seq)``: one stored reading of any sensor."""
AlertCount = tuple[str, str, str, int]
"""``(detector, state, severity, count)``: how many stored alerts share these three."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of a store's counters.

    ``written`` / ``dropped`` count readings rows; ``queued`` counts readings rows plus alerts
    waiting to be written. ``errors`` counts failed write attempts (each retried or, when the
    data itself is at fault, dropped); ``last_error`` is the latest one's message.
    ``write_seconds`` is how long the last batch took to commit, ``write_rows`` its size.
    """

    written: int = 0
    alerts_written: int = 0
    queued: int = 0
    dropped: int = 0
    alerts_dropped: int = 0
    errors: int = 0
    last_error: str | None = None
    write_seconds: float = 0.0
    write_rows: int = 0
    expired: int = 0
    duplicates: int = 0
    """Readings offered again (a redelivery after a crash) and not stored twice."""


@runtime_checkable
class Store(Protocol):
    """Where readings and alerts are kept. Use as a context manager; ``close()`` flushes."""

    @property
    def stats(self) -> StoreStats:
        """Current counters."""
        ...

    def add_readings(
        self,
        sensor_ids: Sequence[str],
        ts: FloatColumn,
        values: FloatColumn,
        seqs: IntColumn,
    ) -> None:
        """Enqueue a batch of readings given column by column (all four the same length).

        Never blocks. The store keeps references to the sequences until they are written:
        the caller must not modify them afterwards. When the queue is full the batch is
        dropped and counted in ``stats.dropped``.
        """
        ...

    def add_alert(self, alert: Alert) -> None:
        """Enqueue one alert event. Never blocks; alerts are kept when readings are dropped."""
        ...

    def recent_alerts(
        self,
        *,
        limit: int = 50,
        sensor_id: str | None = None,
        since: float | None = None,
        detector: str | None = None,
        shadow: bool = False,
    ) -> list[Alert]:
        """Alerts newest first (by ``alert_ts``), optionally filtered; ``shadow``: those of
        shadow candidates (``[shadow]``) instead of the live configuration's."""
        ...

    def readings(
        self,
        sensor_id: str,
        *,
        start: float | None = None,
        end: float | None = None,
        limit: int = 10_000,
    ) -> list[ReadingRow]:
        """``(ts, value, seq)`` of one sensor, oldest first, with ``start <= ts <= end``.

        With ``start`` given, the first ``limit`` rows from ``start`` on; without it, the
        latest ``limit`` rows up to ``end``.
        """
        ...

    def scan_readings(
        self,
        *,
        sensor_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        chunk: int = 10_000,
    ) -> Iterator[list[StoredReading]]:
        """Every reading (of one sensor, or of all) with ``since <= ts <= until``, oldest first.

        Ordered by ``(ts, sensor_id, seq)``, so each sensor's readings come in time order;
        yielded in lists of at most ``chunk`` rows, read one by one as the caller advances,
        so memory stays bounded whatever the history holds.
        """
        ...

    def alert_counts(
        self,
        *,
        sensor_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[AlertCount]:
        """How many alerts with ``since <= alert_ts <= until``, by detector, state, severity."""
        ...

    def flush(self, timeout: float) -> bool:
        """Block until everything enqueued so far is durable; False if ``timeout`` ran out."""
        ...

    def close(self) -> None:
        """Flush (bounded wait), stop background work, release files. Idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class NullStore(Closing):
    """A store that keeps nothing (``none://``): writes are discarded, reads are empty."""

    def __init__(self) -> None:
        self._stats = StoreStats()

    @property
    def stats(self) -> StoreStats:
        return self._stats

    def add_readings(
        self,
        sensor_ids: Sequence[str],
        ts: FloatColumn,
        values: FloatColumn,
        seqs: IntColumn,
    ) -> None:
        return None

    def add_alert(self, alert: Alert) -> None:
        return None

    def recent_alerts(
        self,
        *,
        limit: int = 50,
        sensor_id: str | None = None,
        since: float | None = None,
        detector: str | None = None,
        shadow: bool = False,
    ) -> list[Alert]:
        return []

    def readings(
        self,
        sensor_id: str,
        *,
        start: float | None = None,
        end: float | None = None,
        limit: int = 10_000,
    ) -> list[ReadingRow]:
        return []

    def scan_readings(
        self,
        *,
        sensor_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        chunk: int = 10_000,
    ) -> Iterator[list[StoredReading]]:
        return iter(())

    def alert_counts(
        self,
        *,
        sensor_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[AlertCount]:
        return []

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        return None

"""The SQL reads behind the API, the web history and replay, shared by both backends.

:class:`SqlReads` implements the read side of :class:`~.base.Store` (:meth:`~SqlReads.
recent_alerts`, :meth:`~SqlReads.readings`, :meth:`~SqlReads.scan_readings`,
:meth:`~SqlReads.alert_counts`) in SQL both SQLite and PostgreSQL understand. A backend
gives its placeholder (``_PARAM``), how a query takes a JSON list of strings
(``_JSON_TEXTS``) and :meth:`~SqlReads._query`, which runs one query on a reader connection
and raises :class:`~mqtt_anomaly.errors.StoreError`.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Final

from ..messages import Alert
from .base import AlertCount, ReadingRow, StoredReading
from .rows import ALERT_COLUMNS, alert_from_row

_SENSORS: Final = (
    "WITH RECURSIVE s(id) AS (SELECT min(sensor_id) FROM readings UNION ALL "
    "SELECT (SELECT min(sensor_id) FROM readings WHERE sensor_id > s.id) FROM s "
    "WHERE s.id IS NOT NULL) SELECT id FROM s WHERE id IS NOT NULL"
)
"""Every sensor id in the readings, one index seek each (a loose index scan)."""


class SqlReads(ABC):
    """The read half of a SQL history store (see the module docstring)."""

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
        shadow: bool = False,
    ) -> list[Alert]:
        """Alerts newest first (by ``alert_ts``), optionally filtered; ``shadow``: those of
        shadow candidates instead of the live configuration's."""
        p = self._PARAM
        where, args = self._where(
            ("sensor_id =", sensor_id),
            ("alert_ts >=", since),
            ("detector =", detector),
            ("shadow <>" if shadow else "shadow =", ""),
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
            ("sensor_id =", sensor_id),
            ("alert_ts >=", since),
            ("alert_ts <=", until),
            ("shadow =", ""),  # the live configuration's
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

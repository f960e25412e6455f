"""Row mapping between the package's types and the history tables, shared by both backends.

An :class:`~mqtt_anomaly.messages.Alert` becomes one ``alerts`` row (:func:`alert_row`, in
:data:`ALERT_COLUMNS` order) and comes back with :func:`alert_from_row`; readings travel as
:data:`Batch` column tuples, written as they are and read back as
:data:`~.base.ReadingRow` / :data:`~.base.StoredReading` tuples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final

from ..messages import Alert
from .base import FloatColumn, IntColumn
from .migrations import ADDED_COLUMNS

Batch = tuple[Sequence[str], FloatColumn, FloatColumn, IntColumn]
"""One ``add_readings`` call as given: sensor ids, timestamps, values, sequence numbers."""


def batch_rows(batch: Batch) -> int:
    """How many readings ``batch`` holds."""
    return len(batch[0])


ALERT_COLUMNS: Final = ", ".join(
    (
        "sensor_id", "detector", "severity", "state", "value", "score", "threshold",
        "expected_low", "expected_high", "reading_ts", "alert_ts", "message",
        *ADDED_COLUMNS["alerts"],
    )
)  # fmt: skip
ALERT_WIDTH: Final = ALERT_COLUMNS.count(",") + 1


def _contributions_text(shares: dict[str, float] | None) -> str | None:
    """The contributions as the JSON object the ``contributions`` column holds (NULL: none)."""
    return json.dumps(shares, separators=(",", ":")) if shares else None


def _contributions_of(text: str | None) -> dict[str, float] | None:
    """The stored contributions back (a value that is not a JSON object of numbers: none)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}


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
        a.asset_id,
        _contributions_text(a.contributions),
        a.suppressed or None,
        a.id,
        a.shadow,
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
        asset_id=r[12] or "",
        contributions=_contributions_of(r[13]),
        suppressed=r[14] or "",
        id=r[15] or "",
        shadow=r[16] or "",
    )

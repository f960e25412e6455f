"""Operator feedback on alerts: ``confirmed`` or ``false_alarm``, with an optional note.

One row per alert in the ``feedback`` table (schema step 5, :mod:`.migrations`), keyed by
the alert's id (:func:`mqtt_anomaly.messages.alert_id`, stored with the alert since that
step); a second verdict on the same alert replaces the first. The row copies the alert's
sensor, detector, reading time and alert time, so feedback stays usable as labels after the
alert itself expired. Written at once (not through the write-behind queue: an operator's
click is answered when it is stored), read for ``GET /api/feedback`` and as labels
(``--labels feedback:STORE_URL``, :mod:`mqtt_anomaly.models.data`): ``confirmed`` labels the
alert's reading anomalous, ``false_alarm`` normal.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Final, Literal, Protocol, runtime_checkable

from ..errors import StoreError
from ..messages import Alert
from .rows import ALERT_COLUMNS, alert_from_row

Verdict = Literal["confirmed", "false_alarm"]
VERDICTS: Final = ("confirmed", "false_alarm")
MAX_NOTE: Final = 2000
_COLUMNS: Final = "alert_id, sensor_id, detector, reading_ts, alert_ts, verdict, note, at"


@dataclass(frozen=True, slots=True)
class Feedback:
    """An operator's verdict on one raised alert."""

    alert_id: str
    sensor_id: str
    detector: str
    reading_ts: float | None
    alert_ts: float
    verdict: Verdict
    note: str
    at: float

    @property
    def anomalous(self) -> bool:
        """As a label: the alert's reading was anomalous (confirmed) or normal."""
        return self.verdict == "confirmed"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class FeedbackStore(Protocol):
    """A store that keeps feedback (both SQL stores)."""

    def alert_by_id(self, alert_id: str) -> Alert | None: ...

    def add_feedback(self, alert_id: str, verdict: str, note: str = "") -> Feedback: ...

    def feedback(
        self, *, since: float | None = None, until: float | None = None, limit: int = 1000
    ) -> list[Feedback]: ...


class FeedbackSql:
    """Feedback in SQL both backends understand; a backend gives ``_PARAM``, ``_query`` (a
    read) and ``_write_now`` (one statement committed before it returns)."""

    _PARAM: ClassVar[str]

    @abstractmethod
    def _query(self, query: str, args: Sequence[Any]) -> list[Any]: ...

    @abstractmethod
    def _write_now(self, statement: str, args: Sequence[Any]) -> None: ...

    def alert_by_id(self, alert_id: str) -> Alert | None:
        """The live configuration's stored alert event with this id (None: not stored, not
        yet written, or only a shadow candidate's, which no operator was shown)."""
        p = self._PARAM
        rows = self._query(
            f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = {p} AND shadow = ''",
            (alert_id,),
        )
        return alert_from_row(rows[0]) if rows and alert_id else None

    def add_feedback(self, alert_id: str, verdict: str, note: str = "") -> Feedback:
        """Record ``verdict`` on the raised alert ``alert_id`` (replacing an earlier one).

        ValueError for a verdict that is none of :data:`VERDICTS` or a note longer than
        :data:`MAX_NOTE`; LookupError when the store holds no such raised alert."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r}: expected confirmed or false_alarm")
        checked: Verdict = "confirmed" if verdict == "confirmed" else "false_alarm"
        if len(note) > MAX_NOTE:
            raise ValueError(f"note: at most {MAX_NOTE} characters")
        alert = self.alert_by_id(alert_id)
        if alert is None:
            raise LookupError(f"no stored alert {alert_id!r}")
        if alert.state != "raised":
            raise LookupError(f"alert {alert_id!r} is a {alert.state} event, not a raised one")
        fb = Feedback(
            alert_id,
            alert.sensor_id,
            alert.detector,
            alert.reading_ts,
            alert.alert_ts,
            checked,
            note,
            time.time(),
        )
        p = ", ".join([self._PARAM] * 8)
        self._write_now(
            f"INSERT INTO feedback ({_COLUMNS}) VALUES ({p}) ON CONFLICT (alert_id) DO UPDATE "
            "SET verdict = excluded.verdict, note = excluded.note, at = excluded.at",
            (
                fb.alert_id,
                fb.sensor_id,
                fb.detector,
                fb.reading_ts,
                fb.alert_ts,
                fb.verdict,
                fb.note,
                fb.at,
            ),
        )
        return fb

    def feedback(
        self, *, since: float | None = None, until: float | None = None, limit: int = 1000
    ) -> list[Feedback]:
        """Feedback on alerts raised from ``since`` to ``until`` (alert time), oldest first."""
        p = self._PARAM
        where, args = [], []
        if since is not None:
            where.append(f"alert_ts >= {p}")
            args.append(since)
        if until is not None:
            where.append(f"alert_ts <= {p}")
            args.append(until)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM feedback{clause} ORDER BY alert_ts, alert_id LIMIT {p}",
            (*args, limit),
        )
        out = []
        for r in rows:
            if r[5] not in VERDICTS:
                raise StoreError(f"feedback of {r[0]!r}: unknown verdict {r[5]!r}")
            out.append(Feedback(r[0], r[1], r[2], r[3], r[4], r[5], r[6] or "", r[7]))
        return out

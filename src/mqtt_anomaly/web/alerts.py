"""Active alerts and what operators did with them: acknowledge, shelve until a time.

The pipeline knows which alerts are active (one per sensor and detector); the desk keeps the
event that raised each one plus its acknowledgement and shelving, and a bounded in-memory
history of alert events for the feed. Acknowledgement and shelving live in memory: they are
an operator's working notes and end with the alert (a new alert starts unacknowledged) or
with the service.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..messages import Alert
from ..pipeline import Output
from ..view import PipelineView
from .events import alert_json


@dataclass(slots=True)
class ActiveAlert:
    """One active alert and its operator state."""

    sensor_id: str
    detector: str
    severity: str
    raised: Alert | None  # None: restored from saved state, the raising event is not known
    acknowledged_at: float | None = None
    shelved_until: float | None = None

    def shelved(self, now: float) -> bool:
        return self.shelved_until is not None and self.shelved_until > now

    def as_json(self, now: float) -> dict[str, Any]:
        a = self.raised
        return {
            "sensor_id": self.sensor_id,
            "detector": self.detector,
            "severity": self.severity,
            "raised_at": a.alert_ts if a else None,
            "value": a.value if a else None,
            "message": a.message if a else "",
            "acknowledged": self.acknowledged_at is not None,
            "acknowledged_at": self.acknowledged_at,
            "shelved": self.shelved(now),
            "shelved_until": self.shelved_until if self.shelved(now) else None,
        }


class AlertDesk:
    """Active alerts by ``(sensor_id, detector)`` plus a ring of recent alert events."""

    def __init__(self, view: PipelineView, clock: Callable[[], float], history: int = 10_000):
        self.clock = clock
        self.active: dict[tuple[str, str], ActiveAlert] = {}
        self.recent: deque[Alert] = deque(maxlen=history)
        for a in view.all_active_alerts():  # alerts active in restored state
            self.active[(a.sensor_id, a.detector)] = ActiveAlert(
                a.sensor_id, a.detector, a.severity, None
            )

    def observe(self, out: Output) -> None:
        """Track one batch's raised and cleared alerts."""
        for a in out.alerts:
            self.recent.append(a)
            key = (a.sensor_id, a.detector)
            if a.state == "raised":
                self.active[key] = ActiveAlert(a.sensor_id, a.detector, a.severity, a)
            else:
                self.active.pop(key, None)

    def acknowledge(self, sensor_id: str, detector: str) -> ActiveAlert | None:
        item = self.active.get((sensor_id, detector))
        if item is not None and item.acknowledged_at is None:
            item.acknowledged_at = self.clock()
        return item

    def shelve(self, sensor_id: str, detector: str, seconds: float | None) -> ActiveAlert | None:
        """Shelve for ``seconds`` (None or 0: unshelve)."""
        item = self.active.get((sensor_id, detector))
        if item is not None:
            item.shelved_until = self.clock() + seconds if seconds else None
        return item

    def list_active(
        self, sensor_id: str | None = None, detector: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        """Active alerts, newest first; ``state``: active, acknowledged, unacknowledged, shelved."""
        now = self.clock()
        rows = []
        for item in self.active.values():
            if sensor_id is not None and item.sensor_id != sensor_id:
                continue
            if detector is not None and item.detector != detector:
                continue
            if state == "acknowledged" and item.acknowledged_at is None:
                continue
            if state == "unacknowledged" and item.acknowledged_at is not None:
                continue
            if state == "shelved" and not item.shelved(now):
                continue
            rows.append(item.as_json(now))
        rows.sort(key=lambda r: r["raised_at"] or 0.0, reverse=True)
        return rows

    def history(
        self,
        *,
        sensor_id: str | None = None,
        detector: str | None = None,
        state: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Recent alert events from memory, newest first."""
        rows: list[dict[str, Any]] = []
        for a in reversed(self.recent):
            if since is not None and a.alert_ts < since:
                continue
            if sensor_id is not None and a.sensor_id != sensor_id:
                continue
            if detector is not None and a.detector != detector:
                continue
            if state is not None and a.state != state:
                continue
            rows.append(alert_json(a))
            if len(rows) >= limit:
                break
        return rows

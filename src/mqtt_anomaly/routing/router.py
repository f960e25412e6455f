"""The router: alert events → incidents → notices, on a clock, without any I/O.

An alert event is taken by the first ``[[routes]]`` entry it matches (and the ones after it,
while a matching route says ``continue``). Within a route, alerts are grouped by the route's
``group_by`` labels into an **incident**: one notice for all its alerts, not one per sensor.

- A new incident waits ``group_wait`` seconds gathering alerts, then its first notice goes out.
- An incident that changed (an alert raised, cleared or escalated) is sent again at most every
  ``group_interval`` seconds; one that did not, but still fires, every ``repeat_interval``.
- A warning still active ``escalate_after`` seconds after the router saw it is escalated to
  critical (``escalated`` set), which changes the incident.
- When its last alert has cleared the incident's last notice (``resolved``) goes out and the
  incident is closed. An incident that cleared before its first notice is still sent, once,
  resolved: a short critical spike reaches someone.

Each notice has a deterministic ``key`` (route, group, what it says, and how many times the
same thing was said), used as the receivers' idempotency key: the same notice sent twice
after a crash has the same key, a repeat has another.

>>> from mqtt_anomaly.routeconf import Route
>>> from mqtt_anomaly.messages import Alert
>>> r = Router([Route(receivers=("ops",), group_wait=5)])
>>> r.feed([Alert("S1", "zscore", "warning", "raised", 9.0, 0.7, None, 1, 2, 100.0, 100.0)], 0.0)
>>> r.next_due(0.0), [n.status for n in r.due(4.9)], [n.status for n in r.due(5.0)]
(5.0, [], ['firing'])
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from ..messages import Alert
from ..routeconf import Route

__all__ = ["Notice", "RoutedAlert", "Router"]

Status = Literal["firing", "resolved"]
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a tag name that is a valid label name too


class RoutedAlert(msgspec.Struct, kw_only=True):
    """One alert of an incident, as receivers see it."""

    id: str
    """The id of the event that raised it (:func:`~mqtt_anomaly.messages.alert_id`)."""
    sensor_id: str
    detector: str
    severity: str
    """``critical`` once escalated, else the severity it was raised with."""
    raised_severity: str
    status: Status = "firing"
    starts_at: float
    ends_at: float | None = None
    value: float | None = None
    score: float = 0.0
    message: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    escalated: bool = False
    seen: float = 0.0
    """The router's clock when it saw the raise (escalation counts from here)."""


class Notice(msgspec.Struct, kw_only=True):
    """One message of one incident for the route's receivers."""

    key: str
    route: str
    receivers: list[str]
    group: dict[str, str]
    status: Status
    severity: str
    """The highest severity among the incident's firing alerts (when none fires: among the
    resolved ones)."""
    alerts: list[RoutedAlert]
    """At most the route's ``max_alerts``: the resolved ones first, then the firing ones,
    the most severe and newest first."""
    ts: float
    valid_until: float
    """Until when the firing alerts hold without another notice (Alertmanager's endsAt):
    twice the repeat interval after ``ts``."""
    firing: int = 0
    """How many alerts of the incident fire (also those not listed)."""
    resolved: int = 0
    """How many resolved since the last notice (also those not listed)."""

    @property
    def truncated(self) -> bool:
        return len(self.alerts) < self.firing + self.resolved

    @property
    def summary(self) -> str:
        """One line: ``[CRITICAL] 3 firing, 1 resolved: zscore on factory/line-1``."""
        firing, resolved = self.firing, self.resolved
        parts = [f"{firing} firing"] if firing else []
        if resolved:
            parts.append(f"{resolved} resolved")
        what = ", ".join(f"{k}={v}" for k, v in self.group.items() if k != "route")
        head = self.severity.upper() if self.status == "firing" else "RESOLVED"
        return f"[{head}] {', '.join(parts)}: {self.route}" + (f" ({what})" if what else "")


@dataclass(eq=False)
class _Incident:
    route: int
    group: dict[str, str]
    key: str
    created: float
    active: dict[tuple[str, str], RoutedAlert] = field(default_factory=dict)
    resolved: list[RoutedAlert] = field(default_factory=list)
    last_sent: float | None = None
    changed: bool = True
    repeats: int = 0
    last_severity: str = "warning"


def _route_name(route: Route, index: int) -> str:
    return route.name or f"route-{index}"


class Router:
    """Routes, groups, repeats and escalates (see the module docstring). Event-loop only.

    ``tags_of``: a sensor's tags (mapped sensors; ``asset`` among them); ``group_of``: its group
    (as for floods)."""

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        tags_of: Callable[[str], Mapping[str, str] | None] = lambda _sid: None,
        group_of: Callable[[str], str] = lambda _sid: "",
    ) -> None:
        self.routes = tuple(routes)
        self.names = tuple(_route_name(r, i) for i, r in enumerate(self.routes))
        self.tags_of = tags_of
        self.group_of = group_of
        self._incidents: dict[tuple[int, str], _Incident] = {}
        self._where: dict[tuple[int, str, str], str] = {}  # (route, sensor, detector) → key
        self.routed = 0  # raise events taken by at least one route
        self.unrouted = 0  # raise events no route took
        self.suppressed = 0  # raise events not routed: suppressed (maintenance, gate)

    @property
    def incidents(self) -> int:
        return len(self._incidents)

    # ---- events ----------------------------------------------------------------------
    def _routes_for(self, a: Alert, tags: Mapping[str, str], group: str) -> Iterable[int]:
        for i, route in enumerate(self.routes):
            if route.matches(a.sensor_id, a.detector, a.severity, tags, group):
                yield i
                if not route.continue_:
                    return

    def feed(self, alerts: Iterable[Alert], now: float) -> None:
        """Take one batch's alert events (router clock ``now``)."""
        for a in alerts:
            if a.state == "raised":
                if a.suppressed:  # stored with its reason; reaches nobody
                    self.suppressed += 1
                else:
                    self._raise(a, now)
            else:
                self._clear(a, now)

    def _raise(self, a: Alert, now: float) -> None:
        tags = self.tags_of(a.sensor_id) or {}
        group = self.group_of(a.sensor_id)
        taken = False
        for i in self._routes_for(a, tags, group):
            taken = True
            route = self.routes[i]
            labels = {
                **{k: v for k, v in tags.items() if _LABEL.fullmatch(k)},
                "alertname": a.detector,
                "sensor": a.sensor_id,
                "detector": a.detector,
                "severity": a.severity,
                "route": self.names[i],
            }
            if group:
                labels["group"] = group
            by = {}
            for name in route.group_by:
                value = tags.get(name[4:], "") if name.startswith("tag:") else labels.get(name, "")
                by[name] = value
            key = ",".join(f"{k}={v}" for k, v in by.items())
            inc = self._incidents.get((i, key))
            if inc is None:
                inc = self._incidents[(i, key)] = _Incident(i, by, key, now)
            inc.active[(a.sensor_id, a.detector)] = RoutedAlert(
                id=a.id,
                sensor_id=a.sensor_id,
                detector=a.detector,
                severity=a.severity,
                raised_severity=a.severity,
                starts_at=a.reading_ts if a.reading_ts is not None else a.alert_ts,
                value=a.value,
                score=a.score,
                message=a.message,
                labels=labels,
                seen=now,
            )
            inc.changed = True
            self._where[(i, a.sensor_id, a.detector)] = key
        if taken:
            self.routed += 1
        else:
            self.unrouted += 1

    def _clear(self, a: Alert, now: float) -> None:
        for i in range(len(self.routes)):
            key = self._where.pop((i, a.sensor_id, a.detector), None)
            if key is None:
                continue
            inc = self._incidents[(i, key)]
            ra = inc.active.pop((a.sensor_id, a.detector), None)
            if ra is None:
                continue
            ra.status = "resolved"
            ra.ends_at = a.reading_ts if a.reading_ts is not None else a.alert_ts
            inc.resolved.append(ra)
            inc.changed = True

    # ---- time ------------------------------------------------------------------------
    def _due_at(self, inc: _Incident) -> float:
        route = self.routes[inc.route]
        if inc.last_sent is None:
            at = inc.created + route.group_wait
        elif inc.changed:
            at = inc.last_sent + route.group_interval
        else:
            at = inc.last_sent + route.repeat_interval
        if route.escalate_after > 0:
            for ra in inc.active.values():
                if ra.severity == "warning":
                    at = min(at, ra.seen + route.escalate_after)
        return at

    def next_due(self, now: float) -> float | None:
        """When :meth:`due` has something next (None: no incident)."""
        return min((self._due_at(inc) for inc in self._incidents.values()), default=None)

    def due(self, now: float) -> list[Notice]:
        """Escalate what was held long enough, and the notices whose time has come."""
        notices = []
        for ikey, inc in list(self._incidents.items()):
            route = self.routes[inc.route]
            if route.escalate_after > 0:
                for ra in inc.active.values():
                    if ra.severity == "warning" and now >= ra.seen + route.escalate_after:
                        ra.severity = ra.labels["severity"] = "critical"
                        ra.escalated = True
                        inc.changed = True
            if now < self._due_at(inc):
                continue
            notices.append(self._notice(inc, now))
            if not inc.active:
                del self._incidents[ikey]
        return notices

    def _notice(self, inc: _Incident, now: float) -> Notice:
        route = self.routes[inc.route]
        alerts = [*inc.active.values(), *inc.resolved]
        inc.repeats = 0 if inc.changed else inc.repeats + 1
        firing = list(inc.active.values())
        if firing or alerts:
            inc.last_severity = max((a.severity for a in firing or alerts), key=_rank)
        said = [(a.id, a.status, a.severity) for a in alerts]
        digest = hashlib.sha256(
            msgspec.json.encode([self.names[inc.route], inc.key, sorted(said), inc.repeats])
        ).hexdigest()[:32]
        listed = inc.resolved[: route.max_alerts]
        if len(listed) < route.max_alerts:
            room = route.max_alerts - len(listed)
            top = heapq.nlargest(room, firing, key=lambda a: (_rank(a.severity), a.starts_at))
            listed = [*listed, *top]
        notice = Notice(
            key=digest,
            route=self.names[inc.route],
            receivers=list(route.receivers),
            group=dict(inc.group),
            status="firing" if firing else "resolved",
            severity=inc.last_severity,
            alerts=[msgspec.structs.replace(a, labels=dict(a.labels)) for a in listed],
            ts=now,
            valid_until=now + 2 * route.repeat_interval,
            firing=len(firing),
            resolved=len(inc.resolved),
        )
        inc.last_sent = now
        inc.changed = False
        inc.resolved = []
        return notice

    # ---- saved state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The open incidents as plain data (saved with the service's state)."""
        return {
            "routes": list(self.names),
            "incidents": [
                {
                    "route": self.names[inc.route],
                    "key": inc.key,
                    "group": dict(inc.group),
                    "created": inc.created,
                    "last_sent": math.nan if inc.last_sent is None else inc.last_sent,
                    "changed": inc.changed,
                    "repeats": inc.repeats,
                    "last_severity": inc.last_severity,
                    "active": [msgspec.to_builtins(a) for a in inc.active.values()],
                    "resolved": [msgspec.to_builtins(a) for a in inc.resolved],
                }
                for inc in self._incidents.values()
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> int:
        """Take back saved incidents of routes that still exist (by name); returns how many.
        Raises ValueError (or msgspec.ValidationError) for state that is not this shape."""
        index = {name: i for i, name in enumerate(self.names)}
        loaded = 0
        for item in state.get("incidents", []):
            i = index.get(item["route"])
            if i is None:
                continue
            last = float(item["last_sent"])
            inc = _Incident(
                i,
                {str(k): str(v) for k, v in item["group"].items()},
                str(item["key"]),
                float(item["created"]),
                last_sent=None if math.isnan(last) else last,
                changed=bool(item["changed"]),
                repeats=int(item["repeats"]),
                last_severity=str(item["last_severity"]),
            )
            for raw in item["active"]:
                ra = msgspec.convert(raw, RoutedAlert)
                inc.active[(ra.sensor_id, ra.detector)] = ra
                self._where[(i, ra.sensor_id, ra.detector)] = inc.key
            inc.resolved = [msgspec.convert(raw, RoutedAlert) for raw in item["resolved"]]
            self._incidents[(i, inc.key)] = inc
            loaded += 1
        return loaded


def _rank(severity: str) -> int:
    return 1 if severity == "critical" else 0

"""Alert floods: many alerts of one kind from one group of sensors become one alert.

A dropped gateway or a PLC restart silences thousands of sensors at once; ISA-18.2 calls more
than ten alarms in ten minutes per operator a flood. The :class:`FloodFilter` sits between the
pipeline's :class:`~mqtt_anomaly.pipeline.Output` and the operator-facing sinks (the MQTT alert
topic, the console). Every alert still goes to the history store, Kafka and the listeners (the
dashboard); only what is published one by one and printed is filtered.

- **group**: the readings template's topic prefix before the ``{sensor_id}`` level
  (``factory``), refined by ``alerts.group_pattern``, a regular expression on the sensor id
  with a named group ``group`` (``^(?P<group>line-\\d+)-`` puts ``line-3-T07`` in
  ``factory/line-3``);
- **kind**: the alert's detector (``silence``, ``threshold``, ...);
- **raised**: ``alerts.flood_threshold`` alert events of one kind in one group within
  ``alerts.flood_window`` seconds (raises, and clears of alerts this filter did not see raised,
  e.g. restored from saved state). The batch that reaches the threshold is already aggregated;
- **during the flood**: the group's alerts of that kind are not published one by one — except
  the clear of an alert whose raise was published one by one, so that every published raise
  gets its clear. A ``raised`` flood event, then ``updated`` at most every
  ``alerts.flood_update_interval`` seconds while its counts change;
- **cleared**: at the first check (about once a second) where fewer than the threshold events
  fell in the last window **and** fewer than the threshold sensors of the group are still in
  alert of that kind. The flood's alerts still active then (fewer than the threshold) are
  published one by one at that moment, so no active alert stays hidden. A flood has no time
  limit: 70,000 sensors silent for a day is one flood for a day.

Nothing here runs per reading; per alert, a dict lookup and a few appends.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from typing import TYPE_CHECKING, Literal

import msgspec

from .messages import Alert

if TYPE_CHECKING:
    from .config import AlertSettings

FloodState = Literal["raised", "updated", "cleared"]
_ICONS = {"silence": "⏱️", "offline": "🔌"}
_WORDS = {"silence": "silent", "offline": "offline"}


class FloodEvent(msgspec.Struct, frozen=True):
    """One state change of a flood, as published on ``topics.floods``."""

    id: str
    """Deterministic: the same for every event of one flood (group, detector, since)."""
    group: str
    detector: str
    state: FloodState
    since: float
    """Time of the first alert event of the window that raised the flood."""
    ts: float
    """Time of this event."""
    active: int
    """Sensors of the group in alert of this kind (one by one or in the flood)."""
    raised: int
    """Alerts raised during the flood and not published one by one."""
    cleared: int
    """Alerts cleared during the flood and not published one by one."""
    message: str


@dataclass(slots=True)
class _Flood:
    id: str
    since: float
    active: dict[str, Alert] = field(default_factory=dict)  # aggregated, still in alert
    raised: int = 0
    cleared: int = 0
    changed: bool = False
    published_at: float = 0.0
    printed_at: float = 0.0
    printed_active: int = 0


@dataclass(slots=True)
class _Track:
    """What is known of one (group, detector)."""

    events: deque[float] = field(default_factory=deque)  # times of counted events
    published: set[str] = field(default_factory=set)  # raised one by one, not yet cleared
    flood: _Flood | None = None


def flood_id(group: str, detector: str, since: float) -> str:
    key = f"{group}\x00{detector}\x00{since:.3f}".encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()


class FloodFilter:
    """Aggregates alert floods (see the module docstring). Event-loop only, no I/O."""

    def __init__(self, settings: AlertSettings, readings_template: str) -> None:
        self.threshold = settings.flood_threshold
        self.window = settings.flood_window
        self.update_interval = settings.flood_update_interval
        prefix = readings_template.partition("{sensor_id}")[0].strip("/")
        self.prefix = prefix
        self.pattern = re.compile(settings.group_pattern) if settings.group_pattern else None
        self._groups: dict[str, str] = {}
        self._tracks: dict[tuple[str, str], _Track] = {}
        self.aggregated = 0  # alerts not published one by one
        self.floods_raised = 0
        self.lines: list[str] = []
        """Console lines of flood events (raised and cleared; updated when the count of
        sensors in alert has doubled since the last line, else at most once per window),
        for the owner to take."""

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    @property
    def active(self) -> int:
        """Floods going on."""
        return sum(1 for t in self._tracks.values() if t.flood is not None)

    def group_of(self, sensor_id: str) -> str:
        group = self._groups.get(sensor_id)
        if group is None:
            group = self.prefix
            m = self.pattern.search(sensor_id) if self.pattern is not None else None
            if m is not None and m.group("group"):
                group = f"{group}/{m.group('group')}" if group else m.group("group")
            if len(self._groups) < 1_000_000:  # bounded by service.max_sensors in practice
                self._groups[sensor_id] = group
        return group

    # ---- per batch ------------------------------------------------------------------------
    def feed(self, alerts: list[Alert], now: float) -> tuple[list[Alert], list[FloodEvent]]:
        """Route one batch's alerts: those to publish one by one, and the flood events."""
        if not self.enabled or not alerts:
            return alerts, []
        keyed: list[tuple[str, str]] = []
        by_key: dict[tuple[str, str], list[Alert]] = {}
        group_of = self.group_of
        for a in alerts:
            key = (group_of(a.sensor_id), a.detector)
            keyed.append(key)
            by_key.setdefault(key, []).append(a)
        events: list[FloodEvent] = []
        for key, items in by_key.items():
            track = self._tracks.get(key)
            if track is None:
                track = self._tracks[key] = _Track()
            self._count(track, items, now)
            if track.flood is None and len(track.events) >= self.threshold:
                since = track.events[0]
                track.flood = _Flood(flood_id(key[0], key[1], since), since)
                self.floods_raised += 1
                self._route(track, items)
                events.append(self._event(key, track, "raised", now))
            elif track.flood is not None:
                self._route(track, items)
        shown: list[Alert] = []
        for a, key in zip(alerts, keyed, strict=True):
            track = self._tracks[key]
            flood = track.flood
            if flood is None:
                if a.state == "raised":
                    track.published.add(a.sensor_id)
                else:
                    track.published.discard(a.sensor_id)
                shown.append(a)
            elif a.state == "cleared" and a.sensor_id in track.published:
                track.published.discard(a.sensor_id)  # its raise was published: so is this
                shown.append(a)
        return shown, events

    def _count(self, track: _Track, items: list[Alert], now: float) -> None:
        events = track.events
        horizon = now - self.window
        while events and events[0] < horizon:
            events.popleft()
        flood = track.flood
        n = 0
        for a in items:
            sid = a.sensor_id
            if a.state == "raised":
                n += 1
            elif sid not in track.published and (flood is None or sid not in flood.active):
                n += 1  # a clear of an alert raised before we saw it
        events.extend(repeat(now, n))

    def _route(self, track: _Track, items: list[Alert]) -> None:
        """Aggregate the items of a flooded (group, detector)."""
        flood = track.flood
        assert flood is not None
        for a in items:
            sid = a.sensor_id
            if a.state == "raised":
                track.published.discard(sid)
                flood.active[sid] = a
                flood.raised += 1
                self.aggregated += 1
            elif sid not in track.published:
                flood.active.pop(sid, None)
                flood.cleared += 1
                self.aggregated += 1
        flood.changed = True

    # ---- about once a second -----------------------------------------------------------
    def tick(self, now: float) -> tuple[list[Alert], list[FloodEvent]]:
        """Updates and ends of floods; the alerts to publish one by one at an end."""
        if not self.enabled:
            return [], []
        shown: list[Alert] = []
        events: list[FloodEvent] = []
        horizon = now - self.window
        for key, track in list(self._tracks.items()):
            q = track.events
            while q and q[0] < horizon:
                q.popleft()
            flood = track.flood
            if flood is None:
                if not q and not track.published:
                    del self._tracks[key]  # nothing to remember
                continue
            if len(q) < self.threshold and self._in_alert(track) < self.threshold:
                stragglers = list(flood.active.values())
                shown.extend(stragglers)
                track.published.update(a.sensor_id for a in stragglers)
                flood.active.clear()
                events.append(self._event(key, track, "cleared", now))
                track.flood = None
            elif flood.changed and now - flood.published_at >= self.update_interval:
                events.append(self._event(key, track, "updated", now))
        return shown, events

    @staticmethod
    def _in_alert(track: _Track) -> int:
        flood = track.flood
        return len(track.published) + (len(flood.active) if flood is not None else 0)

    def _event(
        self, key: tuple[str, str], track: _Track, state: FloodState, now: float
    ) -> FloodEvent:
        flood = track.flood
        assert flood is not None
        flood.changed = False
        flood.published_at = now
        group, detector = key
        active = self._in_alert(track)
        event = FloodEvent(
            id=flood.id,
            group=group or "(all)",
            detector=detector,
            state=state,
            since=flood.since,
            ts=now,
            active=active,
            raised=flood.raised,
            cleared=flood.cleared,
            message=describe(group, detector, state, active, flood.raised, flood.cleared),
        )
        if (
            state != "updated"
            or active >= 2 * flood.printed_active
            or now - flood.printed_at >= self.window
        ):
            flood.printed_at, flood.printed_active = now, active
            self.lines.append(console_line(event))
        return event


def describe(
    group: str, detector: str, state: FloodState, active: int, raised: int, cleared: int
) -> str:
    where = f"under {group}" if group else "in the fleet"
    if state == "cleared":
        return (
            f"{detector} flood {where} over: {raised:,} raised and {cleared:,} cleared during "
            f"it, {active:,} sensors still in alert"
        )
    if raised or active:
        word = _WORDS.get(detector, f"in {detector} alert")
        return f"{active:,} sensors {where} {word}"
    return f"{cleared:,} {detector} alerts {where} cleared"


def console_line(event: FloodEvent) -> str:
    """The operator's line for a flood event."""
    icon = _ICONS.get(event.detector, "⚠️")
    since = datetime.fromtimestamp(event.since).strftime("%H:%M:%S")
    if event.state == "cleared":
        return f"[FLOOD CLEAR] {icon} {event.message}"
    return f"[FLOOD] {icon} {event.message} since {since} ({event.detector})"

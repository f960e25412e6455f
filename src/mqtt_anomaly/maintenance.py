"""Maintenance windows: while one is open, the alerts of its sensors reach nobody.

A window is a :class:`~mqtt_anomaly.routeconf.Selector` of sensors (ids, assets, groups,
tags) and a time: **one-off** (``start``, ``end``) or **recurring** (``days`` of the week,
local start time ``at``, ``duration`` seconds), in the window's ``timezone`` (IANA name, via
:mod:`zoneinfo`: a window at 06:00 Europe/Berlin opens at 06:00 local time in summer and in
winter). Windows come from ``[[maintenance]]`` in the TOML file and, at run time, from the
REST API (``/api/maintenance``), the CLI (``mqtt-anomaly maintenance``) and the dashboard;
those are kept in ``<state_dir>/maintenance.mqas`` (data only).

An alert whose reading falls inside an open window of its sensor is still produced, stored
and shown, with ``suppressed = "maintenance: <reason>"``; it is not routed to receivers.

>>> w = Window(sensors=("press-1-*",), days=("sat",), at="06:00", duration=7200,
...            timezone="Europe/Berlin", reason="relining")
>>> from datetime import datetime
>>> from zoneinfo import ZoneInfo
>>> berlin = ZoneInfo("Europe/Berlin")
>>> w.open_at(datetime(2026, 7, 4, 7, 59, tzinfo=berlin).timestamp())   # a Saturday, summer
True
>>> w.open_at(datetime(2026, 12, 5, 6, 0, tzinfo=berlin).timestamp())   # a Saturday, winter
True
>>> w.open_at(datetime(2026, 12, 5, 8, 0, tzinfo=berlin).timestamp())   # closed again
False
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from .routeconf import Selector, SelectorIndex, TagsOf

__all__ = ["WEEKDAYS", "MaintenanceBook", "Window"]

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def zone(name: str) -> ZoneInfo:
    """The time zone ``name`` (ValueError naming it when there is none)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


class Window(Selector):
    """One maintenance window (see the module docstring)."""

    id: str = ""
    """A name for it (made from its fields when left empty)."""
    reason: str = ""
    start: dt.datetime | None = None
    """One-off: opens (ISO 8601; without an offset: in ``timezone``)."""
    end: dt.datetime | None = None
    """One-off: closes."""
    days: tuple[Weekday, ...] = ()
    """Recurring: the days it opens on (empty with ``at``: every day)."""
    at: dt.time | None = None
    """Recurring: the local time it opens (``06:00``)."""
    duration: float = Field(0.0, ge=0, le=7 * 86_400)
    """Recurring: how long it stays open, seconds."""
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, v: str) -> str:
        zone(v)
        return v

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if len(v) > 100 or any(c in v for c in "/\\\x00\n"):
            raise ValueError("at most 100 characters, no slash or newline")
        return v

    @model_validator(mode="after")
    def _check_time(self) -> Window:
        one_off = self.start is not None or self.end is not None
        recurring = self.at is not None or self.days or self.duration
        if one_off and recurring:
            raise ValueError("either start and end (one-off) or at and duration (recurring)")
        if one_off:
            if self.start is None or self.end is None:
                raise ValueError("a one-off window needs start and end")
            if not self._ts(self.end) > self._ts(self.start):
                raise ValueError("end must be after start")
        elif self.at is None or not self.duration:
            raise ValueError("a window needs start and end, or at and duration")
        if not self.id:
            digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
            object.__setattr__(self, "id", f"w-{digest}")
        return self

    def _ts(self, when: dt.datetime) -> float:
        if when.tzinfo is None:
            when = when.replace(tzinfo=zone(self.timezone))
        return when.timestamp()

    @property
    def recurring(self) -> bool:
        return self.at is not None

    def open_at(self, ts: float) -> bool:
        """True while the window is open at epoch time ``ts``."""
        if self.start is not None and self.end is not None:
            return self._ts(self.start) <= ts < self._ts(self.end)
        at = self.at
        if at is None or not math.isfinite(ts):
            return False
        tz = zone(self.timezone)
        today = dt.datetime.fromtimestamp(ts, tz).date()
        for back in range(math.ceil(self.duration / 86_400) + 1):
            day = today - dt.timedelta(days=back)
            if self.days and WEEKDAYS[day.weekday()] not in self.days:
                continue
            opens = dt.datetime.combine(day, at, tzinfo=tz).timestamp()
            if opens <= ts < opens + self.duration:
                return True
        return False

    def closed_for_good(self, ts: float) -> bool:
        """True for a one-off window that has ended before ``ts``."""
        return self.end is not None and self._ts(self.end) <= ts

    @property
    def why(self) -> str:
        return f"maintenance: {self.reason or self.id}"


class MaintenanceBook:
    """The windows in force: those of the settings and those added at run time.

    ``tags_of`` and ``group_of`` tell a sensor's tags and group (as for routes); which
    windows select a sensor is remembered until the windows change."""

    def __init__(
        self,
        windows: Iterable[Window] = (),
        *,
        tags_of: TagsOf = lambda _sid: None,
        group_of: Callable[[str], str] = lambda _sid: "",
    ) -> None:
        self.configured = tuple(windows)
        self.added: dict[str, Window] = {}
        self._index = SelectorIndex(self.configured, tags_of=tags_of, group_of=group_of)
        self.changed = 0  # bumped on every add or remove (the owner saves)

    @property
    def windows(self) -> list[Window]:
        return [*self.configured, *self.added.values()]

    def add(self, window: Window) -> Window:
        """Add (or replace, by id) a run-time window; ValueError for a configured window's id."""
        if any(w.id == window.id for w in self.configured):
            raise ValueError(f"window {window.id!r} is in the configuration file")
        self.added[window.id] = window
        self._index.reset(self.windows)
        self.changed += 1
        return window

    def remove(self, window_id: str) -> bool:
        """Remove a run-time window; False when there is none of that id."""
        if self.added.pop(window_id, None) is None:
            return False
        self._index.reset(self.windows)
        self.changed += 1
        return True

    def reason(self, sensor: str, ts: float) -> str:
        """Why ``sensor``'s alerts at ``ts`` reach nobody, or ``""``."""
        if not self.configured and not self.added:
            return ""
        windows = self._index.items
        for i in self._index.of(sensor):
            if windows[i].open_at(ts):
                return windows[i].why
        return ""

    # ---- saved state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"windows": [w.model_dump(mode="json") for w in self.added.values()]}

    def load_state_dict(self, state: Mapping[str, Any], now: float) -> int:
        """Take back saved run-time windows (one-off windows that have ended are left out);
        returns how many. Raises ValueError (pydantic's) for a window that is not valid."""
        loaded = 0
        for raw in state.get("windows", []):
            w = Window.model_validate(raw)
            if w.closed_for_good(now) or any(c.id == w.id for c in self.configured):
                continue
            self.added[w.id] = w
            loaded += 1
        self._index.reset(self.windows)
        return loaded

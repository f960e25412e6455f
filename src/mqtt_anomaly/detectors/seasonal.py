"""Seasonal baseline: each reading against the sensor's usual value at that time of day (or week).

The period (a day by default) is cut into ``bins`` equal time-of-day bins; each sensor keeps an
exponentially weighted mean and variance per bin, so memory per sensor is fixed (``2 * bins``
numbers). A reading is compared with the statistics of its own bin: a chiller that runs at 14 °C
at night and 9 °C by day is not anomalous at 14 °C at 02:00 but is at 14 °C at 14:00, which a
plain z-score cannot tell apart. ``period = 604800`` with ``bins = 168`` learns a weekly profile
by the hour.

**Calendars.** Bins are in the plant's local time (``timezone``, an IANA name; from
``detector.timezone``): the 06:00 bin is 06:00 on the wall clock in summer and in winter, so a
daylight-saving change does not make the profile alert until it relearns. ``holidays``
(ISO dates, from ``detector.holidays``) are learned and scored as the declared weekday
``holiday_as`` (``sun`` by default, from ``detector.holiday_as``): Christmas on a Friday looks
like a Sunday to a weekly profile, not like a Friday. UTC without holidays (the default) costs
nothing extra.

Learning is winsorised (``clip`` standard deviations) and the variance has a floor
(``min_std``, ``rel_std`` of the level). Score: ``z / (2 * z_alert)`` clipped to [0, 1]; a bin
scores nothing until it has seen ``min_count`` readings.

>>> import numpy as np
>>> t = np.arange(0, 6 * 86400, 600.0)  # six days, one reading every ten minutes
>>> day = np.sin(2 * np.pi * t / 86400)
>>> x = 20 + 5 * day + np.random.default_rng(2).normal(0, 0.2, len(t))
>>> x[-100] = 20 - 5 * day[-100]  # the night value in the middle of the day
>>> s = SeasonalDetector(bins=48).score_series(x, t)
>>> bool(s[-100] >= 0.5), bool(np.delete(s, len(s) - 100)[3 * 144 :].max() < 0.5)
(True, True)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from ..config import DetectorSettings
from ._common import TableDetector, check_ewma
from ._stats import band, ewma_update, floor_rate, floored_std
from .base import Detector, Field, FloatArray, IntArray, Scores, check_params

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday
_OFFSET_STEP = 900.0  # UTC offsets change on quarter hours: one lookup per quarter hour


class SeasonalDetector(TableDetector):
    """Per time-of-day bin exponentially weighted mean and variance; z-score against its bin."""

    name: ClassVar[str] = "seasonal"
    critical_level: ClassVar[float] = 1.0

    def __init__(
        self,
        *,
        period: float = 86400.0,
        bins: int = 24,
        alpha: float = 0.1,
        z_alert: float = 5.0,
        min_count: int = 3,
        clip: float = 3.0,
        min_std: float = 0.01,
        rel_std: float = 1e-3,
        timezone: str = "UTC",
        holidays: str = "",
        holiday_as: str = "sun",
    ) -> None:
        if period <= 0 or bins < 1 or z_alert <= 0 or min_count < 1:
            raise ValueError("period, bins, z_alert and min_count must be positive")
        try:
            self._zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {timezone!r}") from exc
        if holiday_as not in WEEKDAYS:
            raise ValueError(f"holiday_as must be one of {', '.join(WEEKDAYS)}")
        try:
            days = [dt.date.fromisoformat(d.strip()) for d in holidays.split(",") if d.strip()]
        except ValueError as exc:
            raise ValueError(f"holidays: {exc}") from exc
        self.timezone = timezone
        self.holidays = ",".join(d.isoformat() for d in sorted(set(days)))
        self.holiday_as = holiday_as
        epoch = dt.date(1970, 1, 1)
        self._holidays = np.array(sorted({(d - epoch).days for d in days}), dtype=np.int64)
        self._local = timezone != "UTC" or bool(days)
        self._offsets: dict[int, float] = {}
        check_ewma(alpha, clip, min_std, rel_std)
        self.period = float(period)
        self.bins = int(bins)
        self.alpha = float(alpha)
        self.z_alert = float(z_alert)
        self.min_count = int(min_count)
        self.clip = float(clip)
        self.min_std = float(min_std)
        self.rel_std = float(rel_std)
        super().__init__()

    @classmethod
    def from_settings(cls, settings: DetectorSettings) -> Detector:
        params: dict[str, Any] = {
            "timezone": settings.timezone,
            "holidays": ",".join(d.isoformat() for d in settings.holidays),
            "holiday_as": settings.holiday_as,
            **settings.params.get(cls.name, {}),
        }
        return check_params(cls.name, cls, params)

    def params(self) -> dict[str, Any]:
        """The parameters; the calendar's only when not the default, so a state saved before
        calendars existed still fits."""
        p = super().params()
        for key, default in (("timezone", "UTC"), ("holidays", ""), ("holiday_as", "sun")):
            if p[key] == default:
                del p[key]
        return p

    def local_time(self, ts: FloatArray) -> FloatArray:
        """``ts`` as seconds on the plant's wall clock (holidays moved to ``holiday_as``)."""
        if not self._local:
            return ts
        steps = np.floor(ts / _OFFSET_STEP).astype(np.int64)
        uniq, inverse = np.unique(steps, return_inverse=True)
        cache = self._offsets
        if len(cache) > 100_000:
            cache.clear()
        offs = np.empty(len(uniq), dtype=np.float64)
        zone = self._zone
        for i, step in enumerate(uniq.tolist()):
            off = cache.get(step)
            if off is None:
                when = dt.datetime.fromtimestamp(step * _OFFSET_STEP, dt.UTC).astimezone(zone)
                delta = when.utcoffset()
                off = cache[step] = delta.total_seconds() if delta is not None else 0.0
            offs[i] = off
        local = ts + offs[inverse]
        if len(self._holidays):
            day = np.floor(local / 86400.0).astype(np.int64)
            hit = np.isin(day, self._holidays)
            if hit.any():
                weekday = (day[hit] + _EPOCH_WEEKDAY) % 7
                target = WEEKDAYS.index(self.holiday_as)
                local[hit] += ((target - weekday) % 7) * 86400.0
        return local

    def fields(self) -> Mapping[str, Field]:
        return {
            "count": Field(np.int64, 0),
            "mean": Field(np.float64, 0.0),
            "var": Field(np.float64, 0.0),
        }

    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        return {"count": (self.bins,), "mean": (self.bins,), "var": (self.bins,)}

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        st = self.state
        phase = np.mod(self.local_time(ts), self.period) / self.period
        b = np.minimum((phase * self.bins).astype(np.intp), self.bins - 1)
        n = st["count"][slots, b]
        mean = st["mean"][slots, b]
        var = st["var"][slots, b]
        std = floored_std(var, mean, self.min_std, self.rel_std)
        dev = values - mean
        ready = n >= self.min_count
        score = np.where(ready, np.clip(np.abs(dev) / std / (2 * self.z_alert), 0.0, 1.0), 0.0)
        low, high = band(mean, self.z_alert * std, ready)
        # learn: running mean/variance for a new bin, then winsorised EWMA
        a = floor_rate(n, self.alpha)
        st["mean"][slots, b], st["var"][slots, b] = ewma_update(
            mean, var, dev, a, self.clip * std, ready
        )
        st["count"][slots, b] = n + 1
        return Scores(score, low, high)

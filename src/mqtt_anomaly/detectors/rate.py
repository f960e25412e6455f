"""Rate of change: a reading that moves too fast from the previous one.

The rate is ``(x - previous) / dt`` per second. Its typical size is learned per sensor as an
exponentially weighted mean absolute rate (winsorised like the z-score: a jump is clipped to
``clip`` typical rates before it is learned). A step that is ``z_alert`` times the typical rate
scores 0.5. ``max_rate`` (units per second, optional) adds a fixed limit: a rate of
``max_rate`` scores 0.5 whatever was learned. Catches jumps and drops that stay within the
normal range of values (a valve slamming, a sensor re-seating), which value-based detectors
miss. Repeated or backward timestamps are treated as half the typical interval.

>>> import numpy as np
>>> x = np.concatenate([np.linspace(20, 25, 200), [29.0], np.linspace(29, 30, 50)])
>>> s = RateDetector().score_series(x)
>>> bool(s[200] >= 0.5), bool(s[20:200].max() < 0.3), bool(s[205:].max() < 0.3)
(True, True, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from .base import Detector, Field, FloatArray, IntArray, Scores


class RateDetector(Detector):
    """Adaptive (and optionally fixed) limit on the rate of change per second."""

    name: ClassVar[str] = "rate"
    critical_level: ClassVar[float] = 1.0

    def __init__(
        self,
        *,
        alpha: float = 0.02,
        z_alert: float = 8.0,
        warmup: int = 10,
        clip: float = 4.0,
        max_rate: float = 0.0,
        min_rate: float = 1e-6,
    ) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if z_alert <= 0 or clip <= 0 or max_rate < 0 or min_rate <= 0 or warmup < 1:
            raise ValueError("z_alert, clip, min_rate, warmup positive; max_rate >= 0")
        self.alpha = float(alpha)
        self.z_alert = float(z_alert)
        self.warmup = int(warmup)
        self.clip = float(clip)
        self.max_rate = float(max_rate)
        self.min_rate = float(min_rate)
        super().__init__()

    def fields(self) -> Mapping[str, Field]:
        return {
            "n": Field(np.int64, 0),
            "last": Field(np.float64, np.nan),
            "last_ts": Field(np.float64, np.nan),
            "dt": Field(np.float64, 0.0),
            "rate": Field(np.float64, 0.0),
        }

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        st = self.state
        n = st["n"][slots]
        last = st["last"][slots]
        typical_dt = st["dt"][slots]
        typical = np.maximum(st["rate"][slots], self.min_rate + 1e-6 * np.abs(last))
        has_prev = n >= 1
        raw_dt = np.where(has_prev, ts - st["last_ts"][slots], 0.0)
        dt = np.maximum(raw_dt, np.where(typical_dt > 0, 0.5 * typical_dt, 1.0))
        rate = np.where(has_prev, (values - last) / dt, 0.0)
        ready = n > self.warmup
        score = np.where(ready, np.abs(rate) / (2 * self.z_alert * typical), 0.0)
        if self.max_rate > 0:
            score = np.maximum(score, np.abs(rate) / (2 * self.max_rate))
        score = np.clip(score, 0.0, 1.0)
        limit = self.z_alert * typical * dt
        if self.max_rate > 0:
            limit = np.where(ready, np.minimum(limit, self.max_rate * dt), self.max_rate * dt)
        low = np.where(has_prev & (ready | (self.max_rate > 0)), last - limit, np.nan)
        high = np.where(has_prev & (ready | (self.max_rate > 0)), last + limit, np.nan)
        # learn: plain averages while warming up, then winsorised EWMA
        a = np.where(ready, self.alpha, 1.0 / np.maximum(n, 1.0))
        step = np.where(ready, np.minimum(np.abs(rate), self.clip * typical), np.abs(rate))
        st["rate"][slots] = np.where(
            has_prev, st["rate"][slots] + a * (step - st["rate"][slots]), 0.0
        )
        st["dt"][slots] = np.where(
            has_prev & (raw_dt > 0), typical_dt + a * (raw_dt - typical_dt), typical_dt
        )
        st["last"][slots] = values
        st["last_ts"][slots] = ts
        st["n"][slots] = n + 1
        return Scores(score, low, high)

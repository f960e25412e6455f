"""Adaptive z-score: an exponentially weighted mean and variance per sensor.

Each reading is compared with the sensor's own recent behaviour, so faults that never reach a
fixed limit (a jump of a few degrees, a noise burst, a drift) are caught. Learning is
winsorised: a deviation is clipped to ``clip`` standard deviations before it updates the
statistics, so one spike does not inflate the variance, while a lasting level shift is adopted
within a few hundred readings. The variance has a floor (``min_std`` and ``rel_std`` of the
level), so a flat signal does not make every small wiggle infinitely anomalous.

Score: ``z² / (z² + z_alert²)``: 0.5 (alert) at ``z_alert`` standard deviations, 0.8 (critical)
at twice that; it approaches 1 without reaching it, so larger deviations always rank higher.
No score during the first ``warmup`` readings of a sensor.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = 25 + rng.normal(0, 0.2, 300)
>>> x[250] = 29.0
>>> s = ZScoreDetector().score_series(x)
>>> bool(s[250] >= 0.5), bool(s[:250].max() < 0.5)
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from ._stats import ewma_update, floored_std, warmup_rate
from .base import Detector, Field, FloatArray, IntArray, Scores, nan_band


class ZScoreDetector(Detector):
    """Exponentially weighted z-score with winsorised learning and a variance floor."""

    name: ClassVar[str] = "zscore"
    critical_level: ClassVar[float] = 0.8

    def __init__(
        self,
        *,
        alpha: float = 0.02,
        z_alert: float = 5.0,
        warmup: int = 30,
        clip: float = 3.0,
        min_std: float = 0.01,
        rel_std: float = 1e-4,
    ) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if z_alert <= 0 or clip <= 0 or min_std < 0 or rel_std < 0:
            raise ValueError("z_alert and clip must be positive, floors non-negative")
        self.alpha = float(alpha)
        self.z_alert = float(z_alert)
        self.warmup = int(warmup)
        self.clip = float(clip)
        self.min_std = float(min_std)
        self.rel_std = float(rel_std)
        super().__init__()

    def fields(self) -> Mapping[str, Field]:
        return {
            "n": Field(np.int64, 0),
            "mean": Field(np.float64, 0.0),
            "var": Field(np.float64, 0.0),
        }

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        st = self.state
        n = st["n"][slots]
        mean = st["mean"][slots]
        var = st["var"][slots]
        std = floored_std(var, mean, self.min_std, self.rel_std)
        dev = values - mean
        z = np.abs(dev) / std
        ready = n >= self.warmup
        z2 = z * z
        score = np.where(ready, z2 / (z2 + self.z_alert * self.z_alert), 0.0)
        half = self.z_alert * std
        low = np.where(ready, mean - half, np.nan)
        high = np.where(ready, mean + half, np.nan)
        # learn: plain running mean/variance while warming up, then winsorised EWMA
        a = warmup_rate(n, self.alpha, ready)
        st["mean"][slots], st["var"][slots] = ewma_update(mean, var, dev, a, self.clip * std, ready)
        st["n"][slots] = n + 1
        return Scores(score, low, high)

    def expected_band(self, slots: IntArray) -> tuple[FloatArray, FloatArray]:
        """mean ± ``z_alert`` standard deviations (the score's alert level) once warmed up."""
        low, high = nan_band(len(slots)), nan_band(len(slots))
        known = slots < self.capacity
        idx = slots[known]
        st = self.state
        mean = st["mean"][idx]
        half = self.z_alert * floored_std(st["var"][idx], mean, self.min_std, self.rel_std)
        ready = st["n"][idx] >= self.warmup
        low[known] = np.where(ready, mean - half, np.nan)
        high[known] = np.where(ready, mean + half, np.nan)
        return low, high

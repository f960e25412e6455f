"""Robust z-score: a running median and median absolute deviation (MAD), in constant memory.

A mean and a standard deviation are dragged by the very outliers they should expose; a median
and a MAD are not. Both are tracked online by stochastic quantile approximation: the median
estimate moves by ``rate * scale`` towards each reading (up when the reading is above it, down
when below), so it settles where half of the readings lie on either side; the MAD estimate does
the same with the absolute deviations. No window is kept, so memory per sensor is constant and a
burst of outliers moves the estimates by at most ``rate * scale`` per reading.

The first ``warmup`` readings seed the estimates (running mean, mean absolute deviation). The
scale has a floor (``min_scale`` and ``rel_scale`` of the level) so a flat signal does not make
every wiggle infinitely anomalous. Score: ``z / (2 * z_alert)`` clipped to [0, 1], where
``z = |x - median| / (1.4826 * MAD)`` (1.4826 turns a MAD into a standard deviation for normal
data): 0.5 at ``z_alert``.

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> x = 10 + rng.normal(0, 0.5, 400)
>>> x[300:303] = [30.0, 31.0, 29.0]  # a burst the median ignores
>>> s = RobustDetector().score_series(x)
>>> bool(s[300:303].min() >= 0.5), bool(s[:300].max() < 0.5), bool(s[310:].max() < 0.5)
(True, True, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from ._common import known_band
from ._stats import band
from .base import Detector, Field, FloatArray, IntArray, Scores

_MAD_TO_STD = 1.4826


class RobustDetector(Detector):
    """Running median and MAD by stochastic quantile tracking; robust z-score."""

    name: ClassVar[str] = "robust"
    critical_level: ClassVar[float] = 1.0

    def __init__(
        self,
        *,
        rate: float = 0.02,
        z_alert: float = 6.0,
        warmup: int = 30,
        min_scale: float = 0.01,
        rel_scale: float = 1e-4,
    ) -> None:
        if not 0 < rate < 1:
            raise ValueError("rate must be in (0, 1)")
        if z_alert <= 0 or warmup < 1 or min_scale < 0 or rel_scale < 0:
            raise ValueError("z_alert and warmup must be positive, floors non-negative")
        self.rate = float(rate)
        self.z_alert = float(z_alert)
        self.warmup = int(warmup)
        self.min_scale = float(min_scale)
        self.rel_scale = float(rel_scale)
        super().__init__()

    def fields(self) -> Mapping[str, Field]:
        return {
            "n": Field(np.int64, 0),
            "median": Field(np.float64, 0.0),
            "mad": Field(np.float64, 0.0),
        }

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        st = self.state
        n = st["n"][slots]
        med = st["median"][slots]
        mad = st["mad"][slots]
        floor = self.min_scale + self.rel_scale * np.abs(med)
        sigma = _MAD_TO_STD * np.maximum(mad, floor)
        dev = values - med
        ready = n >= self.warmup
        z = np.abs(dev) / sigma
        score = np.where(ready, np.clip(z / (2 * self.z_alert), 0.0, 1.0), 0.0)
        low, high = band(med, self.z_alert * sigma, ready)
        # learn: seed with running mean / mean absolute deviation, then quantile steps
        w = 1.0 / (n + 1.0)
        seed_med = med + w * dev
        seed_mad = mad + w * (np.abs(values - seed_med) - mad)
        step = self.rate * np.maximum(mad, floor)
        track_med = med + step * np.sign(dev)
        track_mad = mad + step * np.sign(np.abs(dev) - mad)
        st["median"][slots] = np.where(ready, track_med, seed_med)
        st["mad"][slots] = np.maximum(np.where(ready, track_mad, seed_mad), 0.0)
        st["n"][slots] = n + 1
        return Scores(score, low, high)

    def expected_band(self, slots: IntArray) -> tuple[FloatArray, FloatArray]:
        """median ± ``z_alert`` robust standard deviations (the alert level) once warmed up."""
        return known_band(slots, self.capacity, self._band)

    def _band(self, idx: IntArray) -> tuple[FloatArray, FloatArray]:
        st = self.state
        med = st["median"][idx]
        floor = self.min_scale + self.rel_scale * np.abs(med)
        half = self.z_alert * (_MAD_TO_STD * np.maximum(st["mad"][idx], floor))
        return band(med, half, st["n"][idx] >= self.warmup)

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

from typing import ClassVar

import numpy as np

from ._common import EwmaDetector, known_band
from ._stats import band, floored_std
from .base import FloatArray, IntArray, Scores


class ZScoreDetector(EwmaDetector):
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
        if z_alert <= 0:
            raise ValueError("z_alert must be positive")
        self.z_alert = float(z_alert)
        super().__init__(alpha=alpha, warmup=warmup, clip=clip, min_std=min_std, rel_std=rel_std)

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        n, mean, var, std = self._reference(slots)
        dev = values - mean
        z = np.abs(dev) / std
        ready = n >= self.warmup
        z2 = z * z
        score = np.where(ready, z2 / (z2 + self.z_alert * self.z_alert), 0.0)
        low, high = band(mean, self.z_alert * std, ready)
        self._learn(slots, n, mean, var, dev, std, ready)
        return Scores(score, low, high)

    def expected_band(self, slots: IntArray) -> tuple[FloatArray, FloatArray]:
        """mean ± ``z_alert`` standard deviations (the score's alert level) once warmed up."""
        return known_band(slots, self.capacity, self._band)

    def _band(self, idx: IntArray) -> tuple[FloatArray, FloatArray]:
        st = self.state
        mean = st["mean"][idx]
        half = self.z_alert * floored_std(st["var"][idx], mean, self.min_std, self.rel_std)
        return band(mean, half, st["n"][idx] >= self.warmup)

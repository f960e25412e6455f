"""Change point: a lasting shift of level or of variance, by two-sided CUSUM.

Each reading is standardised against a slowly learned reference (exponentially weighted mean
and variance, winsorised). Three cumulative sums collect evidence that is too small to matter
in one reading but adds up when it persists (Page's CUSUM):

- ``up = max(0, up + z - drift)`` and ``down = max(0, down - z - drift)``: level shifts;
- ``spread = max(0, spread + (z² - 1) / 2 - drift)``: the variance growing.

The score is ``max(up, down, spread) / (2 * h)`` clipped to [0, 1], so an alert is raised when
the evidence reaches ``h``. The sums are capped at ``2 * h``, and the reference keeps learning,
so once the new level or spread has been adopted the sums drain and the alert clears.

>>> import numpy as np
>>> rng = np.random.default_rng(3)
>>> x = np.concatenate([rng.normal(10, 1, 300), rng.normal(11.5, 1, 100)])  # +1.5 sigma
>>> s = ChangePointDetector().score_series(x)
>>> bool(s[:300].max() < 0.5), bool(s[300:330].max() >= 0.5)
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from ._common import EwmaDetector
from .base import Field, FloatArray, IntArray, Scores, nan_band


class ChangePointDetector(EwmaDetector):
    """Two-sided CUSUM on the level and one-sided CUSUM on the variance."""

    name: ClassVar[str] = "changepoint"
    critical_level: ClassVar[float] = 1.0

    def __init__(
        self,
        *,
        alpha: float = 0.005,
        drift: float = 0.5,
        h: float = 8.0,
        warmup: int = 50,
        clip: float = 3.0,
        min_std: float = 0.01,
        rel_std: float = 1e-4,
    ) -> None:
        if drift < 0 or h <= 0 or warmup < 2:
            raise ValueError("h must be positive, warmup >= 2, drift non-negative")
        self.drift = float(drift)
        self.h = float(h)
        super().__init__(alpha=alpha, warmup=warmup, clip=clip, min_std=min_std, rel_std=rel_std)

    def fields(self) -> Mapping[str, Field]:
        return {
            **super().fields(),
            "up": Field(np.float64, 0.0),
            "down": Field(np.float64, 0.0),
            "spread": Field(np.float64, 0.0),
        }

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        st = self.state
        n, mean, var, std = self._reference(slots)
        dev = values - mean
        z = np.clip(dev / std, -50.0, 50.0)
        ready = n >= self.warmup
        cap = 2.0 * self.h
        up = np.where(ready, np.clip(st["up"][slots] + z - self.drift, 0.0, cap), 0.0)
        down = np.where(ready, np.clip(st["down"][slots] - z - self.drift, 0.0, cap), 0.0)
        grow = 0.5 * (z * z - 1.0) - self.drift
        spread = np.where(ready, np.clip(st["spread"][slots] + grow, 0.0, cap), 0.0)
        score = np.maximum(np.maximum(up, down), spread) / cap
        st["up"][slots] = up
        st["down"][slots] = down
        st["spread"][slots] = spread
        # learn the reference: running mean/variance while warming up, then winsorised EWMA
        self._learn(slots, n, mean, var, dev, std, ready)
        k = len(values)
        return Scores(score, nan_band(k), nan_band(k))

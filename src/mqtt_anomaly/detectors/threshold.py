"""Static threshold: the value itself crossing a fixed limit.

The score is 0.5 at ``threshold`` and 0.3 at ``clear`` (linear in between and beyond, clipped
to [0, 1]), so with the standard alert levels an alert is raised when the value reaches the
threshold and cleared once it falls below the clear level: hysteresis in value terms.

A sensor whose source declared a range (:meth:`seed_range`: a Sparkplug birth's ``engLow`` and
``engHigh``) is held to that range instead: the score is 0.5 at its high end (and at its low
end, from below), with the same hysteresis width ``threshold - clear``. A sensor whose
configuration gives it its own threshold and clear level (:meth:`set_limits`, ``[overrides]``)
is held to those, with its own width.

>>> import numpy as np
>>> d = ThresholdDetector(threshold=90.0, clear=88.0)
>>> d.score_series(np.array([24.5, 89.0, 90.0, 98.2])).round(2).tolist()
[0.0, 0.4, 0.5, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..config import DetectorSettings
from ._grow import capacity_for, grown
from .base import Detector, Field, FloatArray, IntArray, Scores, check_params


class ThresholdDetector(Detector):
    """Alert when the value reaches ``threshold``; clear below ``clear``."""

    name: ClassVar[str] = "threshold"
    critical_level: ClassVar[float] = 0.5

    def __init__(self, *, threshold: float = 90.0, clear: float | None = None) -> None:
        self.threshold = float(threshold)
        self.clear = float(threshold - 2.0 if clear is None else clear)
        if not self.clear < self.threshold:
            raise ValueError("clear must be below threshold")
        super().__init__()
        # per slot: the declared range (NaN: none), not part of the saved state
        self.low = np.empty(0)
        self.high = np.empty(0)
        self.span = np.empty(0)  # per slot: threshold - clear of its own (NaN: the detector's)
        self._seeded = False

    @classmethod
    def from_settings(cls, settings: DetectorSettings) -> Detector:
        params: dict[str, Any] = {
            "threshold": settings.threshold,
            "clear": settings.clear_threshold,
            **settings.params.get(cls.name, {}),
        }
        return check_params(cls.name, cls, params)

    def fields(self) -> Mapping[str, Field]:
        return {}

    def seed_range(self, slot: int, low: float, high: float) -> None:
        if not (math.isfinite(low) or math.isfinite(high)):
            if slot < len(self.high):  # a birth without a range: the threshold again
                self.low[slot] = self.high[slot] = np.nan
            return
        if slot >= len(self.high):
            cap = capacity_for(slot + 1, len(self.high))
            self.low = grown(self.low, cap, np.nan)
            self.high = grown(self.high, cap, np.nan)
        self.low[slot] = low if math.isfinite(low) else np.nan
        self.high[slot] = high if math.isfinite(high) else np.nan
        self._seeded = True

    def set_limits(self, slot: int, threshold: float, clear: float) -> None:
        """Give one slot its own threshold and clear level (``[overrides]``)."""
        if not clear < threshold:
            raise ValueError("clear must be below threshold")
        self.seed_range(slot, -math.inf, threshold)
        if slot >= len(self.span):
            self.span = grown(self.span, capacity_for(slot + 1, len(self.span)), np.nan)
        self.span[slot] = threshold - clear

    def threshold_of(self, slot: int) -> float:
        """The (upper) limit that applies to ``slot``."""
        if slot < len(self.high) and not np.isnan(self.high[slot]):
            return float(self.high[slot])
        return self.threshold

    def reset(self, slots: IntArray) -> None:
        super().reset(slots)
        if self._seeded:
            inside = slots[slots < len(self.high)]
            self.low[inside] = np.nan
            self.high[inside] = np.nan
            self.span[slots[slots < len(self.span)]] = np.nan

    def _limits(self, slots: IntArray) -> tuple[FloatArray, FloatArray]:
        """Per slot: (low, high) limits; -inf low and ``threshold`` without a declared range."""
        n = len(slots)
        low, high = np.full(n, -np.inf), np.full(n, self.threshold)
        if self._seeded:
            inside = slots < len(self.high)
            got_low = self.low[slots[inside]]
            got_high = self.high[slots[inside]]
            low[inside] = np.where(np.isnan(got_low), -np.inf, got_low)
            high[inside] = np.where(np.isnan(got_high), self.threshold, got_high)
        return low, high

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        span = self.threshold - self.clear
        if not self._seeded:
            score = np.clip(0.5 + 0.2 * (values - self.threshold) / span, 0.0, 1.0)
            n = len(values)
            return Scores(score, np.full(n, -np.inf), np.full(n, self.threshold))
        low, high = self._limits(slots)
        width: FloatArray | float = span
        if len(self.span):
            own = np.full(len(slots), np.nan)
            inside = slots < len(self.span)
            own[inside] = self.span[slots[inside]]
            width = np.where(np.isnan(own), span, own)
        above = 0.5 + 0.2 * (values - high) / width
        below = np.where(np.isfinite(low), 0.5 + 0.2 * (low - values) / width, 0.0)
        score = np.clip(np.maximum(above, below), 0.0, 1.0)
        return Scores(score, low, high)

    def expected_band(self, slots: IntArray) -> tuple[FloatArray, FloatArray]:
        """At most ``threshold`` (no lower bound), or the declared range."""
        low, high = self._limits(np.asarray(slots, dtype=np.intp))
        return np.where(np.isfinite(low), low, np.nan), high

"""Static threshold: the value itself crossing a fixed limit.

The score is 0.5 at ``threshold`` and 0.3 at ``clear`` (linear in between and beyond, clipped
to [0, 1]), so with the standard alert levels an alert is raised when the value reaches the
threshold and cleared once it falls below the clear level: hysteresis in value terms.

>>> import numpy as np
>>> d = ThresholdDetector(threshold=90.0, clear=88.0)
>>> d.score_series(np.array([24.5, 89.0, 90.0, 98.2])).round(2).tolist()
[0.0, 0.4, 0.5, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..config import DetectorSettings
from .base import Detector, Field, FloatArray, IntArray, Scores, check_params, nan_band


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
        # per-slot limits of sensors whose configuration overrides the threshold (NaN: the
        # detector's own); configuration, not learned state: set again at every start
        self._limits: np.ndarray | None = None

    def set_limits(self, slot: int, threshold: float, clear: float) -> None:
        """Give one slot its own threshold and clear level (``[overrides]``)."""
        if not clear < threshold:
            raise ValueError("clear must be below threshold")
        lim = self._limits
        if lim is None or slot >= len(lim):
            new = np.full((max(slot + 1, 2 * (0 if lim is None else len(lim)), 16), 2), np.nan)
            if lim is not None:
                new[: len(lim)] = lim
            lim = self._limits = new
        lim[slot] = (threshold, clear)

    def threshold_of(self, slot: int) -> float:
        """The threshold that applies to ``slot``."""
        lim = self._limits
        if lim is None or slot >= len(lim) or np.isnan(lim[slot, 0]):
            return self.threshold
        return float(lim[slot, 0])

    def _slot_limits(self, slots: IntArray) -> tuple[FloatArray, FloatArray] | None:
        lim = self._limits
        if lim is None:
            return None
        inside = slots < len(lim)
        got = np.full((len(slots), 2), np.nan)
        got[inside] = lim[slots[inside]]
        thr = np.where(np.isnan(got[:, 0]), self.threshold, got[:, 0])
        clr = np.where(np.isnan(got[:, 1]), self.clear, got[:, 1])
        return thr, clr

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

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        n = len(values)
        own = self._slot_limits(slots)
        if own is None:
            span = self.threshold - self.clear
            score = np.clip(0.5 + 0.2 * (values - self.threshold) / span, 0.0, 1.0)
            return Scores(score, np.full(n, -np.inf), np.full(n, self.threshold))
        thr, clr = own
        score = np.clip(0.5 + 0.2 * (values - thr) / (thr - clr), 0.0, 1.0)
        return Scores(score, np.full(n, -np.inf), thr)

    def expected_band(self, slots: IntArray) -> tuple[FloatArray, FloatArray]:
        """No lower bound; at most ``threshold`` (the slot's own, when it has one)."""
        own = self._slot_limits(slots)
        high = np.full(len(slots), self.threshold) if own is None else own[0]
        return nan_band(len(slots)), high

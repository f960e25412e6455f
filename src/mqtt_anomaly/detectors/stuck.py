"""Stuck sensor (flatline): the same value, within ``tolerance``, again and again.

A live analogue sensor always shows some noise; a run of identical readings means a frozen
transmitter or a failed ADC. The score is ``run / (2 * readings)`` clipped to [0, 1], so an
alert is raised after ``readings`` repeats and clears at the first real change.

>>> import numpy as np
>>> d = StuckDetector(readings=3)
>>> d.score_series(np.array([1.0, 1.1, 1.1, 1.1, 1.1, 1.2])).tolist()
[0.0, 0.0, 0.16666666666666666, 0.3333333333333333, 0.5, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from .base import Detector, Field, FloatArray, IntArray, Scores, nan_band


class StuckDetector(Detector):
    """Counts consecutive repeats of the previous value."""

    name: ClassVar[str] = "stuck"

    def __init__(self, *, readings: int = 30, tolerance: float = 0.0) -> None:
        if readings < 1 or tolerance < 0:
            raise ValueError("readings must be >= 1 and tolerance >= 0")
        self.readings = int(readings)
        self.tolerance = float(tolerance)
        super().__init__()

    def fields(self) -> Mapping[str, Field]:
        return {"last": Field(np.float64, np.nan), "run": Field(np.int64, 0)}

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        st = self.state
        same = np.abs(values - st["last"][slots]) <= self.tolerance  # NaN last -> False
        run = np.where(same, st["run"][slots] + 1, 0)
        st["run"][slots] = run
        st["last"][slots] = values
        score = np.clip(run / (2.0 * self.readings), 0.0, 1.0)
        n = len(values)
        return Scores(score, nan_band(n), nan_band(n))

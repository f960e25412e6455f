"""ART: adaptive-resonance categories of multi-scale window shapes, reported once per incident.

Each reading is summarised with the window of its recent values at several scales: the value
itself and the means of the blocks of readings 1, 2-3, 4-7, 8-15 and 16-31 back, all scaled to
the range ``[lo, hi]`` of values the sensor has shown so far. These feature vectors are
clustered on line the way fuzzy ART with complement coding does it: a category is a box
``[u, v]`` in feature space, an input *resonates* with a box when taking it in would leave the
box no larger than ``size`` (the vigilance), and then the box grows to include it (fast
learning). An input that resonates with no box founds a new category: the sensor is doing
something it has never done. When the ``categories`` boxes are all used, the one used least
recently is recycled.

The novelty of an input is its L1 distance to the nearest box (how far the nearest known
behaviour would have to stretch). Founding a category after the learning period (``warmup``
readings, which are also used to learn the range) with novelty above ``gap`` raises an alert,
and so does a value outside the range ever seen by more than ``gap`` of its span (a *spatial*
anomaly). The score of an alert grows with its novelty. After an alert the detector is silent
for ``hold`` readings, so an incident gives one early alert, which is what a person wants and
what the NAB cost model rewards. Readings that raise no alert score below 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from ._common import TableDetector
from .base import Field, FloatArray, IntArray, Scores, nan_band

_BLOCKS = ((0, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 32))  # readings back: [a, b)
_WIN = 32


def _block_matrix() -> FloatArray:
    m = np.zeros((_WIN, len(_BLOCKS)))
    for j, (a, b) in enumerate(_BLOCKS):
        m[a:b, j] = 1.0 / (b - a)
    return m


class ArtDetector(TableDetector):
    """Fuzzy-ART boxes over multi-scale window features; new category = anomaly."""

    name: ClassVar[str] = "art"
    critical_level: ClassVar[float] = 0.8

    def __init__(
        self,
        *,
        warmup: int = 400,
        categories: int = 32,
        size: float = 0.8,
        gap: float = 0.3,
        hold: int = 300,
        scale: float = 1.0,
    ) -> None:
        if warmup < _WIN or hold < 1 or categories < 2:
            raise ValueError(f"warmup >= {_WIN}, hold >= 1, categories >= 2")
        if not (size > 0 and gap > 0 and scale > 0):
            raise ValueError("size, gap and scale must be positive")
        self.warmup = int(warmup)
        self.categories = int(categories)
        self.size = float(size)
        self.gap = float(gap)
        self.hold = int(hold)
        self.scale = float(scale)
        self._blocks = _block_matrix()
        super().__init__()

    def fields(self) -> Mapping[str, Field]:
        return {
            "n": Field(np.int64, 0),
            "buf": Field(np.float64, 0.0),
            "lo": Field(np.float64, np.inf),
            "hi": Field(np.float64, -np.inf),
            "u": Field(np.float32, np.inf),  # box lower corners
            "v": Field(np.float32, -np.inf),  # and upper corners
            "used": Field(np.int64, -1),  # when each box last resonated (-1: free)
            "quiet": Field(np.int64, 0),  # readings left in the silent period
        }

    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        d = len(_BLOCKS)
        k = self.categories
        return {"buf": (_WIN,), "u": (k, d), "v": (k, d), "used": (k,)}

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        st = self.state
        m = len(slots)
        rows = np.arange(m)
        n = st["n"][slots]
        buf = st["buf"][slots]
        buf[rows, n % _WIN] = values
        back = (n[:, None] - np.arange(_WIN)) % _WIN  # position of the reading j back
        recent = buf[rows[:, None], back]
        lo, hi = st["lo"][slots], st["hi"][slots]
        span = hi - lo
        has = span > 0
        safe = np.where(has, span, 1.0)
        with np.errstate(invalid="ignore"):
            raw = (recent @ self._blocks - lo[:, None]) / safe[:, None]
        feat = np.where(has[:, None], raw, 0.0)
        # spatial novelty: beyond the range ever seen, as a fraction of its span
        outside = np.where(has, np.maximum(values - hi, lo - values) / safe, 0.0)
        outside = np.maximum(outside, 0.0)
        # resonance with the boxes
        u, v, used = st["u"][slots], st["v"][slots], st["used"][slots]
        f = feat[:, None, :].astype(np.float32)
        live = used >= 0
        dist = np.where(live, np.maximum(np.maximum(u - f, f - v), 0.0).sum(axis=2), np.inf)
        grown = np.where(live, (np.maximum(v, f) - np.minimum(u, f)).sum(axis=2), np.inf)
        fits = grown <= self.size
        cand = np.where(fits, dist, np.inf)
        k = cand.argmin(axis=1)
        resonant = fits[rows, k]
        novelty = np.where(live.any(axis=1), dist.min(axis=1), 0.0)
        novelty = np.where(resonant, 0.0, novelty)
        # alert decision
        ready = n >= self.warmup
        quiet = st["quiet"][slots]
        evidence = np.maximum(novelty, outside * len(_BLOCKS)) / self.gap
        alert = ready & (quiet <= 0) & (evidence >= 1.0)
        e = np.where(ready & (quiet <= 0), evidence, 0.0)
        s = np.where(
            alert,
            0.5 + 0.5 * (1.0 - 1.0 / (1.0 + self.scale * np.log(np.maximum(e, 1.0)))),
            0.5 * np.minimum(e, 0.999),
        )
        # learn: grow the resonant box, or found a category in the stalest one
        full = n >= _WIN  # only whole windows are categorised
        new = full & ~resonant
        stale = np.where(live, used, -1).argmin(axis=1)
        k = np.where(resonant, k, stale)
        uk, vk = u[rows, k], v[rows, k]
        fk = feat.astype(np.float32)
        u[rows, k] = np.where(full[:, None], np.where(new[:, None], fk, np.minimum(uk, fk)), uk)
        v[rows, k] = np.where(full[:, None], np.where(new[:, None], fk, np.maximum(vk, fk)), vk)
        used[rows, k] = np.where(full, n, used[rows, k])
        st["u"][slots], st["v"][slots], st["used"][slots] = u, v, used
        st["quiet"][slots] = np.where(alert, self.hold, quiet - 1)
        st["lo"][slots] = np.minimum(lo, values)
        st["hi"][slots] = np.maximum(hi, values)
        st["buf"][slots] = buf
        st["n"][slots] = n + 1
        return Scores(np.clip(s, 0.0, 1.0), nan_band(m), nan_band(m))

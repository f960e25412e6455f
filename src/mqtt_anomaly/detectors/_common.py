"""Shared pieces of the detectors: per-slot tables, a learned reference, expected bands, the
Gaussian tail, tail-to-score mapping.

:class:`TableDetector` lets a detector keep a fixed-size row of values per slot (a time-of-day
profile, a hashed context table): ``shapes()`` gives the trailing shape of such a field. The
memory per slot stays constant.

:class:`EwmaDetector` keeps per slot a count and a winsorised exponentially weighted mean and
variance (:mod:`._stats`), checks and stores the parameters they take and learns them;
:func:`check_ewma` checks those parameters (for a detector keeping them its own way);
:func:`known_band` is the frame of an ``expected_band`` (NaN for slots never seen).

:func:`log10_tail` is ``log10`` of the upper tail of the standard normal, computed without
underflow (so a 40-sigma reading still gets a finite, ordered value), and :func:`tail_score`
maps a tail probability to a score: 0.5 at ``1e-5`` (the alert level), 1.0 at ``1e-10``.

>>> import numpy as np
>>> log10_tail(np.array([0.0, 1.0, 4.264891, 40.0])).round(3).tolist()
[-0.301, -0.8, -5.0, -349.437]
>>> tail_score(np.array([-5.0, -10.0, -1.0])).tolist()
[0.5, 1.0, 0.1]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray

from ._grow import capacity_for, grown
from ._stats import ewma_update, floored_std, warmup_rate
from .base import Detector, Field, FloatArray, IntArray, nan_band

_LN10 = float(np.log(10.0))
# Chebyshev fit of erfc (Numerical Recipes' erfcc, fractional error below 1.2e-7)
_ERFC = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def log10_tail(z: FloatArray) -> FloatArray:
    """``log10 P(Z > z)`` for a standard normal ``Z``, stable far into the tail."""
    x = np.abs(z) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * x)
    poly = np.zeros_like(x)
    for c in reversed(_ERFC):
        poly = poly * t + c
    ln_erfc = np.log(t) - x * x + poly  # ln erfc(|z| / sqrt 2)
    ln_upper = ln_erfc - np.log(2.0)  # ln P(Z > |z|)
    ln_tail = np.where(z >= 0, ln_upper, np.log1p(-np.exp(ln_upper)))
    return np.asarray(ln_tail / _LN10, dtype=np.float64)


def tail_score(log10_p: FloatArray) -> FloatArray:
    """A score in [0, 1] from ``log10`` of a tail probability: ``-log10(p) / 10``."""
    return np.asarray(np.clip(-log10_p / 10.0, 0.0, 1.0), dtype=np.float64)


class TableDetector(Detector):
    """A detector some of whose per-slot fields are fixed-size rows (``shapes()``)."""

    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        """Trailing shape of each field that holds more than one value per slot."""
        return {}

    def reserve(self, n: int) -> None:
        if n <= self.capacity:
            return
        cap = capacity_for(n, self.capacity)
        shapes = self.shapes()
        for k, f in self.fields().items():
            self.state[k] = grown(self.state[k], cap, f.fill, shape=shapes.get(k, ()))
        self.capacity = cap


def known_band(
    slots: IntArray, capacity: int, band: Callable[[IntArray], tuple[FloatArray, FloatArray]]
) -> tuple[FloatArray, FloatArray]:
    """An ``expected_band``: ``band(slots)`` for the slots within ``capacity``, NaN for the rest."""
    low, high = nan_band(len(slots)), nan_band(len(slots))
    known = slots < capacity
    low[known], high[known] = band(slots[known])
    return low, high


def check_ewma(alpha: float, clip: float, min_std: float, rel_std: float) -> None:
    """Refuse parameters of a winsorised EWMA with a floored deviation that cannot work."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if clip <= 0 or min_std < 0 or rel_std < 0:
        raise ValueError("clip must be positive, min_std and rel_std non-negative")


class EwmaDetector(Detector):
    """A detector that standardises each reading against a learned reference: per slot the
    count ``n`` and a winsorised exponentially weighted ``mean`` and ``var`` (a plain running
    mean and variance for the first ``warmup`` readings), with a floored deviation."""

    alpha: float
    warmup: int
    clip: float
    min_std: float
    rel_std: float

    def __init__(
        self, *, alpha: float, warmup: int, clip: float, min_std: float, rel_std: float
    ) -> None:
        check_ewma(alpha, clip, min_std, rel_std)
        self.alpha = float(alpha)
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

    def _reference(
        self, slots: IntArray
    ) -> tuple[NDArray[np.int64], FloatArray, FloatArray, FloatArray]:
        """``(n, mean, var, std)`` of ``slots`` (``std`` floored)."""
        st = self.state
        n = st["n"][slots]
        mean = st["mean"][slots]
        var = st["var"][slots]
        return n, mean, var, floored_std(var, mean, self.min_std, self.rel_std)

    def _learn(
        self,
        slots: IntArray,
        n: NDArray[np.int64],
        mean: FloatArray,
        var: FloatArray,
        dev: FloatArray,
        std: FloatArray,
        ready: NDArray[np.bool_],
    ) -> None:
        """Learn readings ``mean + dev``: running mean and variance while warming up, then the
        EWMA at ``alpha`` with the deviation clipped to ``clip`` standard deviations."""
        st = self.state
        a = warmup_rate(n, self.alpha, ready)
        st["mean"][slots], st["var"][slots] = ewma_update(mean, var, dev, a, self.clip * std, ready)
        st["n"][slots] = n + 1

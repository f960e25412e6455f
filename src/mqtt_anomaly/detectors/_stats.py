"""Vectorised streaming statistics shared by the detectors: one step of a winsorised
exponentially weighted mean and variance, its learning rates, and the floored deviation.

Every function works on arrays of the slots of one call; nothing is kept here. The formulas
are the detectors' own, kept operation for operation so their numbers do not change:

- :func:`floored_std`: ``sqrt(var + (min_std + rel_std * |mean|)²)``, a standard deviation
  that never falls below a floor (so a flat signal does not make every wiggle infinite);
- :func:`ewma_update`: ``mean + a * step`` and ``(1 - a) * (var + a * step²)`` where ``step``
  is the deviation, clipped to ``±limit`` where ``winsorise`` holds (so one spike does not
  inflate the variance);
- :func:`warmup_rate`: ``1 / (n + 1)`` (a plain running mean and variance) until ``ready``,
  then ``alpha``; :func:`floor_rate`: ``max(alpha, 1 / (n + 1))``;
- :func:`band`: ``center ± half`` where ``ready``, NaN elsewhere (an expected range).

>>> import numpy as np
>>> mean, var = np.zeros(2), np.ones(2)
>>> dev = np.array([10.0, 10.0]) - mean
>>> m, v = ewma_update(mean, var, dev, np.full(2, 0.5), np.full(2, 3.0), np.array([True, False]))
>>> m.tolist(), v.tolist()  # the first step clipped to 3, the second not
([1.5, 5.0], [2.75, 25.5])
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def floored_std(var: FloatArray, mean: FloatArray, min_std: float, rel_std: float) -> FloatArray:
    """``sqrt(var + (min_std + rel_std * |mean|)²)``."""
    return np.asarray(np.sqrt(var + (min_std + rel_std * np.abs(mean)) ** 2), dtype=np.float64)


def warmup_rate(n: NDArray[np.int64], alpha: float, ready: NDArray[np.bool_]) -> FloatArray:
    """``1 / (n + 1)`` where not ``ready`` (a running mean of the ``n`` readings so far), else
    ``alpha``."""
    return np.asarray(np.where(ready, alpha, 1.0 / (n + 1.0)), dtype=np.float64)


def floor_rate(n: NDArray[np.int64], alpha: float) -> FloatArray:
    """``max(alpha, 1 / (n + 1))``: a running mean until ``1 / (n + 1)`` falls to ``alpha``."""
    return np.asarray(np.maximum(alpha, 1.0 / (n + 1.0)), dtype=np.float64)


def ewma_update(
    mean: FloatArray,
    var: FloatArray,
    dev: FloatArray,
    rate: FloatArray,
    limit: FloatArray,
    winsorise: NDArray[np.bool_],
) -> tuple[FloatArray, FloatArray]:
    """The next mean and variance after a reading ``mean + dev``, learned at ``rate``; where
    ``winsorise`` holds the deviation is clipped to ``±limit`` first."""
    step = np.where(winsorise, np.clip(dev, -limit, limit), dev)
    return mean + rate * step, (1.0 - rate) * (var + rate * step * step)


def band(
    center: FloatArray, half: FloatArray, ready: NDArray[np.bool_]
) -> tuple[FloatArray, FloatArray]:
    """``(center - half, center + half)`` where ``ready``, NaN elsewhere."""
    return np.where(ready, center - half, np.nan), np.where(ready, center + half, np.nan)

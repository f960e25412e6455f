"""Offline scoring of one asset's rows: commissioning on ``train``, then ``rows`` in order.

This is the very same detector the service runs (:func:`create`: an :class:`~.spc.AssetDetector`
or a :class:`~.regress.RegressDetector`), fed one row at a time in
one slot, so an evaluation measures what the service would raise.

>>> rng = np.random.default_rng(2)
>>> t = rng.normal(size=(700, 1))
>>> x = np.hstack([t, t, -t, 2 * t]) + rng.normal(scale=0.1, size=(700, 4))
>>> x[600:, 1] -= 2 * t[600:, 0]          # the relation between sensors 0 and 1 breaks
>>> scores, alarms, contributions = score_rows("pca_mewma", x[:400], x[400:])
>>> scores.shape, alarms.shape, contributions.shape
((300,), (300,), (300, 4))
>>> float(alarms[:200].mean()) < 0.05, float(alarms[210:].mean()) > 0.95
(True, True)
>>> float((contributions[210:].argmax(axis=1) == 1).mean()) > 0.8   # sensor 1 leads
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .regress import RegressDetector
from .spc import METHODS, AssetDetector

FloatArray = NDArray[np.float64]
NAMES = (*METHODS, "regress")
"""The detectors :func:`score_rows` knows (what ``evaluate`` registers as row scorers)."""


def create(k: int, method: str, **params: Any) -> AssetDetector:
    """The asset detector of ``method`` for assets of ``k`` sensors: a
    :class:`~.regress.RegressDetector` for ``regress``, else an :class:`AssetDetector`."""
    if method == "regress":
        return RegressDetector(k, **params)
    return AssetDetector(k, method=method, **params)


def score_rows(
    name: str, train: FloatArray, rows: FloatArray, **params: Any
) -> tuple[FloatArray, NDArray[np.bool_], FloatArray]:
    """Commission an :class:`AssetDetector` (``method=name``, ``params`` its other keyword
    arguments) on ``train`` (``(n, k)``), then score ``rows`` (``(m, k)``, NaN: missing).

    Returns ``(scores, alarms, contributions)``: per row the score in [0, 1] (0.5 at the
    limit), whether the k-of-n alarm is active after it, and each sensor's share ``(m, k)``.
    A ValueError names what is wrong (an unknown name, too few rows, rows of another width).
    """
    if name not in NAMES:
        raise ValueError(f"unknown multivariate detector {name!r} (one of: {', '.join(NAMES)})")
    train = np.asarray(train, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.float64)
    if train.ndim != 2 or rows.ndim != 2 or train.shape[1] != rows.shape[1]:
        raise ValueError(f"train {train.shape} and rows {rows.shape} must be 2-D of equal width")
    params = {"commission_rows": len(train), "buffer": max(len(train), 1024), **params}
    det = create(train.shape[1], name, **params)
    slot = np.zeros(1, dtype=np.intp)
    for row in train:
        det.update(slot, row[None, :])
    if det.phase_of(slot)[0] != 1:
        raise ValueError(f"commissioning did not finish on {len(train)} rows")
    m = len(rows)
    scores, alarms = np.empty(m), np.zeros(m, dtype=bool)
    contributions = np.zeros((m, rows.shape[1]))
    for i in range(m):
        out = det.update(slot, rows[i : i + 1])
        scores[i], alarms[i] = out.score[0], out.alarm[0]
        contributions[i] = out.contributions[0]
    return scores, alarms, contributions

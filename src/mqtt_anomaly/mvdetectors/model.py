"""Fitting the model of one asset: robust scaling, PCA, the combined index and its limits.

A model is fitted from an asset's commissioning rows (``(n, k)``, NaN where a sensor was
missing):

- **robust scaling**: per sensor the median and 1.4826 × MAD (the standard deviation when the
  MAD is zero, a floor relative to the level when both are), scaled values winsorised at ±6;
  the centre is then moved to the mean of the winsorised scaled rows;
- **PCA** of the scaled rows' covariance: the ``a`` leading components that explain
  ``variance`` of it (at least one, at most ``k - 1``), eigenvalues floored so a constant
  sensor does not divide by zero;
- **the combined index** ``φ(x) = T²/a + SPE/θ`` (Hotelling T² on the retained components over
  their count, SPE/Q on the residual over its expected value ``θ``) as one symmetric matrix
  ``W = P Λ^-½ Pᵀ/√a + (I - P Pᵀ)/√θ`` with ``φ(x) = ‖W x‖²`` (the contributions of each
  sensor are reconstruction-based, see :mod:`.spc`);
- **limits from held-out rows**: the model of the first ``1 - holdout`` of the rows scores the
  rest in order as monitoring would (:func:`follow`: the centre following the residual part of
  each row by ``adapt``), and the ``quantile`` of those out-of-sample values
  (:func:`tail_limit`: empirical, or from a scaled χ² fitted to them when that is higher) is
  the limit, for the row index and for
  the MEWMA of the scaled rows (that one at least the row index's); the model kept is then
  fitted on all rows, its centre followed through them to where monitoring starts.

>>> rng = np.random.default_rng(0)
>>> t = rng.normal(size=(400, 1))
>>> rows = np.hstack([t, 2 * t, -t]) + rng.normal(scale=0.05, size=(400, 3))
>>> m = fit(rows, variance=0.9, holdout=0.3, quantile=0.99, lam=0.1)
>>> m.retained, bool(m.limit_row > 0), bool(m.limit_mewma > 0)
(1, True, True)
>>> bool(index(m.w, m.scaled(np.array([[1.0, 2.0, -1.0]])))[0] < index(
...     m.w, m.scaled(np.array([[1.0, -2.0, -1.0]])))[0])
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

MAD_SD = 1.4826
WINSOR = 6.0
MIN_ROWS = 8


@dataclass(slots=True)
class Model:
    """One asset's fitted model (see the module docstring)."""

    center: FloatArray  # (k,) raw units
    scale: FloatArray  # (k,) raw units
    cov: FloatArray  # (k, k) of the scaled rows
    w: FloatArray  # (k, k) the combined index's matrix
    resid: FloatArray  # (k, k) projector on the residual subspace
    retained: int
    limit_row: float
    limit_mewma: float

    def scaled(self, rows: FloatArray) -> FloatArray:
        return np.clip((rows - self.center) / self.scale, -WINSOR, WINSOR)


def robust_scale(rows: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per-sensor median and robust spread of ``rows`` (NaN ignored)."""
    with np.errstate(all="ignore"):
        center = np.nanmedian(rows, axis=0)
        spread = MAD_SD * np.nanmedian(np.abs(rows - center), axis=0)
        sd = np.nanstd(rows, axis=0)
    center = np.where(np.isfinite(center), center, 0.0)
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, sd)
    floor = 1e-6 * np.maximum(np.abs(center), 1.0)
    spread = np.where(np.isfinite(spread) & (spread > floor), spread, floor)
    return center, spread


def matrix(cov: FloatArray, variance: float, floor: float) -> tuple[FloatArray, FloatArray, int]:
    """The combined index's matrix ``W`` for ``cov``, the projector on the residual subspace
    ``I - P Pᵀ`` and the number of retained components."""
    k = len(cov)
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    vals = np.maximum(vals, max(floor * float(vals.mean()), 1e-12))
    share = np.cumsum(vals) / vals.sum()
    a = min(max(int(np.searchsorted(share, variance)) + 1, 1), max(k - 1, 1))
    p = vecs[:, :a]
    w = (p / np.sqrt(vals[:a])) @ p.T / np.sqrt(a)
    resid = np.eye(k) - p @ p.T
    if a < k:
        w = w + resid / np.sqrt(float(vals[a:].sum()))
    return w, resid, a


def covariance(scaled: FloatArray) -> FloatArray:
    """Covariance about zero (the median) of scaled rows; a missing value counts as the median."""
    x = np.nan_to_num(scaled, nan=0.0)
    return (x.T @ x) / max(len(x) - 1, 1)


def impute(cov: FloatArray, x: FloatArray) -> FloatArray:
    """``x`` (scaled, one row) with its NaN replaced by their expectation given the others."""
    miss = np.isnan(x)
    if not miss.any():
        return x
    out = x.copy()
    if miss.all():
        out[:] = 0.0
        return out
    obs = ~miss
    c_oo = cov[np.ix_(obs, obs)] + 1e-6 * np.eye(int(obs.sum()))
    out[miss] = cov[np.ix_(miss, obs)] @ np.linalg.solve(c_oo, x[obs])
    return out


def index(w: FloatArray, scaled: FloatArray) -> FloatArray:
    """The combined index of each scaled row (no NaN) under ``w``."""
    e = scaled @ w
    out: FloatArray = np.einsum("ij,ij->i", e, e)
    return out


def mewma_index(w: FloatArray, scaled: FloatArray, lam: float) -> FloatArray:
    """The MEWMA statistic along ``scaled`` rows, starting from zero."""
    z = np.zeros(scaled.shape[1])
    out = np.empty(len(scaled))
    for i, x in enumerate(scaled):
        z = (1.0 - lam) * z + lam * x
        e = w @ z
        out[i] = float(e @ e) * (2.0 - lam) / lam
    return out


def tail_limit(values: FloatArray, quantile: float) -> float:
    """The ``quantile`` of a non-negative index from few values: the larger of the empirical
    quantile and that of ``g·χ²(h)`` with ``g``, ``h`` from the values' mean and variance
    (Box's approximation; the χ² quantile by Wilson-Hilferty). A quadratic form of Gaussian
    rows has that shape, and its tail is then not limited to the largest value seen."""
    v = values[np.isfinite(values)]
    if not len(v):
        return 1.0
    empirical = float(np.quantile(v, quantile))
    mean, var = float(v.mean()), float(v.var())
    if mean <= 0 or var <= 0:
        return max(empirical, 1e-9)
    g, h = var / (2.0 * mean), 2.0 * mean * mean / var
    z = NormalDist().inv_cdf(quantile)
    c = 2.0 / (9.0 * h)
    chi2 = h * max(1.0 - c + z * math.sqrt(c), 0.0) ** 3
    return max(empirical, g * chi2, 1e-9)


def _base(rows: FloatArray, variance: float, floor: float) -> Model:
    center, scale = robust_scale(rows)
    # the centre of the covariance: the mean of the winsorised scaled rows (a median is off
    # the principal subspace by its sampling error, which the residual and the MEWMA amplify)
    with np.errstate(all="ignore"):
        shift = np.nanmean(np.clip((rows - center) / scale, -WINSOR, WINSOR), axis=0)
    center = center + np.where(np.isfinite(shift), shift, 0.0) * scale
    eye = np.eye(rows.shape[1])
    m = Model(center, scale, eye, eye, eye, 0, 1.0, 1.0)
    m.cov = covariance(m.scaled(rows))
    m.w, m.resid, m.retained = matrix(m.cov, variance, floor)
    return m


def follow(m: Model, rows: FloatArray, lam: float, adapt: float) -> tuple[FloatArray, FloatArray]:
    """Score ``rows`` in order as monitoring does: the row index and the MEWMA of each, the
    centre following the residual part of each row by ``adapt`` (``m.center`` is moved)."""
    n = len(rows)
    idx, mew = np.empty(n), np.empty(n)
    z = np.zeros(rows.shape[1])
    resid = m.resid * adapt
    for i in range(n):
        x = m.scaled(rows[i])
        if np.isnan(x).any():
            x = impute(m.cov, x)
        e = m.w @ x
        idx[i] = float(e @ e)
        z = (1.0 - lam) * z + lam * x
        ez = m.w @ z
        mew[i] = float(ez @ ez) * (2.0 - lam) / lam
        m.center = m.center + (resid @ x) * m.scale
    return idx, mew


def fit(
    rows: FloatArray,
    *,
    variance: float,
    holdout: float,
    quantile: float,
    lam: float,
    floor: float = 1e-3,
    adapt: float = 0.0,
) -> Model:
    """Fit a model on ``rows``, limits from the held-out tail (see the module docstring)."""
    rows = np.asarray(rows, dtype=np.float64)
    n = len(rows)
    n_fit = min(max(round(n * (1.0 - holdout)), MIN_ROWS), n - MIN_ROWS // 2)
    if n < MIN_ROWS + MIN_ROWS // 2 or n_fit < MIN_ROWS:
        raise ValueError(f"commissioning needs at least {MIN_ROWS + MIN_ROWS // 2} rows, got {n}")
    first = _base(rows[:n_fit], variance, floor)
    held_index, mew = follow(first, rows[n_fit:], lam, adapt)
    limit_row = tail_limit(held_index, quantile)
    # the held-out MEWMA values start from zero: those of its first 1/lam rows are left out
    limit_mewma = tail_limit(mew[min(int(1.0 / lam), len(mew) // 2) :], quantile)
    model = _base(rows, variance, floor)
    if adapt > 0:  # the centre where monitoring starts: followed through the rows, in order
        follow(model, rows, lam, adapt)
    model.limit_row = max(limit_row, 1e-9)
    # The MEWMA of rows like the commissioning ones has the row index's distribution (the same
    # covariance up to lam / (2 - lam), undone in mewma_index), but its held-out tail is taken
    # from few independent values: never below the row index's limit.
    model.limit_mewma = max(limit_mewma, model.limit_row)
    return model

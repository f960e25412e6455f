"""Each sensor predicted from the others: residuals with a slowly tracked bias, vectorised.

:class:`RegressDetector` (``method = "regress"``) has the lifecycle, batch protocol, alarm
hysteresis and state of :class:`~.spc.AssetDetector`; only the model differs. PCA limits on
the scaled rows themselves alarm on every slow drift of a cause the commissioning did not show
(a tank level, the ambient temperature, the supply voltage); the relations between the sensors
hold through those drifts, and the drifts move the residuals of the relations slowly, where a
fault moves them within minutes.

**Model** (fitted on the commissioning rows, robust-scaled as in :mod:`.model`): per sensor a
ridge regression on all the others, as one matrix ``M = D⁻¹ P`` with ``P = (C + ridge I)⁻¹``
(``C`` the scaled rows' covariance, ``D`` its diagonal): ``(M z)_j`` is sensor ``j``'s
residual, its value less what the other sensors predict.

**Held-out scales and limit**: the commissioning rows in ``folds`` contiguous blocks, each
predicted by the model of the others (as monitoring predicts rows it never learned): per sensor
the residual's scale is the larger of the in-sample and the held-out root mean square; the
limit of ``Σ u_j²`` (``u`` the residuals over their scales) is the larger of the ``quantile``
of the held-out rows' values and that of χ² with ``k`` degrees of freedom, times ``margin``.

**Monitoring**: ``u = (M z - b) / σ``, the index ``Σ u_j²`` over its limit is ``ratio``; the
contributions are the shares ``u_j² / Σ u²``. The bias ``b`` (starting at the mean residual of
the last commissioning rows) follows the residuals of the rows while no alarm is active, as
an exponential mean over ``bias_rows`` rows, each step bounded at ``clip`` times the residual's
scale (Huber): a slow drift is followed at its own pace, the first rows of a fault (before
its alarm is raised) move it little. Each sensor's residual variance ``σ²`` follows the same
bounded steps over ``var_rows`` rows, never below its in-sample value. During an alarm
nothing moves: a persistent fault stays in alarm until it
ends, and then the residuals return to where they were.

A missing sensor is imputed from the others (conditional mean under the learned covariance)
before its residuals are taken, and counts for nothing in the index.

>>> rng = np.random.default_rng(1)
>>> t = rng.normal(size=(900, 1))
>>> x = np.hstack([t, 2 * t, -t, t]) + rng.normal(scale=0.05, size=(900, 4))
>>> x[600:, 2] += 0.5                    # sensor 2 leaves its relation to the others
>>> det = RegressDetector(4, commission_rows=400)
>>> out = [det.update(np.zeros(1, dtype=np.intp), row[None, :]) for row in x]
>>> alarm = np.array([o.alarm[0] for o in out])
>>> bool(alarm[400:600].any()), bool(alarm[610:].all())
(False, True)
>>> int(np.argmax(out[700].contributions[0]))
2
"""

from __future__ import annotations

import math
from itertools import pairwise
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .model import impute, robust_scale
from .spc import MONITORING, AssetDetector

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]

RANGE = 1e3  # scaled values are clipped here (no winsorising: a regression extrapolates)

_PARAMS = (
    "method",
    "commission_rows",
    "commission_seconds",
    "ridge",
    "folds",
    "quantile",
    "margin",
    "bias_rows",
    "var_rows",
    "buffer",
    "alarm_k",
    "alarm_n",
    "alarm_quiet",
    "clip",
)


def chi2_quantile(q: float, dof: int) -> float:
    """The ``q`` quantile of χ² with ``dof`` degrees of freedom (Wilson-Hilferty)."""
    z = NormalDist().inv_cdf(q)
    c = 2.0 / (9.0 * dof)
    return dof * max(1.0 - c + z * math.sqrt(c), 0.0) ** 3


def residual_matrix(z: FloatArray, ridge: float) -> tuple[FloatArray, FloatArray]:
    """``M`` (``(M z)_j``: sensor ``j`` less its ridge prediction from the others) and the
    covariance of the scaled, centred rows ``z``."""
    k = z.shape[1]
    cov = (z.T @ z) / max(len(z) - 1, 1)
    prec = np.linalg.inv(cov + ridge * np.eye(k))
    m: FloatArray = prec / np.diag(prec)[:, None]
    return m, cov


def _scaled_rows(rows: FloatArray, center: FloatArray, scale: FloatArray) -> FloatArray:
    z = np.clip((rows - center) / scale, -RANGE, RANGE)
    return np.nan_to_num(z, nan=0.0)


class Fitted:
    """One asset's fitted regression model (see the module docstring)."""

    def __init__(self, rows: FloatArray, *, ridge: float, folds: int, quantile: float) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        n, k = rows.shape
        if n < 4 * folds:
            raise ValueError(f"commissioning needs at least {4 * folds} rows, got {n}")
        center, scale = robust_scale(rows)
        z = _scaled_rows(rows, center, scale)
        mu = z.mean(axis=0)
        self.center: FloatArray = center + mu * scale
        self.scale: FloatArray = scale
        z = z - mu
        self.m, self.cov = residual_matrix(z, ridge)
        inside = z @ self.m.T
        # held out: each block predicted by the model of the other blocks
        held = np.empty_like(z)
        edges = np.linspace(0, n, folds + 1).astype(int)
        for a, b in pairwise(edges.tolist()):
            rest = np.concatenate((rows[:a], rows[b:]))
            c, sc = robust_scale(rest)
            zr = _scaled_rows(rest, c, sc)
            centre = zr.mean(axis=0)
            m, _ = residual_matrix(zr - centre, ridge)
            # in the units of the kept model's scaling, like every monitoring residual
            held[a:b] = (_scaled_rows(rows[a:b], c, sc) - centre) @ m.T * sc / scale
        s_in = inside.std(axis=0)
        s_held = np.sqrt(np.mean(held * held, axis=0))
        tiny = 1e-9
        self.floor: FloatArray = np.maximum(s_in, tiny) ** 2
        self.var: FloatArray = np.maximum(np.maximum(s_in, s_held), tiny) ** 2
        u = (held - held.mean(axis=0)) / np.sqrt(self.var)
        self.limit = max(chi2_quantile(quantile, k), float(np.quantile((u * u).sum(1), quantile)))
        self.bias: FloatArray = inside[-max(min(60, n // 5), 1) :].mean(axis=0)


class RegressDetector(AssetDetector):
    """Assets of ``k`` sensors, each sensor regressed on the others (see the module
    docstring); the lifecycle and the alarm are :class:`AssetDetector`'s."""

    def __init__(
        self,
        k: int,
        *,
        method: str = "regress",
        commission_rows: int = 400,
        commission_seconds: float = 0.0,
        ridge: float = 0.01,
        folds: int = 5,
        quantile: float = 0.999,
        margin: float = 2.0,
        bias_rows: float = 1800.0,
        var_rows: float = 3600.0,
        buffer: int = 1024,
        alarm_k: int = 3,
        alarm_n: int = 5,
        alarm_quiet: int = 10,
        clip: float = 2.0,
    ) -> None:
        if method != "regress":
            raise ValueError(f"RegressDetector's method is 'regress', got {method!r}")
        if not ridge > 0 or not 2 <= folds <= 20:
            raise ValueError("ridge must be > 0 and folds in [2, 20]")
        if not 0.5 < quantile < 1.0 or margin < 1.0:
            raise ValueError("quantile must be in (0.5, 1) and margin at least 1")
        if bias_rows < 1 or var_rows < 1 or not clip > 0:
            raise ValueError("bias_rows and var_rows must be at least 1, clip > 0")
        super().__init__(
            k,
            method="pca",
            commission_rows=commission_rows,
            commission_seconds=commission_seconds,
            quantile=quantile,
            margin=margin,
            buffer=buffer,
            alarm_k=alarm_k,
            alarm_n=alarm_n,
            alarm_quiet=alarm_quiet,
        )
        self.method = "regress"
        self.ridge = float(ridge)
        self.folds = int(folds)
        self.bias_rows = float(bias_rows)
        self.var_rows = float(var_rows)
        self.clip = float(clip)
        self._last: FloatArray = np.zeros((0, k))

    def _fields(self) -> dict[str, tuple[type[np.generic], tuple[int, ...], float]]:
        k = self.k
        return {
            "phase": (np.int8, (), 0),
            "seen": (np.int64, (), 0),
            "first_ts": (np.float64, (), np.nan),
            "center": (np.float64, (k,), 0.0),
            "scale": (np.float64, (k,), 1.0),
            "m": (np.float64, (k, k), 0.0),
            "cov": (np.float32, (k, k), 0.0),
            "bias": (np.float64, (k,), 0.0),
            "var": (np.float64, (k,), 1.0),
            "floor": (np.float64, (k,), 1.0),
            "limits": (np.float64, (1,), 1.0),
        }

    def params(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in _PARAMS}

    def _commission(self, slot: int) -> None:
        rows = self.rows.pop(slot)
        self.stride.pop(slot, None)
        f = Fitted(rows, ridge=self.ridge, folds=self.folds, quantile=self.quantile)
        st = self.state
        st["center"][slot], st["scale"][slot] = f.center, f.scale
        st["m"][slot], st["cov"][slot] = f.m, f.cov
        st["bias"][slot], st["var"][slot], st["floor"][slot] = f.bias, f.var, f.floor
        st["limits"][slot] = f.limit * self.margin
        st["phase"][slot] = MONITORING

    def _residuals(self, slots: IntArray, rows: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Per row the residuals less their bias, and their scaled values ``u``."""
        st = self.state
        z = np.clip((rows - st["center"][slots]) / st["scale"][slots], -RANGE, RANGE)
        for i in np.flatnonzero(np.isnan(z).any(axis=1)).tolist():
            z[i] = impute(st["cov"][slots[i]].astype(np.float64), z[i])
        d = np.matmul(st["m"][slots], z[:, :, None])[:, :, 0] - st["bias"][slots]
        u = d / np.sqrt(st["var"][slots])
        u[np.isnan(rows)] = 0.0
        return d, u

    def _score(self, slots: IntArray, rows: FloatArray) -> tuple[FloatArray, FloatArray]:
        d, u = self._residuals(slots, rows)
        self._last = d  # what _adapt learns from: the same rows, right after
        sq = u * u
        total = sq.sum(axis=1)
        ratio = total / self.state["limits"][slots, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total[:, None] > 0, sq / total[:, None], 0.0)
        return ratio, share

    def _adapt(
        self, slots: IntArray, rows: FloatArray, ratio: FloatArray, alarm: BoolArray
    ) -> None:
        ok = ~alarm & ~np.isnan(rows).any(axis=1)
        if not ok.any():
            return
        s, d = slots[ok], self._last[ok]
        st = self.state
        # each residual's step bounded at clip times its scale (Huber): a drift is followed at
        # its pace, a jump (a fault before its alarm is raised) moves little
        bound = self.clip * np.sqrt(st["var"][s])
        d = np.clip(d, -bound, bound)
        st["bias"][s] += d / self.bias_rows
        var = st["var"][s]
        st["var"][s] = np.maximum(var + (d * d - var) / self.var_rows, st["floor"][s])

"""Multivariate statistical process control of assets: PCA (T² + SPE) and MEWMA, vectorised.

One :class:`AssetDetector` scores many assets of ``k`` sensors each; an asset is a *slot*, as
a sensor is for the univariate detectors. :meth:`AssetDetector.update` takes one row per
distinct slot (``(m, k)``, NaN where a sensor is missing or stale), scores it, then learns.

**Lifecycle.** A slot starts in ``COMMISSIONING``: its rows are kept (at most ``buffer``, every
other one dropped when full) and score NaN, so nothing is raised. After ``commission_rows``
rows (and, when given, ``commission_seconds`` since its first row) the model is fitted
(:mod:`.model`: robust scaling, PCA, limits from a held-out part, times ``margin``: the
held-out rows are few and show less of normal operation than the months after) and the slot is
``MONITORING``; the rows are dropped. :meth:`AssetDetector.recommission` starts again.

**Scoring** (``method``):

- ``pca``: the combined index ``T²/a + SPE/θ`` of the row over its held-out limit;
- ``mewma``: the same index of the exponentially weighted mean of the scaled rows
  (``lam``), for small persistent shifts, over its limit;
- ``pca_mewma`` (the class default; the service's default method is ``regress``,
  :mod:`.regress`): the larger of the two ratios.

``ratio`` is that value (1.0: at the limit); ``score = ratio / (1 + ratio)`` puts the limit at
0.5 like every detector. ``contributions`` are each sensor's share of the reconstruction-based
contributions to the index that decided (``(Φ v)_j² / Φ_jj``, ``Φ = W²``, ``v`` the row or the
MEWMA; 0 for a missing sensor): for a fault of one sensor, that sensor has the largest share.
Alarms: :class:`~.hysteresis.KofN`.

**Adaptation.** In monitoring, a row judged normal (ratio below ``normal``) while no alarm is
active moves the centre by ``adapt`` (an exponential forgetting rate) along the residual
subspace only: slow drifts of the relations (ambient temperature, supply voltage) are followed,
movements of the operating point are not. The scaled covariance moves ``cov_rate`` times as
slowly; the matrix is recomputed from it every ``refit_every`` such rows. During an alarm
nothing moves, so a persistent fault is not learned as normal.

State (:meth:`state_dict`) is numeric arrays only; per monitoring asset of 8 sensors about
1.2 KiB (see :meth:`bytes_per_asset`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..detectors._grow import capacity_for, grown
from .hysteresis import KofN
from .model import WINSOR, fit, impute, matrix

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]

COMMISSIONING = 0
MONITORING = 1
PHASES = {COMMISSIONING: "commissioning", MONITORING: "monitoring"}
METHODS = ("pca", "mewma", "pca_mewma")


class AssetScores(NamedTuple):
    """What the detector says about a batch of rows."""

    score: FloatArray  # (m,) in [0, 1], 0.5 at the limit; NaN while commissioning
    ratio: FloatArray  # (m,) the index over its limit
    alarm: BoolArray  # (m,) the k-of-n alarm after this row
    contributions: FloatArray  # (m, k) shares summing to 1 (0 where missing or commissioning)
    phase: NDArray[np.int8]  # (m,) phase the row was scored in
    commissioned: IntArray  # positions whose slot left commissioning with this row


class AssetDetector:
    """PCA/MEWMA statistical process control of assets of ``k`` sensors."""

    name: ClassVar[str] = "asset"

    def __init__(
        self,
        k: int,
        *,
        method: str = "pca_mewma",
        commission_rows: int = 400,
        commission_seconds: float = 0.0,
        variance: float = 0.9,
        floor: float = 1e-3,
        holdout: float = 0.3,
        quantile: float = 0.995,
        margin: float = 1.5,
        lam: float = 0.1,
        normal: float = 1.0,
        adapt: float = 0.01,
        cov_rate: float = 0.1,
        refit_every: int = 50,
        buffer: int = 1024,
        alarm_k: int = 3,
        alarm_n: int = 5,
        alarm_quiet: int = 20,
    ) -> None:
        if k < 2:
            raise ValueError(f"an asset needs at least 2 sensors, got {k}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if commission_rows < 12:
            raise ValueError(f"commission_rows must be at least 12, got {commission_rows}")
        if not 0.0 < variance < 1.0 or not 0.05 <= holdout <= 0.5:
            raise ValueError("variance must be in (0, 1) and holdout in [0.05, 0.5]")
        if not 0.5 < quantile < 1.0 or not 0.0 < lam <= 1.0 or not 0.0 <= adapt < 1.0:
            raise ValueError("quantile must be in (0.5, 1), lam in (0, 1], adapt in [0, 1)")
        if margin < 1.0:
            raise ValueError(f"margin must be at least 1, got {margin}")
        if buffer < 32:
            raise ValueError(f"buffer must hold at least 32 rows, got {buffer}")
        self.k = k
        self.method = method
        self.commission_rows = int(commission_rows)
        self.commission_seconds = float(commission_seconds)
        self.variance = float(variance)
        self.floor = float(floor)
        self.holdout = float(holdout)
        self.quantile = float(quantile)
        self.margin = float(margin)
        self.lam = float(lam)
        self.normal = float(normal)
        self.adapt = float(adapt)
        self.cov_rate = float(cov_rate)
        self.refit_every = int(refit_every)
        self.buffer = int(buffer)
        self.alarm_k, self.alarm_n, self.alarm_quiet = alarm_k, alarm_n, alarm_quiet
        self.alarms = KofN(k=alarm_k, n=alarm_n, quiet=alarm_quiet)
        self.capacity = 0
        self.used = 0  # slots 0 .. used-1 have been given rows (what state_dict saves)
        self.state: dict[str, NDArray[Any]] = {
            name: np.zeros((0, *shape), dtype=dt) for name, (dt, shape, _) in self._fields().items()
        }
        # commissioning rows per slot (only slots in commissioning have one)
        self.rows: dict[int, FloatArray] = {}
        self.stride: dict[int, int] = {}

    # ---- layout ---------------------------------------------------------------------
    def _fields(self) -> dict[str, tuple[type[np.generic], tuple[int, ...], float]]:
        k = self.k
        return {
            "phase": (np.int8, (), COMMISSIONING),
            "seen": (np.int64, (), 0),  # rows since (re)commissioning started
            "first_ts": (np.float64, (), np.nan),
            "center": (np.float64, (k,), 0.0),
            "scale": (np.float64, (k,), 1.0),
            "cov": (np.float32, (k, k), 0.0),
            "resid": (np.float32, (k, k), 0.0),
            "w": (np.float64, (k, k), 0.0),
            "z": (np.float64, (k,), 0.0),
            "limits": (np.float64, (2,), 1.0),
            "adapted": (np.int32, (), 0),
        }

    def params(self) -> dict[str, Any]:
        """Constructor parameters (saved with the state, checked on restore)."""
        return {key: getattr(self, key) for key in _PARAMS}

    def reserve(self, n: int) -> None:
        if n <= self.capacity:
            return
        cap = capacity_for(n, self.capacity)
        for name, (_, shape, fill) in self._fields().items():
            self.state[name] = grown(self.state[name], cap, fill, shape=shape)
        self.alarms.reserve(cap)
        self.capacity = cap

    def bytes_per_asset(self) -> int:
        """Bytes of saved state per monitoring asset (the fixed arrays and the alarm)."""
        per = sum(
            np.dtype(dt).itemsize * int(np.prod(shape)) for dt, shape, _ in self._fields().values()
        )
        return per + 8 + 1 + 4

    # ---- lifecycle --------------------------------------------------------------------
    def phase_of(self, slots: IntArray) -> NDArray[np.int8]:
        out = np.zeros(len(slots), dtype=np.int8)
        inside = slots < self.capacity
        out[inside] = self.state["phase"][slots[inside]]
        return out

    def recommission(self, slots: IntArray) -> None:
        """Start learning ``slots`` again (after maintenance, say): their model is forgotten."""
        slots = np.asarray(slots, dtype=np.intp)
        if len(slots):
            self.reserve(int(slots.max()) + 1)
            self.used = max(self.used, int(slots.max()) + 1)
        for name, (_, _, fill) in self._fields().items():
            self.state[name][slots] = fill
        self.alarms.reset(slots)
        for s in slots.tolist():
            self.rows.pop(s, None)
            self.stride.pop(s, None)

    reset = recommission

    def _keep(self, slot: int, row: FloatArray) -> None:
        """Keep a commissioning row: all of them until the buffer is full, then every other
        one (the kept ones thinned to match), so the rows span the whole commissioning."""
        n = int(self.state["seen"][slot]) - 1
        stride = self.stride.get(slot, 1)
        if n % stride:
            return
        buf = self.rows.get(slot)
        if buf is None:
            buf = np.empty((0, self.k))
        if len(buf) >= self.buffer:
            buf = buf[::2]
            stride = self.stride[slot] = stride * 2
            if n % stride:
                self.rows[slot] = buf
                return
        grown_rows = np.empty((len(buf) + 1, self.k))
        grown_rows[:-1] = buf
        grown_rows[-1] = row
        self.rows[slot] = grown_rows

    def _commission(self, slot: int) -> None:
        rows = self.rows.pop(slot)
        self.stride.pop(slot, None)
        m = fit(
            rows,
            variance=self.variance,
            holdout=self.holdout,
            quantile=self.quantile,
            lam=self.lam,
            floor=self.floor,
            adapt=self.adapt,
        )
        st = self.state
        st["center"][slot], st["scale"][slot] = m.center, m.scale
        st["cov"][slot], st["w"][slot], st["resid"][slot] = m.cov, m.w, m.resid
        st["limits"][slot] = (m.limit_row * self.margin, m.limit_mewma * self.margin)
        st["z"][slot] = 0.0
        st["phase"][slot] = MONITORING
        st["adapted"][slot] = 0

    # ---- scoring ----------------------------------------------------------------------
    def update(
        self, slots: IntArray, rows: FloatArray, ts: FloatArray | None = None
    ) -> AssetScores:
        """Score one row per distinct slot, then learn from it (see the module docstring)."""
        slots = np.asarray(slots, dtype=np.intp)
        rows = np.asarray(rows, dtype=np.float64).reshape(len(slots), self.k)
        if ts is None:
            ts = np.full(len(slots), np.nan)
        m = len(slots)
        if m:
            top = int(slots.max()) + 1
            self.reserve(top)
            self.used = max(self.used, top)
        st = self.state
        phase = st["phase"][slots].copy()
        ratio = np.full(m, np.nan)
        contrib = np.zeros((m, self.k))
        mon = np.flatnonzero(phase == MONITORING)
        if len(mon):
            ratio[mon], contrib[mon] = self._score(slots[mon], rows[mon])
        alarm = self.alarms.step(slots, np.where(np.isnan(ratio), np.nan, ratio >= 1.0))
        if len(mon):
            self._adapt(slots[mon], rows[mon], ratio[mon], alarm[mon])
        done = self._learn(slots, rows, ts, phase)
        with np.errstate(invalid="ignore"):
            score = ratio / (1.0 + ratio)
        return AssetScores(score, ratio, alarm, contrib, phase, done)

    def _scaled(self, slots: IntArray, rows: FloatArray) -> FloatArray:
        st = self.state
        x: FloatArray = np.clip((rows - st["center"][slots]) / st["scale"][slots], -WINSOR, WINSOR)
        bad = np.flatnonzero(np.isnan(x).any(axis=1))
        for i in bad.tolist():
            x[i] = impute(st["cov"][slots[i]].astype(np.float64), x[i])
        return x

    def _score(self, slots: IntArray, rows: FloatArray) -> tuple[FloatArray, FloatArray]:
        st = self.state
        x = self._scaled(slots, rows)
        w = st["w"][slots]
        limits = st["limits"][slots]
        e = np.matmul(w, x[:, :, None])[:, :, 0]
        row_r = np.einsum("ij,ij->i", e, e) / limits[:, 0]
        lam = self.lam
        z = (1.0 - lam) * st["z"][slots] + lam * x
        st["z"][slots] = z
        ez = np.matmul(w, z[:, :, None])[:, :, 0]
        mew_r = np.einsum("ij,ij->i", ez, ez) * ((2.0 - lam) / lam) / limits[:, 1]
        if self.method == "pca":
            ratio, use_row = row_r, np.ones(len(slots), dtype=bool)
        elif self.method == "mewma":
            ratio, use_row = mew_r, np.zeros(len(slots), dtype=bool)
        else:
            use_row = row_r >= mew_r
            ratio = np.where(use_row, row_r, mew_r)
        # reconstruction-based contributions: (Φ v)_j² / Φ_jj with Φ = W², v the row or the
        # MEWMA that decided; the sensor whose correction removes most of the index leads
        e = np.where(use_row[:, None], e, ez)
        phi_v = np.matmul(w, e[:, :, None])[:, :, 0]
        sq = phi_v * phi_v / np.einsum("mij,mij->mi", w, w)
        missing = np.isnan(rows)
        sq[missing] = 0.0
        total = sq.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, sq / total, 0.0)
        return ratio, share

    def _adapt(
        self, slots: IntArray, rows: FloatArray, ratio: FloatArray, alarm: BoolArray
    ) -> None:
        if self.adapt <= 0.0:
            return
        ok = ~alarm & (ratio < self.normal) & ~np.isnan(rows).any(axis=1)
        if not ok.any():
            return
        s, r = slots[ok], rows[ok]
        st, a = self.state, self.adapt
        x = np.clip((r - st["center"][s]) / st["scale"][s], -WINSOR, WINSOR)
        # the centre follows slow drifts of the relations (the residual part of the row), not
        # the operating point (the retained part, which T² measures against the whole range)
        drift = np.matmul(st["resid"][s].astype(np.float64), x[:, :, None])[:, :, 0]
        st["center"][s] += a * drift * st["scale"][s]
        cov = st["cov"][s].astype(np.float64)
        ca = a * self.cov_rate
        st["cov"][s] = (1.0 - ca) * cov + ca * (x[:, :, None] * x[:, None, :])
        st["adapted"][s] += 1
        due = s[st["adapted"][s] >= self.refit_every]
        for slot in due.tolist():
            st["w"][slot], st["resid"][slot], _ = matrix(
                st["cov"][slot].astype(np.float64), self.variance, self.floor
            )
            st["adapted"][slot] = 0

    def _learn(
        self, slots: IntArray, rows: FloatArray, ts: FloatArray, phase: NDArray[np.int8]
    ) -> IntArray:
        com = np.flatnonzero(phase == COMMISSIONING)
        if not len(com):
            return np.zeros(0, dtype=np.intp)
        st = self.state
        done: list[int] = []
        for i in com.tolist():
            slot = int(slots[i])
            if np.isnan(rows[i]).all():
                continue
            st["seen"][slot] += 1
            if np.isnan(st["first_ts"][slot]):
                st["first_ts"][slot] = ts[i]
            self._keep(slot, rows[i])
            enough = st["seen"][slot] >= self.commission_rows
            if enough and self.commission_seconds > 0 and not np.isnan(ts[i]):
                enough = ts[i] - st["first_ts"][slot] >= self.commission_seconds
            if enough:
                self._commission(slot)
                done.append(i)
        return np.array(done, dtype=np.intp)

    # ---- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The learned state (numeric arrays only) and the parameters it was learned with."""
        return {
            "name": self.name,
            "params": self.params(),
            "arrays": {k: v[: self.used].copy() for k, v in self.state.items()},
            "alarms": {k: v[: self.used] for k, v in self.alarms.state_dict().items()},
            "rows": {str(s): r.copy() for s, r in self.rows.items()},
            "stride": {str(s): v for s, v in self.stride.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ValueError (nothing changed) if it does not fit."""
        if state.get("name") != self.name or state.get("params") != self.params():
            raise ValueError(f"saved state is for {state.get('name')} {state.get('params')}")
        arrays = state.get("arrays")
        fields = self._fields()
        if not isinstance(arrays, Mapping) or set(arrays) != set(fields):
            raise ValueError("saved state has other fields")
        lengths = {len(a) for a in arrays.values() if isinstance(a, np.ndarray)}
        if len(lengths) != 1:
            raise ValueError("saved state: arrays differ in length or are not arrays")
        for name, (_, shape, _) in fields.items():
            if arrays[name].shape[1:] != shape:
                raise ValueError(f"saved state: {name} has another shape")
        rows = {int(s): np.asarray(r, dtype=np.float64) for s, r in state["rows"].items()}
        if any(r.ndim != 2 or r.shape[1] != self.k for r in rows.values()):
            raise ValueError("saved state: commissioning rows of another shape")
        n = lengths.pop()
        self.capacity = 0
        self.state = {
            name: np.zeros((0, *shape), dtype=dt) for name, (dt, shape, _) in fields.items()
        }
        self.alarms = KofN(k=self.alarm_k, n=self.alarm_n, quiet=self.alarm_quiet)
        self.reserve(n)
        for name, a in arrays.items():
            self.state[name][: len(a)] = a
        self.alarms.load_state_dict(state["alarms"])
        self.alarms.reserve(self.capacity)
        self.used = n
        self.rows = rows
        self.stride = {int(s): int(v) for s, v in state["stride"].items()}


_PARAMS = tuple(inspect.signature(AssetDetector.__init__).parameters)[1:]

"""Drift and model health: is what the detectors say about a sensor still what they said when
they were commissioned? No I/O; vectorised over sensor slots like the rest of the pipeline.

Per sensor slot, from the **top score** of each scored reading (the highest of the detectors'
scores, in [0, 1], 0.5 the alert level):

- **reference**: a histogram of the top score over :data:`EDGES` (``BINS`` bins, fine near 0
  where a well-modelled sensor's scores are), counted over the ``min_readings`` scored
  readings after the first ``warmup`` ones (the detectors learn first), then frozen; the time
  it froze is the sensor's **commissioning** time. A model loaded from elsewhere may bring its
  own (:meth:`DriftBook.seed`, :meth:`DriftBook.reference`);
- **recent**: the same histogram, exponentially decayed over time (a reading ``window``
  seconds old weighs ``1/e`` of a new one), from the end of the warm-up on;
- **alert rate**: the share of readings whose top score is at the alert level, in the
  reference and recent (decayed the same way).

Nothing is computed per reading beyond the two histograms' updates (one bin lookup, one
row decay); the statistics are computed when someone asks (:meth:`DriftBook.report`):

- **drift**: the population stability index of recent against reference,
  ``Σ (q − p) ln(q / p)`` over the bins (each share floored at ``EPS``); 0 when the same,
  about 0.1 a slight, above 0.25 a large shift. Beside it ``ks``: the largest difference of
  the two cumulative distributions (a Kolmogorov–Smirnov distance over the bins);
- a sensor is **stale** once commissioned and any of: drift above ``threshold``; a recent
  alert rate above ``alert_factor`` × its reference rate (at least ``1 / min_readings``);
  commissioned longer than ``max_age`` seconds ago (when set).

>>> import numpy as np
>>> from mqtt_anomaly.config import DriftSettings
>>> book = DriftBook(DriftSettings(warmup=0, min_readings=50, window=50))
>>> book.admit(0), book.admit(1)
(None, None)
>>> rng = np.random.default_rng(1)
>>> slots = np.array([0, 1])
>>> for t in range(200):
...     book.update(slots, rng.uniform(0, 0.05, 2), np.full(2, t))
>>> for t in range(200, 400):  # sensor 1's scores shift up
...     s = np.array([rng.uniform(0, 0.05), rng.uniform(0.1, 0.4)])
...     book.update(slots, s, np.full(2, t))
>>> r = book.report(400.0, n=2)
>>> r.stale.tolist(), bool(r.drift[1] > 1.0 > 0.25 > r.drift[0])
([False, True], True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from .config import DriftSettings
from .detectors._grow import capacity_for, grown

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]

EDGES: Final = np.array([0.002, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.5, 0.8])
"""Upper bounds of the score bins but the last (a zscore score of 0.002 is 0.22 standard
deviations, 0.04 one, 0.15 two, 0.5 the alert level at five)."""
BINS: Final = len(EDGES) + 1
EPS: Final = 1e-4  # the smallest share of a bin in the drift statistic
ALERT_BIN: Final = int(np.searchsorted(EDGES, 0.5, side="right"))
"""The first bin of alerting readings (a top score at the alert level, 0.5, or above)."""
_LUT_SCALE: Final = 1000  # every edge is a multiple of 1/_LUT_SCALE: a score's bin is _LUT[...]
_LUT: Final = np.searchsorted(EDGES, np.arange(_LUT_SCALE + 1) / _LUT_SCALE, side="right")
FROZEN: Final = np.iinfo(np.int32).max  # ``scored`` of a slot whose reference is frozen
_NONE: Final = np.zeros(0, dtype=bool)  # no reading taken (see DriftBook._learn)
REBASE: Final = 40
"""Windows after which weights are rebased: float32 holds e^88, so a bin's sum of weights up to
e^40 each has room for e^48 (7·10^20) readings."""
LEARNING, MONITORING = "learning", "monitoring"
DRIFT: Final = "drift"  # the books' key in the saved state, named when their state is skipped


@dataclass(frozen=True, slots=True)
class Reference:
    """A sensor's frozen reference: readings per score bin (over :data:`EDGES`; those from
    :data:`ALERT_BIN` on alerted) and when it was frozen (epoch s, its commissioning)."""

    counts: tuple[float, ...]
    commissioned_at: float

    def as_json(self) -> dict[str, Any]:
        """Plain data, for a model file."""
        return {
            "edges": EDGES.tolist(),
            "counts": list(self.counts),
            "commissioned_at": self.commissioned_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reference:
        """:meth:`as_json` read back; ValueError for anything else (other bins, negative or
        non-finite counts)."""
        if list(data.get("edges", ())) != EDGES.tolist():
            raise ValueError("drift reference: other score bins")
        counts = data.get("counts")
        at = data.get("commissioned_at")
        if not isinstance(counts, list | tuple) or len(counts) != BINS:
            raise ValueError(f"drift reference: counts must be {BINS} numbers")
        if not all(isinstance(c, int | float) and not isinstance(c, bool) for c in counts):
            raise ValueError("drift reference: counts must be numbers")
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            raise ValueError("drift reference: commissioned_at must be a time (epoch s)")
        values = [float(c) for c in counts]
        total = sum(values)
        if not all(math.isfinite(c) and c >= 0 for c in values) or not total > 0:
            raise ValueError("drift reference: counts must be finite, not negative, not all 0")
        return cls(tuple(values), float(at))


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Model health of slots ``0 .. n-1`` at one time (NaN where not known yet)."""

    commissioned: BoolArray  # a frozen reference (else learning)
    drift: FloatArray  # population stability index, recent against reference
    ks: FloatArray  # the largest difference of the two cumulative distributions
    alert_rate: FloatArray  # recent share of alerting readings
    reference_alert_rate: FloatArray
    age: FloatArray  # seconds since commissioning
    learning_age: FloatArray  # seconds since the first scored reading
    stale_drift: BoolArray
    stale_alerts: BoolArray
    stale_age: BoolArray

    def phase(self, slot: int) -> str:
        """``learning`` (no frozen reference yet) or ``monitoring``."""
        return MONITORING if self.commissioned[slot] else LEARNING

    @property
    def learning(self) -> int:
        """Slots still learning their reference."""
        return len(self.commissioned) - int(np.count_nonzero(self.commissioned))

    @property
    def stale(self) -> BoolArray:
        return self.stale_drift | self.stale_alerts | self.stale_age

    def reasons(self, slot: int) -> list[str]:
        """Why ``slot`` is stale (empty: it is not)."""
        flags = (self.stale_drift, self.stale_alerts, self.stale_age)
        return [name for name, f in zip(("drift", "alerts", "age"), flags, strict=True) if f[slot]]


class DriftBook:
    """Reference and recent score histograms per sensor slot (see the module docstring).

    The pipeline calls :meth:`admit` for every slot it gives to a sensor and
    :meth:`update` once a round; once every admitted slot's reference is frozen a round
    costs one weight, one bin and one add per reading (the recent histogram decays by
    weighting each reading ``exp(t / window)`` instead of shrinking every row)."""

    _ARRAYS: Final = ("scored", "ref", "recent", "started", "frozen")
    _FILL: Final = {"scored": -1, "started": math.nan, "frozen": math.nan}

    def __init__(self, settings: DriftSettings) -> None:
        self.settings = settings
        self.warmup = settings.warmup
        self.freeze_at = settings.warmup + settings.min_readings  # scored readings
        self.inv_tau = 1.0 / settings.window
        self.t0 = math.nan  # the time whose weight is 1 (moved forward now and then)
        self.capacity = 0
        self.learning = 0  # admitted slots whose reference is not frozen yet
        # readings seen while learning (-1: no sensor, FROZEN: its reference is frozen)
        self.scored = np.zeros(0, dtype=np.int32)
        self.ref = np.zeros((0, BINS), dtype=np.float32)  # counts per score bin
        self.recent = np.zeros((0, BINS), dtype=np.float32)  # weights per bin (time-decayed)
        self._flat = self.recent.reshape(-1)
        self.started = np.zeros(0)  # time of the first scored reading (NaN: none)
        self.frozen = np.zeros(0)  # time the reference froze (NaN: learning)

    def reserve(self, n: int) -> None:
        """Room for slots ``0 .. n-1`` (amortised doubling)."""
        if n <= self.capacity:
            return
        cap = capacity_for(n, self.capacity)
        for name in self._ARRAYS:
            setattr(self, name, grown(getattr(self, name), cap, self._FILL.get(name, 0)))
        self._flat = self.recent.reshape(-1)
        self.capacity = cap

    def admit(self, slot: int) -> None:
        """A slot given to a new sensor: it learns its reference."""
        if slot >= self.capacity:
            self.reserve(slot + 1)
        if self.scored[slot] < 0:  # never used: its rows hold what a new slot holds
            self.scored[slot] = 0
            self.learning += 1
        else:
            self.reset(slot)

    def reset(self, slot: int) -> None:
        """Forget ``slot`` (given to another sensor): it learns again."""
        if slot < self.capacity:
            if not 0 <= self.scored[slot] < FROZEN:
                self.learning += 1  # a new sensor, or one whose reference was frozen
            for name in self._ARRAYS:
                getattr(self, name)[slot] = self._FILL.get(name, 0)
            self.scored[slot] = 0

    def update(self, slots: IntArray, score: FloatArray, t: FloatArray) -> None:
        """One round's top scores (one per distinct, admitted slot) at times ``t``
        (receive times, epoch s) counted."""
        n = len(slots)
        if not n:
            return
        if self.learning:
            k = self.scored[slots]
            if int(k.min()) < FROZEN:  # some of them learn
                keep = self._learn(slots, score, t, k)
                if keep is not None:
                    if not keep.any():
                        return
                    slots, score, t = slots[keep], score[keep], t[keep]
        t_first = float(t[0])
        if not t_first - self.t0 < REBASE * self.settings.window:  # also the first time (NaN)
            self._rebase(t_first)
        weight = np.exp((t - self.t0) * self.inv_tau)
        at = slots * BINS + np.take(_LUT, (score * _LUT_SCALE).astype(np.intp), mode="clip")
        self._flat[at] += weight

    def _learn(
        self, slots: IntArray, score: FloatArray, t: FloatArray, k: NDArray[np.int32]
    ) -> BoolArray | None:
        """Count the learning slots' readings in their reference (``k``: the slots'
        ``scored``); the readings the recent histogram takes (those of slots past their
        warm-up or frozen), None for all."""
        high = int(k.max())
        every = high < FROZEN
        if not every:
            learn = k < FROZEN
            slots, score, t, k = slots[learn], score[learn], t[learn], k[learn]
            high = int(k.max())
        self.scored[slots] = k + 1
        low = int(k.min())
        if low == 0:
            first = k == 0
            self.started[slots[first]] = t[first]
        if high < self.warmup:  # all warming up: the recent histogram takes none of them
            return _NONE if every else ~learn
        live = k >= self.warmup
        if low < self.warmup:
            slots, score, t, k = slots[live], score[live], t[live], k[live]
        bins = np.take(_LUT, (score * _LUT_SCALE).astype(np.intp), mode="clip")
        self.ref[slots, bins] += 1
        if high + 1 >= self.freeze_at:
            done = k + 1 >= self.freeze_at
            self.frozen[slots[done]] = t[done]
            self.scored[slots[done]] = FROZEN
            self.learning -= int(done.sum())
        if every:
            return None if low >= self.warmup else live
        keep = ~learn
        keep[learn] = live
        return keep

    def _rebase(self, t: float) -> None:
        """Weights relative to ``t`` from now on (old ones scaled down to match)."""
        if not math.isnan(self.t0):
            self.recent *= math.exp((self.t0 - t) * self.inv_tau)
        self.t0 = t

    # ---- a reference from elsewhere --------------------------------------------------
    def reference(self, slot: int) -> Reference | None:
        """The slot's frozen reference (for a model file), None while it learns."""
        if slot >= self.capacity or math.isnan(self.frozen[slot]):
            return None
        counts = tuple(float(c) for c in self.ref[slot])
        return Reference(counts, float(self.frozen[slot]))

    def seed(self, slot: int, ref: Reference) -> None:
        """Take ``ref`` as the slot's reference (a model loaded): it is frozen from now on."""
        self.reserve(slot + 1)
        if 0 <= self.scored[slot] < FROZEN:
            self.learning -= 1  # a sensor that was learning
        self.ref[slot] = ref.counts
        self.frozen[slot] = ref.commissioned_at
        self.scored[slot] = FROZEN

    # ---- what it says ---------------------------------------------------------------
    def report(self, now: float, n: int | None = None) -> DriftReport:
        """Model health of slots ``0 .. n-1`` (default: every slot reserved) at ``now``."""
        n = self.capacity if n is None else n
        self.reserve(n)
        s = self.settings
        # bins by row (BINS, n), float32: reductions over the bins run along n, not over rows
        # of 10 (ten times faster), and half the memory traffic of float64
        p = np.ascontiguousarray(self.ref[:n].T)
        q = np.ascontiguousarray(self.recent[:n].T)
        ref_n = p.sum(axis=0, dtype=np.float64)
        rec_n = q.sum(axis=0, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            p *= (1.0 / ref_n).astype(np.float32)  # shares, then floored
            q *= (1.0 / rec_n).astype(np.float32)
            ref_rate = p[ALERT_BIN:].sum(axis=0, dtype=np.float64)
            rate = q[ALERT_BIN:].sum(axis=0, dtype=np.float64)
            np.maximum(p, EPS, out=p)
            np.maximum(q, EPS, out=q)
            diff = q - p
            psi = (diff * np.log(q / p)).sum(axis=0, dtype=np.float64)
            for i in range(1, BINS):  # the cumulative difference, row by row (np.cumsum over
                diff[i] += diff[i - 1]  # axis 0 is ten times slower)
            ks = np.abs(diff).max(axis=0).astype(np.float64) if n else np.zeros(0)
        frozen = self.frozen[:n]
        monitoring = ~np.isnan(frozen) & (ref_n > 0)  # commissioned
        comparable = monitoring & (rec_n > 0)  # and readings since (a model just loaded: none)
        psi = np.where(comparable, psi, math.nan)
        ks = np.where(comparable, ks, math.nan)
        rate = np.where(rec_n > 0, rate, math.nan)
        ref_rate = np.where(ref_n > 0, ref_rate, math.nan)
        age = now - frozen
        limit = s.alert_factor * np.maximum(np.nan_to_num(ref_rate), 1.0 / s.min_readings)
        with np.errstate(invalid="ignore"):
            stale_drift = comparable & (psi > s.threshold)
            stale_alerts = comparable & (rate > limit)
            stale_age = monitoring & (age > s.max_age) if s.max_age > 0 else np.zeros(n, bool)
        return DriftReport(
            commissioned=monitoring,
            drift=psi,
            ks=ks,
            alert_rate=rate,
            reference_alert_rate=ref_rate,
            age=age,
            learning_age=now - self.started[:n],
            stale_drift=stale_drift,
            stale_alerts=stale_alerts,
            stale_age=stale_age,
        )

    # ---- saved state ----------------------------------------------------------------
    def state_dict(self, n: int) -> dict[str, Any]:
        """Slots ``0 .. n-1`` as plain data (arrays), with the bins they count in."""
        self.reserve(n)
        return {
            "edges": EDGES.tolist(),
            "t0": self.t0,
            "arrays": {name: getattr(self, name)[:n].copy() for name in self._ARRAYS},
        }

    def load_state_dict(self, state: Mapping[str, Any], n: int) -> None:
        """:meth:`state_dict` output for ``n`` slots restored; ValueError (nothing changed)
        for state of other bins or arrays of another shape or kind."""
        if not isinstance(state, Mapping) or state.get("edges") != EDGES.tolist():
            raise ValueError("drift state of other score bins")
        arrays = state.get("arrays")
        if not isinstance(arrays, Mapping) or set(arrays) != set(self._ARRAYS):
            raise ValueError("drift state has other arrays")
        checked = {}
        for name in self._ARRAYS:
            a = arrays[name]
            want = getattr(self, name)
            shape = (n, *want.shape[1:])
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype.kind not in "fiu":
                raise ValueError(f"drift state: {name} is not a numeric array of shape {shape}")
            checked[name] = a
        counts = np.concatenate([checked["ref"].ravel(), checked["recent"].ravel()])
        scored = checked["scored"]
        if np.any((scored < 0) | (scored > FROZEN)) or not np.all(
            np.isfinite(counts) & (counts >= 0)
        ):
            raise ValueError("drift state: counts out of range")
        self.reserve(n)
        for name, a in checked.items():
            getattr(self, name)[:n] = a
        t0 = state.get("t0")
        self.t0 = float(t0) if isinstance(t0, float) and math.isfinite(t0) else math.nan
        if math.isnan(self.t0):  # weights of an unknown time: the recent histograms restart
            self.recent[:n] = 0
        frozen = ~np.isnan(self.frozen[:n])
        self.scored[:n][frozen] = FROZEN
        self.scored[:n][~frozen] = np.minimum(self.scored[:n][~frozen], FROZEN - 1)
        self.learning = n - int(np.count_nonzero(frozen))

    @staticmethod
    def reference_state(state: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`state_dict` output with only the references kept (for a model file): the
        recent histograms empty, so a pipeline that loads it compares what it sees from then
        on with what the model saw while it learned."""
        arrays = dict(state["arrays"])
        arrays["recent"] = np.zeros_like(arrays["recent"])
        return {**state, "arrays": arrays, "t0": math.nan}

    def bytes_per_sensor(self) -> int:
        """Bytes of the per-slot arrays for one sensor."""
        return sum(
            getattr(self, name).itemsize * int(np.prod(getattr(self, name).shape[1:]))
            for name in self._ARRAYS
        )

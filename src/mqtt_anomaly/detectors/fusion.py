"""Fusion: the ensemble's evidence in under 1 KiB per sensor, with a settling alert lock.

The same four kinds of evidence as :mod:`.ensemble` (records of the value, its smoothings and
its volatility; never-seen value contexts; the calibrated residual; the hour-of-week calendar
profile with the pooled hour of day standing in) and the same once-per-incident reporting,
stored compactly so that it fits the service's default set:

- the calendar profile keeps, per bin, the mean and the standard deviation as ``int16``
  multiples of a per-sensor power-of-two unit, the mean as an offset from the sensor's first
  reading (the unit is set by the first deviation, at about 1/1,000 of it, and doubles as
  needed so that no stored number passes 16,384: it stays far below the profile's floor of
  1/1,000 of the sensor's span), and the reading count in 4 bits (it only has to reach
  ``prof_min`` and ``1 / prof_rate``);
- the records and the calibrations are ``float32``, the context counters ``uint8`` in a
  table of ``table`` (64) entries.

The update is one compiled loop over the batch (Numba): the ensemble's ~150 numpy operations
per call cost about 13 µs a reading in the service's batches of ~90 readings, this loop a small
fraction of that.

**Settling.** An alert holds off every later score for ``hold`` readings (the ensemble's
``lock``) only once the sensor has ``warmup + settle`` readings: while its calibrations are
young an alert is reported but does not silence the next ``hold`` readings, so an early false
alarm does not hide the first real incident (the price: a young sensor may alert a few times
in its first ``warmup + settle`` readings). Other defaults differ from the ensemble's where
NAB measured better: ``long`` 0.0016, ``kvol`` 0.08, and ``level`` 0.243 (the internal score
mapped to 0.5: NAB's optimised threshold for all three profiles is then the alert level).

**Dead band** (``band``, 0 = off). Records of a stationary noisy signal keep being broken by
chance (about ``log n`` times in ``n`` readings, the smoothings' records more often): on 20
sensors of Gaussian noise the defaults alert 58 times in the first 300 readings and 165 times
in 3,000. With ``band`` a record must beat the old one by more than ``band`` times the
feature's noise (the slow volatility, the mean ``|x[t] - x[t-1]|``, scaled by
``sqrt(rate / (2 - rate))`` for a smoothing): ``band = 1`` gives no alert there in 3,000
readings, at a cost on NAB (68.94 / 63.11 / 73.55 instead of 74.00 / 64.94 / 78.93): choose it
for clean stationary sensors.

>>> import numpy as np
>>> rng = np.random.default_rng(5)
>>> t = np.arange(2000)
>>> x = 50 + 10 * np.sin(2 * np.pi * t / 144) + rng.normal(0, 1, 2000)
>>> x[1500:1520] += 30  # a burst well outside the usual range
>>> d = FusionDetector()
>>> s = d.score_series(x)
>>> bool(s[1500:1505].max() >= 0.5), int(np.count_nonzero(s[300:] >= 0.5)) <= 3
(True, True)
>>> d.bytes_per_sensor() <= 1024
True
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Mapping
from typing import ClassVar, Final

import numpy as np

from .base import Field, FloatArray, IntArray, Scores, nan_band
from .ensemble import EnsembleDetector

_NIBBLE = 15  # a profile count's largest value (4 bits; also in :mod:`._fusion_kernel`)
NUMBA_MISSING: Final = "the fusion detector needs Numba: pip install 'mqtt-anomaly[fusion]'"


@functools.cache
def _compiled() -> Callable[..., None]:
    """The compiled batch loop, imported (and compiled, or loaded from Numba's cache) on first
    use."""
    from ._fusion_kernel import kernel

    return kernel


class FusionDetector(EnsembleDetector):
    """The ensemble's evidence in compact state; the alert lock waits for the sensor to settle."""

    name: ClassVar[str] = "fusion"

    def __init__(
        self,
        *,
        warmup: int = 150,
        smooth: float = 0.2,
        slow: float = 0.05,
        k: float = 0.05,
        c: float = 160.0,
        alpha: float = 0.01,
        short: float = 0.2,
        long: float = 0.0016,
        levels: int = 10,
        order: int = 3,
        table: int = 64,
        hold: int = 300,
        level: float = 0.243,
        lock: bool = True,
        vol_fast: float = 0.05,
        vol_slow: float = 0.01,
        kvol: float = 0.08,
        profile: int = 168,
        c_profile: float = 50.0,
        prof_rate: float = 0.1,
        prof_min: int = 5,
        settle: int = 150,
        band: float = 0.0,
    ) -> None:
        if importlib.util.find_spec("numba") is None:
            raise ValueError(NUMBA_MISSING)
        if prof_min > _NIBBLE:
            raise ValueError(f"prof_min must be at most {_NIBBLE}")
        if settle < 0:
            raise ValueError("settle must be >= 0")
        self.settle = int(settle)
        if band < 0:
            raise ValueError("band must be >= 0")
        self.band = float(band)
        super().__init__(
            warmup=warmup,
            smooth=smooth,
            slow=slow,
            k=k,
            c=c,
            alpha=alpha,
            short=short,
            long=long,
            levels=levels,
            order=order,
            table=table,
            hold=hold,
            level=level,
            lock=lock,
            vol_fast=vol_fast,
            vol_slow=vol_slow,
            kvol=kvol,
            profile=profile,
            c_profile=c_profile,
            prof_rate=prof_rate,
            prof_min=prof_min,
        )
        self._ints = np.array(
            [
                self.warmup,
                self.settle,
                self.hold,
                int(self.lock),
                self.levels,
                self.levels**self.order,
                self.table,
                max(self.profile, 1),
                self.prof_min,
            ],
            dtype=np.int64,
        )
        r = self._rates
        self._dead = self.band * np.sqrt(r / (2.0 - r))
        self._reals = np.array([self.level, self.short, self.long, self.alpha, self.prof_rate])

    def fields(self) -> Mapping[str, Field]:
        return {
            "n": Field(np.int64, 0),
            "feat": Field(np.float32, np.nan),  # value, smoothed, slow, volatilities
            "lo": Field(np.float32, np.inf),  # their records
            "hi": Field(np.float32, -np.inf),
            "mean": Field(np.float64, 0.0),
            "var": Field(np.float64, 0.0),
            "ctx": Field(np.int32, 0),
            "seen": Field(np.uint8, 0),
            "avg": Field(np.float32, 0.0),  # short average of each raw surprise
            "mu": Field(np.float32, 0.0),  # and its long-run mean, variance
            "sig2": Field(np.float32, 0.0),
            "calib": Field(np.uint16, 0),  # readings each calibration has learned from
            "held": Field(np.float32, 0.0),
            "pref": Field(np.float64, np.nan),  # profile: offset (the first reading), unit
            "punit": Field(np.float32, 0.0),  # 0: not set yet
            "pmean": Field(np.int16, 0),  # mean, standard deviation per bin, in units
            "psd": Field(np.int16, 0),
            "pcount": Field(np.uint8, 0),  # readings per bin, two 4-bit counts a byte
        }

    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        out = dict(super().shapes())
        nb = max(self.profile, 1)
        out.pop("pvar")
        out["psd"] = (nb,)
        out["pcount"] = ((nb + 1) // 2,)

        return out

    def bytes_per_sensor(self) -> int:
        """Bytes of state per sensor (every array's row)."""
        shapes = self.shapes()
        return sum(
            np.dtype(f.dtype).itemsize * int(np.prod(shapes.get(k, ())))
            for k, f in self.fields().items()
        )

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        st = self.state
        out = np.empty(len(values))
        nsur = self._nsur
        kernel = _compiled()
        kernel(
            np.ascontiguousarray(slots, dtype=np.intp),
            np.ascontiguousarray(values, dtype=np.float64),
            np.ascontiguousarray(ts, dtype=np.float64),
            out,
            *(st[k] for k in _ORDER),
            self._rates,
            self._is_vol,
            self._k,
            self._dead,
            self._c[:nsur].astype(np.float64),
            self._ints,
            self._reals,
        )
        k_ = len(values)
        return Scores(out, nan_band(k_), nan_band(k_))


_ORDER = (
    "n",
    "feat",
    "lo",
    "hi",
    "mean",
    "var",
    "ctx",
    "seen",
    "avg",
    "mu",
    "sig2",
    "calib",
    "held",
    "pref",
    "punit",
    "pmean",
    "psd",
    "pcount",
)

"""Ensemble: record-breaking features and calibrated surprise, with alert suppression.

A learned, self-calibrating detector for sensors whose normal behaviour is not known in
advance. Three kinds of evidence are computed per reading, all in constant memory per sensor:

1. **Records.** The value and two exponential smoothings of it (``smooth``, ``slow``) are
   compared with the highest and lowest value each has ever taken. A feature that breaks its
   record by ``e`` times its historic span gives evidence ``e / k``. Spikes break the raw value's
   record; sustained shifts too small to break it break the smoothed records. Slow drift breaks
   records by tiny margins only. Two smoothings of the absolute step ``|x[t] - x[t-1]|``
   (``vol_fast``, ``vol_slow``) are watched the same way, upwards only, with their own margin
   ``kvol``: a burst of noise or a faster rhythm breaks them even within the usual range.
2. **Context novelty.** Values are quantised into ``levels`` bins of the sensor's historic range
   and the last ``order`` bins form a context, counted in a hashed table of ``table`` entries
   (contextual anomaly detection): a never-seen sequence is surprising even within range.
3. **Residual.** The distance from an exponentially weighted mean, in standard deviations.
4. **Calendar profile.** A mean and variance of the value per hour of the week (``profile``
   bins per week, a multiple of 7; each learned at rate ``prof_rate`` per reading). The
   distance of a reading from its bin's mean, in the bin's standard deviations, catches a
   pattern anomaly inside the usual range: a daily peak that does not come, or comes lower, a
   flat stretch where the series usually moves. Until a bin has ``prof_min`` readings, the same
   hour of every day of the week, pooled, stands in for it, so the profile scores from the
   second day on. Timestamps are the ones the service passes (epoch seconds).

Channels 2 to 4 are raw surprises whose scale differs from sensor to sensor, so each is
calibrated the way anomaly likelihood calibrates HTM's raw score: a short average of the raw
value is compared with the long-run mean and variance of that average, and the Gaussian tail
probability ``p`` of the excess gives evidence ``-log10(p) / c`` (``-log10(p) / c_profile``
for the calendar profile, whose distances are already in standard deviations, so it is trusted
at a far less extreme tail probability). The strongest evidence ``v``
becomes ``v / (1 + v)``.

**Suppression.** A new score is only reported when it exceeds every score reported in the
recent past (a level that decays by ``1 / hold`` per reading); otherwise it is reported as 0.
With ``lock`` an alert sets that level to 1, so a score that keeps rising over the next rows of
the same incident is not reported again. One incident thus gives one early alert instead of a
run of them, which is what a human wants
and what the NAB cost model rewards. Nothing is reported during the first ``warmup`` readings
of a sensor, which are used to learn. Finally the score is mapped piecewise linearly so that
``level`` (the corpus-optimised NAB threshold) becomes the alert level 0.5.

>>> import numpy as np
>>> rng = np.random.default_rng(5)
>>> t = np.arange(2000)
>>> x = 50 + 10 * np.sin(2 * np.pi * t / 144) + rng.normal(0, 1, 2000)
>>> x[1500:1520] += 30  # a burst well outside the usual range
>>> s = EnsembleDetector().score_series(x)
>>> bool(s[1500:1505].max() >= 0.5), int(np.count_nonzero(s >= 0.5)) <= 3
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from ._common import TableDetector, log10_tail
from .base import Field, FloatArray, IntArray, Scores, nan_band

_HASH = 2654435761  # Knuth's multiplicative hash
BoolArray = NDArray[np.bool_]
_WEEK = 604800.0
_DAYS = 7


class EnsembleDetector(TableDetector):
    """Records of smoothed values + likelihood-calibrated surprises, reported sparsely."""

    name: ClassVar[str] = "ensemble"
    critical_level: ClassVar[float] = 0.75

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
        long: float = 0.002,
        levels: int = 10,
        order: int = 3,
        table: int = 256,
        hold: int = 300,
        level: float = 0.2547,
        lock: bool = True,
        vol_fast: float = 0.05,
        vol_slow: float = 0.01,
        kvol: float = 0.1,
        profile: int = 168,
        c_profile: float = 50.0,
        prof_rate: float = 0.1,
        prof_min: int = 5,
    ) -> None:
        if warmup < 1 or hold < 1 or levels < 2 or order < 1 or table < 16:
            raise ValueError("warmup, hold >= 1; levels >= 2; order >= 1; table >= 16")
        for name_, rate in (("smooth", smooth), ("slow", slow), ("alpha", alpha)):
            if not 0 < rate <= 1:
                raise ValueError(f"{name_} must be in (0, 1]")
        if not (0 < short <= 1 and 0 < long < 1 and k > 0 and c > 0 and 0 < level < 1):
            raise ValueError("short in (0, 1], long in (0, 1), k, c > 0, level in (0, 1)")
        if not (0 <= vol_fast <= 1 and 0 <= vol_slow <= 1 and kvol > 0):
            raise ValueError("vol_fast, vol_slow in [0, 1] (0: off), kvol > 0")
        if profile < 0 or profile % _DAYS or prof_min < 1 or c_profile <= 0:
            raise ValueError("profile: a multiple of 7 (0: off); prof_min >= 1; c_profile > 0")
        if not 0 < prof_rate <= 1:
            raise ValueError("prof_rate must be in (0, 1]")
        if levels**order > 2**40:
            raise ValueError("levels ** order is too large")
        self.warmup = int(warmup)
        self.smooth = float(smooth)
        self.slow = float(slow)
        self.k = float(k)
        self.c = float(c)
        self.alpha = float(alpha)
        self.short = float(short)
        self.long = float(long)
        self.levels = int(levels)
        self.order = int(order)
        self.table = int(table)
        self.hold = int(hold)
        self.level = float(level)
        self.lock = bool(lock)
        self.vol_fast = float(vol_fast)
        self.vol_slow = float(vol_slow)
        self.kvol = float(kvol)
        self.profile = int(profile)
        self.c_profile = float(c_profile)
        self.prof_rate = float(prof_rate)
        self.prof_min = int(prof_min)
        # surprise channels: residual, context novelty (+ hour-of-day, hour-of-week profile)
        self._nsur = 4 if self.profile else 2
        self._c = np.array([self.c, self.c, self.c_profile, self.c_profile][: self._nsur])
        vol = [r for r in (self.vol_fast, self.vol_slow) if r > 0]
        self._rates = np.array([1.0, self.smooth, self.slow, *vol])
        self._is_vol = np.arange(len(self._rates)) >= 3
        self._k = np.where(self._is_vol, self.kvol, self.k)
        super().__init__()

    def fields(self) -> Mapping[str, Field]:
        return {
            "n": Field(np.int64, 0),
            "feat": Field(np.float64, np.nan),  # value, smoothed, slow, volatilities
            "lo": Field(np.float64, np.inf),  # their records
            "hi": Field(np.float64, -np.inf),
            "mean": Field(np.float64, 0.0),
            "var": Field(np.float64, 0.0),
            "ctx": Field(np.int64, 0),
            "seen": Field(np.uint16, 0),
            "avg": Field(np.float64, 0.0),  # short average of each raw surprise
            "mu": Field(np.float64, 0.0),  # and its long-run mean, variance
            "sig2": Field(np.float64, 0.0),
            "calib": Field(np.int32, 0),  # readings each calibration has learned from
            "held": Field(np.float64, 0.0),
            "pmean": Field(np.float32, 0.0),  # calendar profile: mean, variance, count per bin
            "pvar": Field(np.float32, 0.0),
            "pcount": Field(np.uint8, 0),
        }

    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        three = (len(self._rates),)  # value, smoothings, volatilities
        return {
            "feat": three,
            "lo": three,
            "hi": three,
            "seen": (self.table,),
            "avg": (self._nsur,),
            "mu": (self._nsur,),
            "sig2": (self._nsur,),
            "calib": (self._nsur,),
            "pmean": (max(self.profile, 1),),
            "pvar": (max(self.profile, 1),),
            "pcount": (max(self.profile, 1),),
        }

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        st = self.state
        n = st["n"][slots]
        ready = n >= self.warmup
        # 1. records of the value and its smoothings
        feat = st["feat"][slots]
        step = np.abs(values - feat[:, 0])  # NaN on a sensor's first reading
        inp = np.where(self._is_vol, np.nan_to_num(step)[:, None], values[:, None])
        first = np.where(self._is_vol, 0.0, inp)
        feat = np.where(np.isnan(feat), first, feat + self._rates * (inp - feat))
        lo, hi = st["lo"][slots], st["hi"][slots]
        span = hi - lo
        known = ready[:, None] & (span > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            over = np.where(self._is_vol, feat - hi, np.maximum(feat - hi, lo - feat))
            excess = np.where(known, over / np.where(known, span, 1.0), 0.0)
        record = np.maximum((excess / self._k).max(axis=1), 0.0)
        # 2. residual and 3. context novelty, calibrated as likelihoods
        mean, var = st["mean"][slots], st["var"][slots]
        vspan = span[:, 0]
        scale = np.where(vspan > 0, vspan, np.maximum(np.abs(values), 1.0))
        resid = np.minimum(np.abs(values - mean) / (np.sqrt(var) + 1e-3 * scale), 20.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            pos = np.where(vspan > 0, (values - lo[:, 0]) / vspan, 0.0)
        q = np.clip((pos * self.levels).astype(np.int64), 0, self.levels - 1)
        key = (st["ctx"][slots] * self.levels + q) % (self.levels**self.order)
        h = (key * _HASH) % self.table
        count = st["seen"][slots, h]
        raws = [resid, 1.0 / (1.0 + count)]
        valid = np.ones((len(values), self._nsur), dtype=bool)
        if self.profile:
            day_z, day_ok, week_z, week_ok, (bin_, pm, pv, pc) = self._profile(
                slots, values, ts, scale
            )
            raws += [day_z, week_z]  # the pooled day only stands in for an unready week bin
            valid[:, 2], valid[:, 3] = day_ok & ~week_ok, week_ok
        raw = np.stack(raws, axis=1)
        avg, mu, sig2 = st["avg"][slots], st["mu"][slots], st["sig2"][slots]
        calib = st["calib"][slots]
        avg = np.where(valid, avg + self.short * (raw - avg), avg)
        scored = valid & (calib >= self.warmup)
        z = np.where(scored, (avg - mu) / np.sqrt(sig2 + 1e-6), -10.0)
        surprise = (-log10_tail(z) / self._c).max(axis=1)  # the most surprising channel
        # combine, suppress, map `level` to 0.5
        v = np.maximum(record, surprise)
        s = np.where(ready, v / (1.0 + v), 0.0)
        held = st["held"][slots]
        s_out = np.where(s > held, s, 0.0)
        lv = self.level
        fired = (s_out >= lv) & self.lock  # an alert holds off everything for `hold` readings
        st["held"][slots] = np.maximum(held - 1.0 / self.hold, np.where(fired, 1.0, s))
        score = np.where(s_out < lv, 0.5 * s_out / lv, 0.5 + 0.5 * (s_out - lv) / (1.0 - lv))
        # learn
        n1 = n + 1.0
        a = np.maximum(1.0 / (calib + 1.0), self.long)
        d = avg - mu
        st["mu"][slots] = np.where(valid, mu + a * d, mu)
        st["sig2"][slots] = np.where(valid, (1.0 - a) * (sig2 + a * d * d), sig2)
        st["avg"][slots] = avg
        st["calib"][slots] = calib + valid
        if self.profile:
            ap = np.maximum(1.0 / (pc + 1.0), self.prof_rate)
            dp = values - pm
            st["pmean"][slots, bin_] = pm + ap * dp
            st["pvar"][slots, bin_] = (1.0 - ap) * (pv + ap * dp * dp)
            st["pcount"][slots, bin_] = np.minimum(pc + 1, 255)
        b = np.maximum(1.0 / n1, self.alpha)
        dm = values - mean
        st["mean"][slots] = mean + b * dm
        st["var"][slots] = (1.0 - b) * (var + b * dm * dm)
        st["lo"][slots] = np.minimum(lo, feat)
        st["hi"][slots] = np.maximum(hi, feat)
        st["feat"][slots] = feat
        st["ctx"][slots] = key
        st["seen"][slots, h] = np.minimum(count + 1, 65535)
        st["n"][slots] = n + 1
        k_ = len(values)
        return Scores(np.clip(score, 0.0, 1.0), nan_band(k_), nan_band(k_))

    def _profile(
        self, slots: IntArray, values: FloatArray, ts: FloatArray, scale: FloatArray
    ) -> tuple[
        FloatArray,
        BoolArray,
        FloatArray,
        BoolArray,
        tuple[IntArray, FloatArray, FloatArray, FloatArray],
    ]:
        """Distances from the pooled hour of day and from the hour-of-week bin, when ready."""
        st = self.state
        nb = self.profile
        pos = np.nan_to_num(ts % _WEEK) * (nb / _WEEK)
        bin_ = np.clip(pos.astype(np.intp), 0, nb - 1)
        floor = 1e-3 * scale
        pm = st["pmean"][slots, bin_].astype(np.float64)
        pv = st["pvar"][slots, bin_].astype(np.float64)
        pc = st["pcount"][slots, bin_].astype(np.float64)
        week_z = np.minimum(np.abs(values - pm) / (np.sqrt(pv) + floor), 20.0)
        # the same hour on every day of the week, pooled (the bin itself included)
        same = (bin_[:, None] + (nb // _DAYS) * np.arange(_DAYS)) % nb
        rows = slots[:, None]
        m = st["pmean"][rows, same].astype(np.float64)
        v = st["pvar"][rows, same].astype(np.float64)
        c = st["pcount"][rows, same].astype(np.float64)
        w = np.minimum(c, 1.0 / self.prof_rate)
        tot = w.sum(axis=1)
        safe = np.where(tot > 0, tot, 1.0)
        dm = (w * m).sum(axis=1) / safe
        dv = (w * (v + (m - dm[:, None]) ** 2)).sum(axis=1) / safe
        day_z = np.minimum(np.abs(values - dm) / (np.sqrt(dv) + floor), 20.0)
        day_ok = c.sum(axis=1) >= self.prof_min
        return day_z, day_ok, week_z, pc >= self.prof_min, (bin_, pm, pv, pc)

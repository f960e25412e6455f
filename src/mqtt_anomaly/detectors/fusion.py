"""Fusion: the ensemble's evidence in under 1 KiB per sensor, with a settling alert lock.

The same four kinds of evidence as :mod:`.ensemble` (records of the value, its smoothings and
its volatility; never-seen value contexts; the calibrated residual; the hour-of-week calendar
profile with the pooled hour of day standing in) and the same once-per-incident reporting,
stored compactly so that it fits the service's default set:

- the calendar profile keeps, per bin, the mean and the standard deviation as ``float16``
  offsets from the sensor's first reading in a per-sensor power-of-two unit (rescaled when a
  reading would leave the ``float16`` range), and the reading count in 4 bits (it only has to
  reach ``prof_min`` and ``1 / prof_rate``);
- the records and the calibrations are ``float32``, the context counters ``uint8`` in a
  table of ``table`` (64) entries.

**Settling.** An alert holds off every later score for ``hold`` readings (the ensemble's
``lock``) only once the sensor has ``warmup + settle`` readings: while its calibrations are
young an alert is reported but does not silence the next ``hold`` readings, so an early false
alarm does not hide the first real incident (the price: a young sensor may alert a few times
in its first ``warmup + settle`` readings). Other defaults differ from the ensemble's where
NAB measured better: ``long`` 0.0016, ``kvol`` 0.08, and ``level`` 0.244 (the internal score
mapped to 0.5: NAB's optimised threshold for all three profiles is then the alert level).

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

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from ._common import log10_tail
from .base import Field, FloatArray, IntArray, Scores, nan_band
from .ensemble import _DAYS, _HASH, _WEEK, BoolArray, EnsembleDetector

_F16_SAFE = 8192.0  # a stored offset beyond this (in units) rescales the sensor's profile
_NIBBLE = 15


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
        level: float = 0.244,
        lock: bool = True,
        vol_fast: float = 0.05,
        vol_slow: float = 0.01,
        kvol: float = 0.08,
        profile: int = 168,
        c_profile: float = 50.0,
        prof_rate: float = 0.1,
        prof_min: int = 5,
        settle: int = 150,
    ) -> None:
        if prof_min > _NIBBLE:
            raise ValueError(f"prof_min must be at most {_NIBBLE}")
        if settle < 0:
            raise ValueError("settle must be >= 0")
        self.settle = int(settle)
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
            "punit": Field(np.float32, 1.0),
            "pmean": Field(np.float16, 0.0),  # mean, standard deviation per bin, in units
            "psd": Field(np.float16, 0.0),
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
        n = st["n"][slots]
        ready = n >= self.warmup
        # 1. records of the value and its smoothings
        feat = st["feat"][slots].astype(np.float64)
        step = np.abs(values - feat[:, 0])  # NaN on a sensor's first reading
        inp = np.where(self._is_vol, np.nan_to_num(step)[:, None], values[:, None])
        first = np.where(self._is_vol, 0.0, inp)
        feat = np.where(np.isnan(feat), first, feat + self._rates * (inp - feat))
        lo, hi = st["lo"][slots].astype(np.float64), st["hi"][slots].astype(np.float64)
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
        key = (st["ctx"][slots].astype(np.int64) * self.levels + q) % (self.levels**self.order)
        h = (key * _HASH) % self.table
        count = st["seen"][slots, h].astype(np.int64)
        raws = [resid, 1.0 / (1.0 + count)]
        valid = np.ones((len(values), self._nsur), dtype=bool)
        if self.profile:
            day_z, day_ok, week_z, week_ok, prof = self._compact_profile(slots, values, ts, scale)
            raws += [day_z, week_z]  # the pooled day only stands in for an unready week bin
            valid[:, 2], valid[:, 3] = day_ok & ~week_ok, week_ok
        raw = np.stack(raws, axis=1)
        avg = st["avg"][slots].astype(np.float64)
        mu = st["mu"][slots].astype(np.float64)
        sig2 = st["sig2"][slots].astype(np.float64)
        calib = st["calib"][slots].astype(np.int64)
        avg = np.where(valid, avg + self.short * (raw - avg), avg)
        scored = valid & (calib >= self.warmup)
        z = np.where(scored, (avg - mu) / np.sqrt(sig2 + 1e-6), -10.0)
        surprise = (-log10_tail(z) / self._c).max(axis=1)  # the most surprising channel
        # combine, suppress, map `level` to 0.5
        v = np.maximum(record, surprise)
        s = np.where(ready, v / (1.0 + v), 0.0)
        held = st["held"][slots].astype(np.float64)
        s_out = np.where(s > held, s, 0.0)
        lv = self.level
        # an alert holds off everything for `hold` readings, once the sensor has settled
        fired = (s_out >= lv) & self.lock & (n >= self.warmup + self.settle)
        st["held"][slots] = np.maximum(held - 1.0 / self.hold, np.where(fired, 1.0, s))
        score = np.where(s_out < lv, 0.5 * s_out / lv, 0.5 + 0.5 * (s_out - lv) / (1.0 - lv))
        # learn
        a = np.maximum(1.0 / (calib + 1.0), self.long)
        d = avg - mu
        st["mu"][slots] = np.where(valid, mu + a * d, mu)
        st["sig2"][slots] = np.where(valid, (1.0 - a) * (sig2 + a * d * d), sig2)
        st["avg"][slots] = avg
        st["calib"][slots] = np.minimum(calib + valid, 65535)
        if self.profile:
            self._learn_profile(slots, values, *prof)
        b = np.maximum(1.0 / (n + 1.0), self.alpha)
        dm = values - mean
        st["mean"][slots] = mean + b * dm
        st["var"][slots] = (1.0 - b) * (var + b * dm * dm)
        st["lo"][slots] = np.minimum(lo, feat)
        st["hi"][slots] = np.maximum(hi, feat)
        st["feat"][slots] = feat
        st["ctx"][slots] = key
        st["seen"][slots, h] = np.minimum(count + 1, 255)
        st["n"][slots] = n + 1
        k_ = len(values)
        return Scores(np.clip(score, 0.0, 1.0), nan_band(k_), nan_band(k_))

    def _counts(self, slots: IntArray, bins: IntArray) -> IntArray:
        """The 4-bit reading counts of ``bins`` (same leading shape as ``slots``)."""
        byte = self.state["pcount"][slots, bins >> 1].astype(np.intp)
        return np.asarray((byte >> (4 * (bins & 1))) & _NIBBLE, dtype=np.intp)

    def _compact_profile(
        self, slots: IntArray, values: FloatArray, ts: FloatArray, scale: FloatArray
    ) -> tuple[
        FloatArray,
        BoolArray,
        FloatArray,
        BoolArray,
        tuple[IntArray, FloatArray, FloatArray, IntArray],
    ]:
        """Distances from the pooled hour of day and from the hour-of-week bin, when ready."""
        st = self.state
        nb = self.profile
        pos = np.nan_to_num(ts % _WEEK) * (nb / _WEEK)
        bin_ = np.clip(pos.astype(np.intp), 0, nb - 1)
        ref = st["pref"][slots]
        ref = np.where(np.isnan(ref), values, ref)  # a sensor's first reading is its offset
        unit = st["punit"][slots].astype(np.float64)
        floor = 1e-3 * scale
        pm = ref + unit * st["pmean"][slots, bin_].astype(np.float64)
        psd = unit * st["psd"][slots, bin_].astype(np.float64)
        pc = self._counts(slots, bin_)
        week_z = np.minimum(np.abs(values - pm) / (psd + floor), 20.0)
        # the same hour on every day of the week, pooled (the bin itself included)
        same = (bin_[:, None] + (nb // _DAYS) * np.arange(_DAYS)) % nb
        rows = slots[:, None]
        m = ref[:, None] + unit[:, None] * st["pmean"][rows, same].astype(np.float64)
        sd = unit[:, None] * st["psd"][rows, same].astype(np.float64)
        c = self._counts(rows, same).astype(np.float64)
        w = np.minimum(c, 1.0 / self.prof_rate)
        tot = w.sum(axis=1)
        safe = np.where(tot > 0, tot, 1.0)
        dm = (w * m).sum(axis=1) / safe
        dv = (w * (sd * sd + (m - dm[:, None]) ** 2)).sum(axis=1) / safe
        day_z = np.minimum(np.abs(values - dm) / (np.sqrt(dv) + floor), 20.0)
        day_ok = c.sum(axis=1) >= self.prof_min
        return day_z, day_ok, week_z, pc >= self.prof_min, (bin_, pm, psd, pc)

    def _learn_profile(
        self,
        slots: IntArray,
        values: FloatArray,
        bin_: IntArray,
        pm: FloatArray,
        psd: FloatArray,
        pc: IntArray,
    ) -> None:
        st = self.state
        ref = st["pref"][slots]
        ref = np.where(np.isnan(ref), values, ref)
        st["pref"][slots] = ref
        ap = np.maximum(1.0 / (pc + 1.0), self.prof_rate)
        dp = values - pm
        new_m = pm + ap * dp
        new_sd = np.sqrt((1.0 - ap) * (psd * psd + ap * dp * dp))
        unit = st["punit"][slots].astype(np.float64)
        big = np.maximum(np.abs(new_m - ref), new_sd) / unit
        grow = big > _F16_SAFE
        if grow.any():  # rescale the whole profile of these sensors by a power of two
            g = slots[grow]
            factor = 2.0 ** np.ceil(np.log2(big[grow] / (_F16_SAFE / 64.0)))
            for name in ("pmean", "psd"):
                st[name][g] = (st[name][g].astype(np.float64) / factor[:, None]).astype(np.float16)
            unit[grow] *= factor
            st["punit"][slots] = unit
        st["pmean"][slots, bin_] = (new_m - ref) / unit
        st["psd"][slots, bin_] = new_sd / unit
        byte, shift = bin_ >> 1, 4 * (bin_ & 1)
        old = st["pcount"][slots, byte].astype(np.intp)
        cnt = np.minimum(pc + 1, _NIBBLE)
        st["pcount"][slots, byte] = (old & ~(_NIBBLE << shift)) | (cnt << shift)

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

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import numba
import numpy as np

from .base import Field, FloatArray, IntArray, Scores, nan_band
from .ensemble import _HASH, _WEEK, EnsembleDetector

_SAFE = 16384.0  # a stored profile number beyond this doubles the sensor's unit
_NIBBLE = 15
_ERFC = np.array(
    [
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
    ]
)


@numba.njit(cache=True)
def _log10_tail(z: float) -> float:  # pragma: no cover - compiled
    """``log10 P(Z > z)``, as :func:`._common.log10_tail` computes it."""
    x = abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * x)
    poly = 0.0
    for k in range(_ERFC.shape[0] - 1, -1, -1):
        poly = poly * t + _ERFC[k]
    ln_upper = math.log(t) - x * x + poly - math.log(2.0)
    ln_tail = ln_upper if z >= 0 else math.log1p(-math.exp(ln_upper))
    return ln_tail / math.log(10.0)


@numba.njit(cache=True)
def _count(pcount: np.ndarray, i: int, b: int) -> int:  # pragma: no cover - compiled
    return (int(pcount[i, b >> 1]) >> (4 * (b & 1))) & _NIBBLE


@numba.njit(cache=True)
def _kernel(  # pragma: no cover - compiled
    slots: np.ndarray,
    values: np.ndarray,
    ts: np.ndarray,
    out: np.ndarray,
    st_n: np.ndarray,
    feat: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    ctx: np.ndarray,
    seen: np.ndarray,
    avg: np.ndarray,
    mu: np.ndarray,
    sig2: np.ndarray,
    calib: np.ndarray,
    held: np.ndarray,
    pref: np.ndarray,
    punit: np.ndarray,
    pmean: np.ndarray,
    psd: np.ndarray,
    pcount: np.ndarray,
    rates: np.ndarray,
    is_vol: np.ndarray,
    kk: np.ndarray,
    dead: np.ndarray,
    cc: np.ndarray,
    ints: np.ndarray,
    reals: np.ndarray,
) -> None:
    warmup, settle, hold, lock, levels, modulus, table, nb, prof_min = ints[:9]
    level, short, long_, alpha, prof_rate = reals[:5]
    nf = rates.shape[0]
    nsur = cc.shape[0]
    newf = np.empty(nf)
    raw = np.zeros(4)
    valid = np.ones(4, dtype=np.bool_)
    newavg = np.empty(4)
    for j in range(slots.shape[0]):
        i = slots[j]
        x = values[j]
        nn = st_n[i]
        ready = nn >= warmup
        # 1. records of the value, its smoothings and its volatilities
        x0 = float(feat[i, 0])
        step = 0.0 if math.isnan(x0) else abs(x - x0)
        record = 0.0
        # the dead band's yardstick: the slowest volatility (mean |step|), else the deviation
        sigma = float(feat[i, nf - 1]) if nf > 3 else math.sqrt(var[i])
        if math.isnan(sigma):
            sigma = 0.0
        for f in range(nf):
            inp = step if is_vol[f] else x
            old = float(feat[i, f])
            nv = (0.0 if is_vol[f] else inp) if math.isnan(old) else old + rates[f] * (inp - old)
            newf[f] = nv
            lf, hf = float(lo[i, f]), float(hi[i, f])
            sp = hf - lf
            if ready and sp > 0:
                over = nv - hf if is_vol[f] else max(nv - hf, lf - nv)
                record = max(record, (over - dead[f] * sigma) / sp / kk[f])
        # 2. residual and 3. context novelty
        lo0, hi0 = float(lo[i, 0]), float(hi[i, 0])
        vspan = hi0 - lo0
        scale = vspan if vspan > 0 else max(abs(x), 1.0)
        m, v = mean[i], var[i]
        raw[0] = min(abs(x - m) / (math.sqrt(v) + 1e-3 * scale), 20.0)
        pos = (x - lo0) / vspan if vspan > 0 else 0.0
        q = int(min(max(pos * levels, 0.0), levels - 1.0))
        key = (int(ctx[i]) * levels + q) % modulus
        h = (key * _HASH) % table
        cnt = int(seen[i, h])
        raw[1] = 1.0 / (1.0 + cnt)
        # 4. calendar profile: the hour-of-week bin, the pooled hour of day standing in
        b = 0
        pm_b = ps_b = 0.0
        pc_b = 0
        ref = pref[i]
        if nsur > 2:
            tw = ts[j] % _WEEK
            if math.isnan(tw):
                tw = 0.0
            b = min(max(int(tw * (nb / _WEEK)), 0), nb - 1)
            if math.isnan(ref):
                ref = x  # a sensor's first reading is its offset
            u = float(punit[i])
            floor = 1e-3 * scale
            pm_b = ref + u * pmean[i, b]
            ps_b = u * psd[i, b]
            pc_b = _count(pcount, i, b)
            raw[3] = min(abs(x - pm_b) / (ps_b + floor), 20.0)
            week_ok = pc_b >= prof_min
            csum = 0.0
            if not week_ok:  # the pooled hour of day stands in for an unready week bin
                stride = nb // 7
                tot = wm = 0.0
                for d in range(7):
                    bd = (b + stride * d) % nb
                    c = float(_count(pcount, i, bd))
                    w = min(c, 1.0 / prof_rate)
                    tot += w
                    wm += w * (ref + u * pmean[i, bd])
                    csum += c
                safe = tot if tot > 0 else 1.0
                dm = wm / safe
                dv = 0.0
                for d in range(7):
                    bd = (b + stride * d) % nb
                    w = min(float(_count(pcount, i, bd)), 1.0 / prof_rate)
                    md = ref + u * pmean[i, bd]
                    sd = u * psd[i, bd]
                    dv += w * (sd * sd + (md - dm) ** 2)
                dv /= safe
                raw[2] = min(abs(x - dm) / (math.sqrt(dv) + floor), 20.0)
            valid[2] = csum >= prof_min and not week_ok
            valid[3] = week_ok
        # calibrate each channel as a likelihood; the strongest evidence wins
        surprise = 0.0
        for ch in range(nsur):
            a0 = float(avg[i, ch])
            a1 = a0 + short * (raw[ch] - a0) if valid[ch] else a0
            newavg[ch] = a1
            scored = valid[ch] and calib[i, ch] >= warmup
            z = (a1 - mu[i, ch]) / math.sqrt(sig2[i, ch] + 1e-6) if scored else -10.0
            e = -_log10_tail(z) / cc[ch]
            surprise = max(surprise, e)
        vv = max(record, surprise)
        s = vv / (1.0 + vv) if ready else 0.0
        hd = float(held[i])
        s_out = s if s > hd else 0.0
        fired = s_out >= level and lock != 0 and nn >= warmup + settle
        held[i] = max(hd - 1.0 / hold, 1.0 if fired else s)
        sc = 0.5 * s_out / level if s_out < level else 0.5 + 0.5 * (s_out - level) / (1.0 - level)
        out[j] = min(max(sc, 0.0), 1.0)
        # learn: calibrations
        for ch in range(nsur):
            if valid[ch]:
                cb = int(calib[i, ch])
                a = max(1.0 / (cb + 1.0), long_)
                mc = float(mu[i, ch])
                d_ = newavg[ch] - mc
                mu[i, ch] = mc + a * d_
                sig2[i, ch] = (1.0 - a) * (sig2[i, ch] + a * d_ * d_)
                calib[i, ch] = min(cb + 1, 65535)
            avg[i, ch] = newavg[ch]
        # the profile bin
        if nsur > 2:
            pref[i] = ref
            ap = max(1.0 / (pc_b + 1.0), prof_rate)
            dp = x - pm_b
            new_m = pm_b + ap * dp
            new_sd = math.sqrt((1.0 - ap) * (ps_b * ps_b + ap * dp * dp))
            dev = max(abs(new_m - ref), new_sd)
            u = float(punit[i])
            if u == 0.0 and dev > 0.0:  # the first deviation sets the unit
                u = 2.0 ** (math.floor(math.log2(dev)) - 10)
            if u > 0.0 and dev / u > _SAFE:  # double the unit until every number fits
                factor = 2.0 ** math.ceil(math.log2(dev / u / (_SAFE / 2.0)))
                for bb in range(nb):
                    pmean[i, bb] = round(pmean[i, bb] / factor)
                    psd[i, bb] = round(psd[i, bb] / factor)
                u *= factor
            if u > 0.0:
                punit[i] = u
                pmean[i, b] = round((new_m - ref) / u)
                psd[i, b] = round(new_sd / u)
            shift = 4 * (b & 1)
            old_byte = int(pcount[i, b >> 1])
            cnew = min(pc_b + 1, _NIBBLE)
            pcount[i, b >> 1] = (old_byte & ~(_NIBBLE << shift) & 255) | (cnew << shift)
        # the reference, records, context
        bm = max(1.0 / (nn + 1.0), alpha)
        dmn = x - m
        mean[i] = m + bm * dmn
        var[i] = (1.0 - bm) * (v + bm * dmn * dmn)
        for f in range(nf):
            lo[i, f] = min(float(lo[i, f]), newf[f])
            hi[i, f] = max(float(hi[i, f]), newf[f])
            feat[i, f] = newf[f]
        ctx[i] = key
        seen[i, h] = min(cnt + 1, 255)
        st_n[i] = nn + 1


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
        kernel: Callable[..., None] = _kernel
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

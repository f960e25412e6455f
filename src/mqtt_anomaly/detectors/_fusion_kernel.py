"""The fusion detector's one compiled loop per batch (Numba; see :mod:`.fusion`).

Imported on the detector's first batch, not when the registry lists the detector, so a process
that never runs fusion never loads Numba (about 0.3 s at start). Numba caches the compiled
code beside this file (``cache=True``): the first batch of a fresh install compiles for a few
seconds, later processes load it.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._common import _ERFC as ERFC_COEFFICIENTS
from .ensemble import _HASH, _WEEK

_SAFE = 16384.0  # a stored profile number beyond this doubles the sensor's unit
_NIBBLE = 15
_ERFC = np.array(ERFC_COEFFICIENTS)  # a global array: a constant of the compiled code


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
def kernel(  # pragma: no cover - compiled
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

"""Readings history from the store, downsampled to at most N time buckets.

>>> rows = [(float(t), float(t % 10), t) for t in range(100)]
>>> b = downsample(rows, 4)
>>> len(b), b[0]["count"], b[0]["min"], b[0]["max"]
(4, 25, 0.0, 9.0)
>>> len(downsample(rows[:3], 10))
3
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..store.base import ReadingRow


def downsample(rows: Sequence[ReadingRow], buckets: int) -> list[dict[str, Any]]:
    """``rows`` (oldest first) as at most ``buckets`` buckets of equal duration.

    Each bucket gives its mean time, min, max, mean value and row count; with no more rows
    than buckets every row is its own bucket. Empty buckets are left out.
    """
    if not rows:
        return []
    if len(rows) <= buckets:
        return [
            {"ts": t, "min": v, "max": v, "mean": v, "count": 1, "seq": int(s)} for t, v, s in rows
        ]
    ts = np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows))
    vs = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
    t0, t1 = float(ts[0]), float(ts[-1])
    span = max(t1 - t0, 1e-9)
    idx = np.minimum(((ts - t0) / span * buckets).astype(np.intp), buckets - 1)
    counts = np.bincount(idx, minlength=buckets)
    tsum = np.bincount(idx, weights=ts, minlength=buckets)
    vsum = np.bincount(idx, weights=vs, minlength=buckets)
    vmin = np.full(buckets, np.inf)
    vmax = np.full(buckets, -np.inf)
    np.minimum.at(vmin, idx, vs)
    np.maximum.at(vmax, idx, vs)
    out = []
    for i in np.nonzero(counts)[0].tolist():
        n = int(counts[i])
        out.append(
            {
                "ts": float(tsum[i] / n),
                "min": float(vmin[i]),
                "max": float(vmax[i]),
                "mean": float(vsum[i] / n),
                "count": n,
                "seq": None,
            }
        )
    return out

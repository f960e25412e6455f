"""k-of-n alarm hysteresis for incidents that last minutes, vectorised across assets.

Per slot: the last ``n`` rows' verdicts (row above its limit or not) as the bits of one
``uint64``, whether an alarm is active, and how many rows in a row have been quiet.

- **raise**: at least ``k`` of the last ``n`` rows above the limit while no alarm is active;
- **hold**: an active alarm stays while rows keep crossing;
- **clear**: after ``quiet`` consecutive rows below the limit.

A row that could not be scored (NaN: commissioning, every sensor missing) counts as neither.

>>> import numpy as np
>>> h = KofN(k=2, n=3, quiet=2)
>>> s = np.zeros(1, dtype=np.intp)
>>> [bool(h.step(s, np.array([x]))[0]) for x in (1, 0, 1, 1, 0, 0, 1)]
[False, False, True, True, True, False, False]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..detectors._grow import capacity_for, grown

BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]


class KofN:
    """Per-slot k-of-n alarm state (see the module docstring)."""

    def __init__(self, *, k: int = 3, n: int = 5, quiet: int = 20) -> None:
        if not 1 <= k <= n <= 64:
            raise ValueError(f"alarm: need 1 <= k <= n <= 64, got k={k}, n={n}")
        if quiet < 1:
            raise ValueError(f"alarm: quiet must be at least 1, got {quiet}")
        self.k, self.n, self.quiet = k, n, quiet
        self._mask = np.uint64((1 << n) - 1)
        self.bits = np.zeros(0, dtype=np.uint64)
        self.active = np.zeros(0, dtype=bool)
        self.calm = np.zeros(0, dtype=np.int32)

    def reserve(self, n: int) -> None:
        if n <= len(self.active):
            return
        cap = capacity_for(n, len(self.active))
        self.bits = grown(self.bits, cap, 0)
        self.active = grown(self.active, cap, False)
        self.calm = grown(self.calm, cap, 0)

    def step(self, slots: IntArray, over: NDArray[Any]) -> BoolArray:
        """Advance ``slots`` by one verdict each (1.0/True above, 0 below, NaN none); returns
        whether each slot's alarm is active after it."""
        if len(slots):
            self.reserve(int(slots.max()) + 1)
        v = np.asarray(over, dtype=np.float64)
        known = ~np.isnan(v)
        hit = known & (v > 0)
        bits = np.where(
            known,
            ((self.bits[slots] << np.uint64(1)) | hit.astype(np.uint64)) & self._mask,
            self.bits[slots],
        )
        active = self.active[slots]
        calm = np.where(known, np.where(hit, 0, self.calm[slots] + 1), self.calm[slots])
        raise_now = ~active & (np.bitwise_count(bits) >= self.k)
        clear_now = active & (calm >= self.quiet)
        now = (active | raise_now) & ~clear_now
        self.bits[slots] = np.where(clear_now, np.uint64(0), bits)
        self.active[slots] = now
        self.calm[slots] = calm
        return now

    def reset(self, slots: IntArray) -> None:
        slots = slots[slots < len(self.active)]
        self.bits[slots] = 0
        self.active[slots] = False
        self.calm[slots] = 0

    def state_dict(self) -> dict[str, Any]:
        return {"bits": self.bits.copy(), "active": self.active.copy(), "calm": self.calm.copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        bits, active, calm = (np.asarray(state[k]) for k in ("bits", "active", "calm"))
        if not len(bits) == len(active) == len(calm):
            raise ValueError("saved alarm state: arrays differ in length")
        self.bits = bits.astype(np.uint64)
        self.active = active.astype(bool)
        self.calm = calm.astype(np.int32)

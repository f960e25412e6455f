"""The alert state machine: debounce, hysteresis, severity, one active alert per sensor.

One :class:`AlertBook` per detector holds, for every sensor slot, whether an alert is active
and how many consecutive readings have been above the raise level or below the clear level.
It is vectorised: :meth:`AlertBook.step` takes a batch of (slot, score) and returns only the
positions where an alert was raised or cleared, so per-reading work stays in numpy and Python
runs only for the rare events.

- **raise**: ``debounce`` consecutive scores >= ``raise_level`` while no alert is active;
- **clear**: ``clear_after`` consecutive scores < ``clear_level`` while an alert is active
  (``clear_level`` < ``raise_level``: hysteresis, so a score wobbling around the raise level
  does not flap);
- **severity**: ``critical`` when the score that raised it is >= ``critical_level``, else
  ``warning``; fixed for the life of the alert.

>>> import numpy as np
>>> book = AlertBook("demo", debounce=2, clear_after=1)
>>> s = np.array([0], dtype=np.intp)
>>> [book.step(s, np.array([x])).raised.tolist() for x in (0.6, 0.6, 0.6)]
[[], [0], []]
>>> book.step(s, np.array([0.4])).cleared.tolist(), book.step(s, np.array([0.1])).cleared.tolist()
([], [0])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from .detectors._grow import capacity_for, grown
from .detectors.base import FloatArray, IntArray


class Transitions(NamedTuple):
    """Positions (into the batch) where an alert was raised or cleared."""

    raised: IntArray
    cleared: IntArray
    critical: NDArray[np.bool_]  # per raised position


_NOTHING = Transitions(
    np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp), np.zeros(0, dtype=bool)
)


class AlertBook:
    """Per-slot alert state of one detector."""

    def __init__(
        self,
        detector: str,
        *,
        raise_level: float = 0.5,
        clear_level: float = 0.3,
        critical_level: float = 2.0,
        debounce: int = 1,
        clear_after: int = 3,
    ) -> None:
        if not clear_level < raise_level:
            raise ValueError("clear_level must be below raise_level")
        self.detector = detector
        self.raise_level = raise_level
        self.clear_level = clear_level
        self.critical_level = critical_level
        self.debounce = debounce
        self.clear_after = clear_after
        self.active = np.zeros(0, dtype=bool)
        self.critical = np.zeros(0, dtype=bool)
        self.above = np.zeros(0, dtype=np.int32)
        self.below = np.zeros(0, dtype=np.int32)

    def reserve(self, n: int) -> None:
        if n <= len(self.active):
            return
        cap = capacity_for(n, len(self.active))
        for name in ("active", "critical", "above", "below"):
            setattr(self, name, grown(getattr(self, name), cap, 0))

    def step(self, slots: IntArray, scores: FloatArray) -> Transitions:
        """Advance the slots' state with one score each (slots distinct)."""
        if len(slots):
            self.reserve(int(slots.max()) + 1)
        active = self.active[slots]
        hi = scores >= self.raise_level
        if not hi.any() and not active.any():  # the common case: quiet sensors, no alert
            self.above[slots] = 0
            return _NOTHING
        lo = scores < self.clear_level  # NaN counts as neither
        above = np.where(hi, self.above[slots] + 1, 0)
        # low scores count only while active: an inactive slot's count would depend on
        # which other sensors shared its round (the quiet path above skips it)
        below = np.where(lo & active, self.below[slots] + 1, 0)
        raise_now = ~active & (above >= self.debounce)
        clear_now = active & (below >= self.clear_after)
        crit = scores >= self.critical_level
        new_active = (active | raise_now) & ~clear_now
        self.active[slots] = new_active
        self.above[slots] = np.where(raise_now, 0, above)
        self.below[slots] = np.where(clear_now, 0, below)
        raised = np.flatnonzero(raise_now)
        if len(raised):
            self.critical[slots[raised]] = crit[raised]
        return Transitions(raised, np.flatnonzero(clear_now), crit[raised])

    def set_state(self, slot: int, active: bool, critical: bool = False) -> bool:
        """Force one slot's state (for status-driven alerts); True if it changed."""
        self.reserve(slot + 1)
        changed = bool(self.active[slot]) != active
        self.active[slot] = active
        self.critical[slot] = critical and active
        self.above[slot] = 0
        self.below[slot] = 0
        return changed

    def reset(self, slots: IntArray) -> None:
        """Forget ``slots``: no active alert, no run counted (for a slot given to a new sensor)."""
        slots = slots[slots < len(self.active)]
        self.active[slots] = False
        self.critical[slots] = False
        self.above[slots] = 0
        self.below[slots] = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "active": self.active.copy(),
            "critical": self.critical.copy(),
            "above": self.above.copy(),
            "below": self.below.copy(),
        }

    def load_state_dict(self, state: Mapping[str, NDArray[Any]]) -> None:
        for name in ("active", "critical", "above", "below"):
            setattr(self, name, np.array(state[name], dtype=getattr(self, name).dtype))

"""The fleet's readings without any I/O: values, silences and faults, reproducible from a seed.

Sensor ``i`` takes reading ``k`` at run time ``phase[i] + k * interval``; phases spread the
fleet evenly over one interval. :meth:`FleetModel.step` produces the next reading of any set
of sensors. The result for a sensor depends only on the seed, the fleet size, the interval,
the fault rates and the forced injections, never on how readings were batched, so a run is
reproducible whatever the timing.

>>> from mqtt_anomaly.simulate.faults import NO_FAULTS
>>> m = FleetModel(4, interval=1.0, seed=1, rates=NO_FAULTS)
>>> m.inject(FaultKind.SPIKE, sensor=2, at=3.0)  # sensor 2 reads at 0.5, 1.5, 2.5, 3.5 s...
3
>>> steps = [m.step(np.arange(4)) for _ in range(5)]
>>> [float(s.values[2]) for s in steps][3]
98.2
>>> steps[3].started[0].kind, steps[3].ended[0].end_k
(<FaultKind.SPIKE: 1>, 3)
>>> bool(np.array_equal(m.next_k, [5, 5, 5, 5]))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import FaultRates
from .faults import (
    SPECS,
    BoolArray,
    FaultEngine,
    FaultEvent,
    FaultKind,
    FaultRound,
    Int8Array,
    draw_round,
    first_reading_at,
    forced_readings,
    onset_probabilities,
)
from .signals import FAULT_STREAM, FloatArray, IntArray, SignalModel, rng_for


@dataclass(frozen=True, slots=True)
class Step:
    """One batch of readings: reading ``k[j]`` of sensor ``idx[j]`` at run time ``t[j]``.

    ``sent[j]`` is False while the sensor is silent (dropout, crash); ``kinds[j]`` is the
    active fault (0: none). ``started`` and ``ended`` are the fault events of this batch.
    """

    idx: IntArray
    k: IntArray
    t: FloatArray
    values: FloatArray
    sent: BoolArray
    kinds: Int8Array
    started: list[FaultEvent]
    ended: list[FaultEvent]


class FleetModel:
    """Readings of ``sensors`` sensors every ``interval`` seconds, with random faults."""

    def __init__(
        self, sensors: int, *, interval: float, seed: int, rates: FaultRates | None = None
    ) -> None:
        self.n = sensors
        self.interval = interval
        self.seed = seed
        self.phase: FloatArray = np.arange(sensors, dtype=np.float64) * (interval / sensors)
        self.next_k: IntArray = np.zeros(sensors, np.int64)
        self.signals = SignalModel(sensors, seed)
        self.faults = FaultEngine(sensors, interval)
        self._probabilities = onset_probabilities(rates or FaultRates(), interval)
        self._noise: dict[int, FloatArray] = {}
        self._onsets: dict[int, FaultRound | None] = {}
        self._oldest = 0

    def time_of(self, sensor: int, k: int) -> float:
        """Run time (s) of reading ``k`` of ``sensor``."""
        return float(self.phase[sensor] + k * self.interval)

    def inject(
        self,
        kind: FaultKind,
        *,
        sensor: int,
        at: float | None = None,
        duration: float | None = None,
        magnitude: float | None = None,
    ) -> int:
        """Force a fault on ``sensor`` from its first reading at or after run time ``at``
        (None: its next reading). Returns that reading's index."""
        k = int(self.next_k[sensor])
        if at is not None:
            k = max(k, first_reading_at(float(self.phase[sensor]), at, self.interval))
        size = SPECS[kind].forced_magnitude if magnitude is None else magnitude
        readings = forced_readings(kind, duration, self.interval)
        self.faults.force(sensor, kind, k, readings, size)
        return k

    def _round(self, k: int) -> tuple[FloatArray, FaultRound | None]:
        z = self._noise.get(k)
        if z is None:
            z = self._noise[k] = self.signals.round_noise(k)
            rng = rng_for(self.seed, FAULT_STREAM, k)
            self._onsets[k] = draw_round(rng, self.n, self._probabilities, self.interval)
        return z, self._onsets[k]

    def _forget_old_rounds(self) -> None:
        oldest = int(self.next_k.min())
        if oldest > self._oldest:
            for k in [k for k in self._noise if k < oldest]:
                del self._noise[k]
                del self._onsets[k]
            self._oldest = oldest

    def step(self, idx: IntArray) -> Step:
        """The next reading of each sensor in ``idx`` (distinct indices)."""
        idx = np.asarray(idx, dtype=np.int64)
        k = self.next_k[idx]
        count = idx.size
        z = np.empty(count)
        onset_kind = np.zeros(count, np.int8)
        onset_readings = np.zeros(count, np.int64)
        onset_mag = np.zeros(count)
        k_lo, k_hi = (int(k.min()), int(k.max())) if count else (0, -1)
        for kr in range(k_lo, k_hi + 1):
            m = k == kr if k_lo != k_hi else slice(None)
            rz, onsets = self._round(kr)
            sel = idx[m]
            z[m] = rz[sel]
            if onsets is not None:
                onset_kind[m] = onsets.kind[sel]
                onset_readings[m] = onsets.readings[sel]
                onset_mag[m] = onsets.magnitude[sel]
        t = self.phase[idx] + k * self.interval
        clean = self.signals.clean(idx, t, z)
        applied = self.faults.apply(
            idx, k, clean, z, self.signals.noise[idx], (onset_kind, onset_readings, onset_mag)
        )
        self.next_k[idx] += 1
        self._forget_old_rounds()
        return Step(
            idx, k, t, applied.values, applied.sent, applied.kinds, applied.started, applied.ended
        )

    def skip(self, idx: IntArray, k: IntArray) -> int:
        """Move sensors ``idx`` forward to reading ``k`` without producing the readings in
        between (when the scheduler fell too far behind). Returns how many were skipped."""
        k = np.maximum(k, self.next_k[idx])
        skipped = int((k - self.next_k[idx]).sum())
        self.next_k[idx] = k
        self._forget_old_rounds()
        return skipped

    def active_faults(self) -> list[FaultEvent]:
        """Faults in progress (``end_k`` None)."""
        return self.faults.active()

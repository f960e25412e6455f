"""Injected faults: kinds, random onsets, forced injections and the per-sensor fault state.

Seven kinds, each with its own rate (per sensor per hour, :class:`~mqtt_anomaly.config.FaultRates`):

============  ===================================================  ======================
kind          effect on the readings                               random length
============  ===================================================  ======================
spike         one reading of 98.2 °C (the overheating classic)     one reading
level_shift   the level jumps by ±2–6 °C                           60–600 s
drift         the value runs away at ±0.5–2 °C per minute          120–900 s
stuck         the same value, repeated exactly                     30–300 s
noise_burst   noise 5–15 times stronger                            10–60 s
dropout       silence: no readings, the connection stays up        10–120 s
crash         the connection drops without DISCONNECT (the broker  5–60 s, then the sensor
              publishes the Last Will); silence until it returns   reconnects
============  ===================================================  ======================

A sensor has at most one fault at a time: an onset that falls during another fault is skipped.
A forced injection (``--inject``) replaces whatever fault is active. Forced faults have fixed
parameters, so demos are predictable: level_shift +5 °C for 60 s, drift +3 °C/min for 120 s,
stuck 60 s, noise_burst x10 for 30 s, dropout 30 s, crash 15 s (``+DURATION`` overrides).

>>> parse_injection("spike@5")
Injection(kind=<FaultKind.SPIKE: 1>, at=5.0, duration=None, sensor=None)
>>> parse_injection("level-shift@10+30:SENSOR-03").sensor
'SENSOR-03'
>>> parse_injection("crash@2.5:4").sensor
4
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from ..config import FaultRates
from ..errors import ConfigError
from .signals import FloatArray, IntArray

Int8Array = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]

SPIKE_VALUE = 98.2
NO_FAULTS = FaultRates(spike=0, level_shift=0, drift=0, stuck=0, noise_burst=0, dropout=0, crash=0)


class FaultKind(IntEnum):
    """A kind of injected fault; ``str(kind)`` is its name in labels and settings."""

    SPIKE = 1
    LEVEL_SHIFT = 2
    DRIFT = 3
    STUCK = 4
    NOISE_BURST = 5
    DROPOUT = 6
    CRASH = 7

    def __str__(self) -> str:
        return self.name.lower()

    @property
    def silent(self) -> bool:
        """True for the kinds during which the sensor sends nothing."""
        return self in (FaultKind.DROPOUT, FaultKind.CRASH)

    @classmethod
    def parse(cls, text: str) -> FaultKind:
        """``"level-shift"``, ``"level_shift"`` or ``"LEVEL_SHIFT"`` → LEVEL_SHIFT."""
        try:
            return cls[text.strip().upper().replace("-", "_")]
        except KeyError as exc:
            names = ", ".join(str(k) for k in cls)
            raise ConfigError(f"unknown fault kind {text!r} (one of: {names})") from exc


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """How faults of one kind are drawn (random) or set (forced)."""

    duration: tuple[float, float]  # s, random length
    magnitude: tuple[float, float]  # random size (°C, °C/s or a noise factor)
    signed: bool  # random sign for the size
    forced_duration: float  # s, length of a forced fault without "+DURATION"
    forced_magnitude: float


SPECS: dict[FaultKind, FaultSpec] = {
    FaultKind.SPIKE: FaultSpec((0.0, 0.0), (SPIKE_VALUE, SPIKE_VALUE), False, 0.0, SPIKE_VALUE),
    FaultKind.LEVEL_SHIFT: FaultSpec((60.0, 600.0), (2.0, 6.0), True, 60.0, 5.0),
    FaultKind.DRIFT: FaultSpec((120.0, 900.0), (0.5 / 60, 2.0 / 60), True, 120.0, 3.0 / 60),
    FaultKind.STUCK: FaultSpec((30.0, 300.0), (0.0, 0.0), False, 60.0, 0.0),
    FaultKind.NOISE_BURST: FaultSpec((10.0, 60.0), (5.0, 15.0), False, 30.0, 10.0),
    FaultKind.DROPOUT: FaultSpec((10.0, 120.0), (0.0, 0.0), False, 30.0, 0.0),
    FaultKind.CRASH: FaultSpec((5.0, 60.0), (0.0, 0.0), False, 15.0, 0.0),
}


def readings_for(kind: FaultKind, duration: float, interval: float) -> int:
    """How many readings a fault of ``duration`` seconds covers (a spike: one)."""
    if kind is FaultKind.SPIKE:
        return 1
    return max(1, round(duration / interval))


# ---- forced injections -------------------------------------------------------------------
INJECT_SYNTAX = "KIND@SECONDS[+DURATION][:SENSOR]"
_INJECT_RE = re.compile(
    r"^(?P<kind>[A-Za-z_-]+)@(?P<at>\d+(?:\.\d*)?)(?:\+(?P<dur>\d+(?:\.\d*)?))?(?::(?P<who>.+))?$"
)


def split_injection(
    text: str, expected: str, noun: str
) -> tuple[str, float, float | None, str | int | None]:
    """``NAME@SECONDS[+DURATION][:WHO]`` split into its parts, checked: ``WHO`` is an id or a
    1-based number of one of the ``noun`` (sensors, assets); ``expected`` is the syntax shown
    in the one-line error."""
    m = _INJECT_RE.match(text.strip())
    if m is None:
        raise ConfigError(f"--inject {text!r}: expected {expected}")
    duration = float(m["dur"]) if m["dur"] is not None else None
    if duration is not None and duration <= 0:
        raise ConfigError(f"--inject {text!r}: the duration must be positive")
    who: str | int | None = m["who"]
    if isinstance(who, str) and who.isdigit():
        who = int(who)
        if who < 1:
            raise ConfigError(f"--inject {text!r}: {noun} are numbered from 1")
    return m["kind"], float(m["at"]), duration, who


@dataclass(frozen=True, slots=True)
class Injection:
    """A fault forced at a given time: ``at`` seconds after the run starts.

    ``sensor`` is a sensor id, a 1-based sensor number, or None for the first sensor;
    ``duration`` None means the kind's default (see the module docstring).
    """

    kind: FaultKind
    at: float
    duration: float | None = None
    sensor: str | int | None = None


def parse_injection(text: str) -> Injection:
    """Parse ``KIND@SECONDS[+DURATION][:SENSOR]``, e.g. ``spike@5`` or ``stuck@10+30:3``."""
    expected = f"{INJECT_SYNTAX}, e.g. spike@5 or drift@10+60:SENSOR-02"
    kind, at, duration, sensor = split_injection(text, expected, "sensors")
    return Injection(FaultKind.parse(kind), at, duration, sensor)


# ---- random onsets -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FaultRound:
    """Fault onsets drawn for reading ``k`` of every sensor (kind 0 = none)."""

    kind: Int8Array
    readings: IntArray
    magnitude: FloatArray


def onset_probabilities(rates: FaultRates, interval: float) -> list[tuple[FaultKind, float]]:
    """Per-reading onset probability of each kind (rate per hour × interval)."""
    return [(kind, getattr(rates, str(kind)) * interval / 3600.0) for kind in FaultKind]


def draw_round(
    rng: np.random.Generator,
    n: int,
    probabilities: list[tuple[FaultKind, float]],
    interval: float,
) -> FaultRound | None:
    """Random onsets for one reading of ``n`` sensors, or None when there are none."""
    out: FaultRound | None = None
    for kind, p in probabilities:
        if p <= 0:
            continue
        count = int(rng.poisson(n * p))
        if count == 0:
            continue
        spec = SPECS[kind]
        who = rng.integers(0, n, count)
        seconds = rng.uniform(*spec.duration, count)
        size = rng.uniform(*spec.magnitude, count)
        if spec.signed:
            size = np.where(rng.random(count) < 0.5, -size, size)
        if out is None:
            out = FaultRound(np.zeros(n, np.int8), np.zeros(n, np.int64), np.zeros(n, np.float64))
        free = out.kind[who] == 0
        who, seconds, size = who[free], seconds[free], size[free]
        out.kind[who] = kind
        out.readings[who] = [readings_for(kind, s, interval) for s in seconds.tolist()]
        out.magnitude[who] = size
    return out


# ---- state ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FaultEvent:
    """A fault starting (``end_k`` None) or ending, in reading indices of one sensor.

    ``start_k``/``end_k`` are the first and last affected readings (for a silent kind: the
    first and last reading not sent).
    """

    sensor: int
    kind: FaultKind
    start_k: int
    end_k: int | None
    readings: int
    magnitude: float


@dataclass(frozen=True, slots=True)
class Applied:
    """What the faults did to one batch of readings."""

    values: FloatArray
    sent: BoolArray
    kinds: Int8Array
    started: list[FaultEvent]
    ended: list[FaultEvent]


_NO_FORCE = np.iinfo(np.int64).max


class FaultEngine:
    """The fault state of every sensor; turns healthy values into faulty ones."""

    def __init__(self, n: int, interval: float) -> None:
        self.n = n
        self.interval = interval
        self.kind: Int8Array = np.zeros(n, np.int8)
        self.left: IntArray = np.zeros(n, np.int64)
        self.magnitude: FloatArray = np.zeros(n, np.float64)
        self.start_k: IntArray = np.zeros(n, np.int64)
        self.planned: IntArray = np.zeros(n, np.int64)
        self.last_value: FloatArray = np.full(n, np.nan)
        self._forced: dict[int, list[tuple[int, FaultKind, int, float]]] = {}
        self._forced_k: IntArray = np.full(n, _NO_FORCE, np.int64)

    def force(self, sensor: int, kind: FaultKind, k: int, readings: int, magnitude: float) -> None:
        """Start ``kind`` on ``sensor`` at its reading ``k`` (or its next one, if past)."""
        queue = self._forced.setdefault(sensor, [])
        queue.append((k, kind, readings, magnitude))
        queue.sort(key=lambda f: f[0])
        self._forced_k[sensor] = queue[0][0]

    def _pop_forced(self, sensor: int) -> tuple[int, FaultKind, int, float]:
        queue = self._forced[sensor]
        first = queue.pop(0)
        if queue:
            self._forced_k[sensor] = queue[0][0]
        else:
            del self._forced[sensor]
            self._forced_k[sensor] = _NO_FORCE
        return first

    def _event(self, sensor: int, end_k: int | None) -> FaultEvent:
        return FaultEvent(
            sensor,
            FaultKind(int(self.kind[sensor])),
            int(self.start_k[sensor]),
            end_k,
            int(self.planned[sensor]),
            float(self.magnitude[sensor]),
        )

    def _end(self, sensor: int, end_k: int) -> FaultEvent:
        ev = self._event(sensor, end_k)
        self.kind[sensor] = 0
        self.left[sensor] = 0
        return ev

    def active(self) -> list[FaultEvent]:
        """The faults in progress (``end_k`` None)."""
        return [self._event(i, None) for i in np.flatnonzero(self.kind).tolist()]

    def apply(
        self,
        idx: IntArray,
        k: IntArray,
        clean: FloatArray,
        z: FloatArray,
        sigma: FloatArray,
        onsets: tuple[Int8Array, IntArray, FloatArray],
    ) -> Applied:
        """Apply faults to reading ``k[j]`` of sensor ``idx[j]`` (healthy value ``clean[j]``).

        ``onsets`` are the random onsets (kind, readings, magnitude) for these readings;
        ``z`` and ``sigma`` are the noise draws and levels, for noise bursts.
        """
        started: list[FaultEvent] = []
        ended: list[FaultEvent] = []
        if (self._forced_k[idx] <= k).any():
            onsets = self._take_forced(idx, k, onsets, ended)
        self._start(idx, k, clean, onsets, started)
        kinds = self.kind[idx]
        values = clean.copy()
        if kinds.any():
            mag = self.magnitude[idx]
            m = kinds == FaultKind.SPIKE
            values[m] = mag[m]
            m = kinds == FaultKind.LEVEL_SHIFT
            values[m] += mag[m]
            m = kinds == FaultKind.DRIFT
            values[m] += mag[m] * ((k[m] - self.start_k[idx[m]] + 1) * self.interval)
            m = kinds == FaultKind.STUCK
            values[m] = mag[m]
            m = kinds == FaultKind.NOISE_BURST
            values[m] += sigma[m] * (mag[m] - 1.0) * z[m]
        values = np.round(values, 2)
        sent = (kinds != FaultKind.DROPOUT) & (kinds != FaultKind.CRASH)
        self.last_value[idx[sent]] = values[sent]
        active = np.flatnonzero(kinds)
        if active.size:
            who = idx[active]
            self.left[who] -= 1
            for j in active[self.left[who] <= 0].tolist():
                ended.append(self._end(int(idx[j]), int(k[j])))
        return Applied(values, sent, kinds, started, ended)

    def _take_forced(
        self,
        idx: IntArray,
        k: IntArray,
        onsets: tuple[Int8Array, IntArray, FloatArray],
        ended: list[FaultEvent],
    ) -> tuple[Int8Array, IntArray, FloatArray]:
        """Forced faults due now replace the random onsets and end any active fault."""
        new_kind, new_readings, new_mag = onsets[0].copy(), onsets[1].copy(), onsets[2].copy()
        for j in np.flatnonzero(self._forced_k[idx] <= k).tolist():
            sensor = int(idx[j])
            _, kind, readings, size = self._pop_forced(sensor)
            if self.kind[sensor]:
                ended.append(self._end(sensor, int(k[j]) - 1))
            new_kind[j], new_readings[j], new_mag[j] = kind, readings, size
        return new_kind, new_readings, new_mag

    def _start(
        self,
        idx: IntArray,
        k: IntArray,
        clean: FloatArray,
        onsets: tuple[Int8Array, IntArray, FloatArray],
        started: list[FaultEvent],
    ) -> None:
        """Start the onsets that fall on sensors without an active fault."""
        new_kind, new_readings, new_mag = onsets
        onset = np.flatnonzero((new_kind != 0) & (self.kind[idx] == 0))
        if onset.size == 0:
            return
        who = idx[onset]
        self.kind[who] = new_kind[onset]
        self.left[who] = new_readings[onset]
        self.planned[who] = new_readings[onset]
        self.magnitude[who] = new_mag[onset]
        self.start_k[who] = k[onset]
        stuck = new_kind[onset] == FaultKind.STUCK
        if stuck.any():  # stuck at the last value sent (or this one, on a first reading)
            last = self.last_value[who[stuck]]
            fallback = np.round(clean[onset[stuck]], 2)
            self.magnitude[who[stuck]] = np.where(np.isnan(last), fallback, last)
        started.extend(self._event(sensor, None) for sensor in who.tolist())


def forced_readings(kind: FaultKind, duration: float | None, interval: float) -> int:
    """Length in readings of a forced fault (``duration`` None: the kind's default)."""
    seconds = SPECS[kind].forced_duration if duration is None else duration
    return readings_for(kind, seconds, interval)


def first_reading_at(phase: float, at: float, interval: float) -> int:
    """Index of a sensor's first reading due at or after run time ``at``."""
    return max(0, math.ceil((at - phase) / interval - 1e-9))

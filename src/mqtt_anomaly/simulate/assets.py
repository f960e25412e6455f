"""Simulated machines (assets) without any I/O: correlated sensors and multivariate faults.

``n`` assets of one :mod:`machine kind <mqtt_anomaly.simulate.machines>` take one reading of
all their sensors every ``interval`` seconds; asset ``i`` reads at ``phase[i] + k * interval``
(phases spread the assets over one interval). :meth:`AssetModel.step` produces reading ``k``
of every asset; everything is drawn from the seed, one generator per reading, so a run is
reproducible whatever the timing.

**Hidden causes.** Each asset's speed follows a set-point, ramped at 1 % of rated speed per
second. The set-point is changed now and then (on average every ``SETPOINT_DWELL`` s) to a
value drawn in the kind's speed range; during the first ``warmup`` seconds it is taken to the
bottom, then the top of the range, then a random value (a commissioning run), so the normal
range of every sensor is shown before any fault. The load and the tank level drift slowly
(Ornstein-Uhlenbeck, bounded), the ambient temperature follows the plant's daily cycle plus a
slow drift and a fixed offset per asset, the supply voltage drifts plant-wide.

**Faults.** After ``warmup`` seconds, an asset without a fault starts one with the total rate
of its kinds (faults per asset per hour, ``rates``), the kind drawn in proportion to its rate;
never within ``FAULT_GAP`` s after its previous fault, so faults stay separate events. A
physical fault (every built-in one) sets its defects' severities in the causes the kind's
physics reads (:attr:`Causes.defects`). An effect (a fault written as sensor effects) moves a
sensor's clean value a fraction of the way to the edge of the range the asset has shown in
normal operation so far (its running min/max of clean values), noise is added as on a normal
reading, and a value that would leave the running range of normal (noisy) readings is
reflected back into it.

>>> m = AssetModel("pump", 2, interval=1.0, seed=3, rates={})
>>> steps = [m.step() for _ in range(3)]
>>> steps[2].values.shape, steps[2].k, m.ids
((2, 8), 2, ['PUMP-01', 'PUMP-02'])
>>> bool(np.array_equal(AssetModel("pump", 2, interval=1.0, seed=3, rates={}).step().values,
...                     steps[0].values))
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .faults import BoolArray, split_injection
from .machines import KINDS, Causes, FaultShape, MachineKind
from .signals import DAY, FloatArray, IntArray, rng_for

ASSET_PARAMS_STREAM = 10
ASSET_ROUND_STREAM = 11

SETPOINT_DWELL = 240.0  # s, mean time between two set-point changes
RAMP_RATE = 0.01  # per unit of rated speed per second
LOAD_TAU = 900.0  # s, the load's drift: time constant (its spread: the kind's load_sd)
LEVEL_TAU = 1200.0  # s, the tank level's (spread: level_sd)
SUPPLY_TAU, SUPPLY_SD = 600.0, 3.0  # V
AMBIENT_TAU, AMBIENT_SD = 1800.0, 0.8  # °C
FAULT_GAP = 120.0  # s, no onset this soon after an asset's previous fault
DEFAULT_WARMUP = 600.0  # s without random faults at the start
DEFAULT_RATES = {"pump": 0.5, "compressor": 0.5}  # per kind of fault, per asset per hour
CHUNK = 256  # readings whose random numbers are drawn at once
_FIELDS = 5  # uniform draws per asset per reading for the causes and fault onsets


def kind_of(name: str) -> type[MachineKind]:
    """The machine kind called ``name`` (a one-line error naming the choices otherwise)."""
    kind = KINDS.get(name.strip().lower())
    if kind is None:
        raise ConfigError(f"unknown asset kind {name!r} (one of: {', '.join(sorted(KINDS))})")
    return kind


def default_rates(kind: str) -> dict[str, float]:
    """Every fault of ``kind`` at the default rate (faults per asset per hour)."""
    cls = kind_of(kind)
    return {f.name: DEFAULT_RATES[cls.name] for f in cls.faults}


def check_rates(kind: str, rates: Mapping[str, float], *, key: str) -> dict[str, float]:
    """``rates`` checked against the faults of ``kind``: names known, values >= 0."""
    cls = kind_of(kind)
    names = [f.name for f in cls.faults]
    out: dict[str, float] = {}
    for name, rate in rates.items():
        canon = name.strip().lower().replace("-", "_")
        if canon not in names:
            raise ConfigError(
                f"{key}: unknown {cls.name} fault {name!r} (one of: {', '.join(names)})"
            )
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate >= 0):
            raise ConfigError(f"{key}.{canon}: must be a number >= 0, not {rate!r}")
        out[canon] = float(rate)
    return out


@dataclass(frozen=True, slots=True)
class AssetInjection:
    """A fault forced on an asset ``at`` seconds after the start (``asset``: an id, a number
    from 1, or None for the first asset; ``duration`` None: the fault's default)."""

    fault: str
    at: float
    duration: float | None = None
    asset: str | int | None = None


def parse_asset_injection(text: str, kind: str) -> AssetInjection:
    """``FAULT@SECONDS[+DURATION][:ASSET]``, e.g. ``cavitation@900+300:2``."""
    expected = "FAULT@SECONDS[+DURATION][:ASSET], e.g. cavitation@900+300:2"
    fault, at, duration, who = split_injection(text, expected, "assets")
    (name,) = check_rates(kind, {fault: 0.0}, key=f"--inject {text!r}")
    return AssetInjection(name, at, duration, who)


@dataclass(frozen=True, slots=True)
class AssetFault:
    """A fault of one asset, in reading indices (``end_k`` None while it lasts)."""

    asset: int
    kind: str
    sensors: tuple[str, ...]
    start_k: int
    end_k: int | None


@dataclass(frozen=True, slots=True)
class AssetStep:
    """Reading ``k`` of every asset: values ``(n, k_sensors)`` at run times ``t``.

    ``fault[i]`` is the index of asset ``i``'s active fault in its kind's ``faults`` (-1:
    none); ``started`` and ``ended`` are the faults that began or ended at this reading.
    """

    k: int
    t: FloatArray
    values: FloatArray
    fault: IntArray
    started: list[AssetFault]
    ended: list[AssetFault]


def _ou(x: FloatArray, mean: float, tau: float, sd: float, dt: float, z: FloatArray) -> FloatArray:
    """One step of an Ornstein-Uhlenbeck drift around ``mean``, bounded to mean ± 3 sd."""
    a = math.exp(-dt / tau)
    out = mean + (x - mean) * a + sd * math.sqrt(1.0 - a * a) * z
    return np.minimum(np.maximum(out, mean - 3 * sd), mean + 3 * sd)


def _ou1(x: float, mean: float, tau: float, sd: float, dt: float, z: float) -> float:
    """:func:`_ou` for one plant-wide value."""
    a = math.exp(-dt / tau)
    out = mean + (x - mean) * a + sd * math.sqrt(1.0 - a * a) * float(z)
    return min(max(out, mean - 3 * sd), mean + 3 * sd)


class AssetModel:
    """``n`` assets of ``kind`` reading every ``interval`` seconds, with random faults at
    ``rates`` (fault name → per asset per hour; None: :func:`default_rates`)."""

    def __init__(
        self,
        kind: str,
        n: int,
        *,
        interval: float,
        seed: int,
        rates: Mapping[str, float] | None = None,
        warmup: float = DEFAULT_WARMUP,
        id_format: str | None = None,
    ) -> None:
        cls = kind_of(kind)
        self.kind = cls(n)
        self.n = n
        self.interval = interval
        self.seed = seed
        self.warmup = warmup
        fmt = id_format or f"{cls.prefix}-{{n:02d}}"
        self.ids = [fmt.format(n=i + 1) for i in range(n)]
        self.sensor_names = [s.name for s in self.kind.sensors]
        self.phase: FloatArray = np.arange(n, dtype=np.float64) * (interval / n)
        chosen = check_rates(kind, default_rates(kind) if rates is None else rates, key="rates")
        faults = self.kind.faults
        self._rates = np.array([chosen.get(f.name, 0.0) for f in faults])
        total = float(self._rates.sum())
        self._onset_p = total * interval / 3600.0
        self._cum = np.cumsum(self._rates) / total if total > 0 else np.ones(len(faults))
        # fixed per asset: ambient offset, speed range, where in the day the run starts
        rng = rng_for(seed, ASSET_PARAMS_STREAM)
        self.ambient_offset: FloatArray = rng.uniform(-2.0, 2.0, n)
        self.day_offset = float(rng.uniform(0.0, DAY))
        lo, hi = self.kind.speed_range
        self._speed_lo, self._speed_hi = lo, hi
        self.k = 0
        self.setpoint: FloatArray = np.full(n, lo)
        self.speed: FloatArray = np.full(n, lo)
        self.load: FloatArray = np.ones(n)
        self.level: FloatArray = np.ones(n)
        self.ambient_drift = 0.0
        self.supply = 400.0
        kk = self.kind.k
        self._noise = np.array([s.noise for s in self.kind.sensors])
        self._decimals = [s.decimals for s in self.kind.sensors]
        # running ranges of normal readings: clean and noisy, per asset and sensor
        self.clean_lo: FloatArray = np.full((n, kk), np.inf)
        self.clean_hi: FloatArray = np.full((n, kk), -np.inf)
        self.seen_lo: FloatArray = np.full((n, kk), np.inf)
        self.seen_hi: FloatArray = np.full((n, kk), -np.inf)
        # active faults: index into kind.faults (-1 none), reading span, effect sizes
        self.fault: IntArray = np.full(n, -1, np.int64)
        self.start_k: IntArray = np.zeros(n, np.int64)
        self.end_k: IntArray = np.zeros(n, np.int64)
        self.quiet_until: IntArray = np.zeros(n, np.int64)
        self.direction: FloatArray = np.zeros((n, kk))
        self.fraction: FloatArray = np.zeros((n, kk))
        self.jitter: FloatArray = np.zeros((n, kk))
        self._forced: list[tuple[int, int, int, int]] = []  # (k, asset, fault, readings)
        self._directions = [self._effect_table(f) for f in faults]
        self._has_effects = np.array([bool(f.effects) for f in faults])
        self._rng = rng_for(seed, ASSET_ROUND_STREAM)
        self._chunk: tuple[FloatArray, ...] | None = None
        self._scale = 10.0 ** np.array(self._decimals, dtype=np.float64)

    # ---- public -----------------------------------------------------------------------
    @property
    def fault_names(self) -> list[str]:
        return [f.name for f in self.kind.faults]

    def time_of(self, asset: int, k: int) -> float:
        """Run time (s) of reading ``k`` of ``asset``."""
        return float(self.phase[asset] + k * self.interval)

    def asset_index(self, who: str | int | None) -> int:
        """An asset by id, by number from 1, or None (the first)."""
        if who is None:
            return 0
        if isinstance(who, int):
            if who > self.n:
                raise ConfigError(f"--inject: no asset number {who} (there are {self.n})")
            return who - 1
        if who not in self.ids:
            raise ConfigError(f"--inject: no asset {who!r} ({self.ids[0]} … {self.ids[-1]})")
        return self.ids.index(who)

    def inject(self, fault: str, *, asset: int, at: float, duration: float | None = None) -> int:
        """Force ``fault`` on ``asset`` from its first reading at or after run time ``at``;
        returns that reading's index. It replaces whatever fault is active then."""
        j = self.fault_names.index(fault)
        shape = self.kind.faults[j]
        # from the second reading on: a fault needs a normal reading to measure itself against
        k = max(self.k, 1, math.ceil((at - float(self.phase[asset])) / self.interval - 1e-9))
        seconds = shape.forced_duration if duration is None else duration
        readings = max(1, round(seconds / self.interval))
        self._forced.append((k, asset, j, readings))
        self._forced.sort()
        return k

    def active_faults(self) -> list[AssetFault]:
        """Faults in progress (``end_k`` None)."""
        return [self._event(int(i), None) for i in np.flatnonzero(self.fault >= 0)]

    def step(self) -> AssetStep:
        """Reading ``k`` of every asset (then ``k`` moves on)."""
        k, dt = self.k, self.interval
        u, z_causes, z_plant, z_noise, u_jitter, u_size = self._draws(k)
        t = self.phase + k * dt
        causes = self._causes(k, t, u, z_causes, z_plant)
        ended = self._end_faults(k)
        started = self._start_faults(k, u, u_size)
        faulty = self.fault >= 0
        causes.defects = self._defects(k, u_jitter)
        clean = self.kind.clean(causes, dt)
        values = self._apply(k, clean, z_noise, u_jitter, faulty)
        self.k += 1
        return AssetStep(k, t, values, self.fault.copy(), started, ended)

    def stop(self) -> list[AssetFault]:
        """End the faults in progress at the last reading produced; returns them."""
        out = []
        for i in np.flatnonzero(self.fault >= 0).tolist():
            out.append(self._event(i, max(int(self.start_k[i]), self.k - 1)))
            self.fault[i] = -1
        return out

    def _draws(self, k: int) -> tuple[FloatArray, ...]:
        """Reading ``k``'s random numbers: one generator for the run, drawn ``CHUNK`` readings
        at a time (the same numbers whatever the batching: every reading draws all assets)."""
        c = k % CHUNK
        if c == 0 or self._chunk is None:
            n, kk = self.n, self.kind.k
            rng = self._rng
            self._chunk = (
                rng.random((CHUNK, n, _FIELDS)),
                rng.standard_normal((CHUNK, n, 2)),
                rng.standard_normal((CHUNK, 2)),
                rng.standard_normal((CHUNK, n, kk)),
                rng.random((CHUNK, n, kk)),
                rng.random((CHUNK, n, kk)),
            )
        return tuple(a[c] for a in self._chunk)

    # ---- causes -------------------------------------------------------------------------
    def _causes(
        self, k: int, t: FloatArray, u: FloatArray, z: FloatArray, z_plant: FloatArray
    ) -> Causes:
        dt, lo, hi = self.interval, self._speed_lo, self._speed_hi
        run_time = k * dt
        third = self.warmup / 3.0
        if run_time < 2 * third:  # the commissioning run: the bottom, then the top
            self.setpoint[:] = lo if run_time < third else hi
        else:  # then a random value, changed now and then
            change = (u[:, 0] < dt / SETPOINT_DWELL) | (run_time - dt < 2 * third)
            self.setpoint = np.where(change, lo + (hi - lo) * u[:, 1], self.setpoint)
        step = RAMP_RATE * dt
        self.speed = self.speed + np.clip(self.setpoint - self.speed, -step, step)
        self.load = _ou(self.load, 1.0, LOAD_TAU, self.kind.load_sd, dt, z[:, 0])
        self.level = _ou(self.level, 1.0, LEVEL_TAU, self.kind.level_sd, dt, z[:, 1])
        self.ambient_drift = _ou1(self.ambient_drift, 0.0, AMBIENT_TAU, AMBIENT_SD, dt, z_plant[0])
        self.supply = _ou1(self.supply, 400.0, SUPPLY_TAU, SUPPLY_SD, dt, z_plant[1])
        angle = (t + self.day_offset) * (2.0 * math.pi / DAY)
        ambient = 22.0 + 4.0 * np.sin(angle) + self.ambient_drift + self.ambient_offset
        return Causes(self.speed, self.load, ambient, np.full(self.n, self.supply), self.level)

    # ---- faults -------------------------------------------------------------------------
    def _effect_table(self, shape: FaultShape) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Per sensor: direction, fraction range (lo, hi) and jitter of ``shape``."""
        kk = self.kind.k
        direction, lo, hi, jitter = np.zeros(kk), np.zeros(kk), np.zeros(kk), np.zeros(kk)
        for e in shape.effects:
            j = self.kind.index(e.sensor)
            direction[j], lo[j], hi[j], jitter[j] = e.direction, *e.fraction, e.jitter
        return direction, np.stack((lo, hi)), jitter

    def _begin(self, i: int, j: int, k: int, readings: int, draw: FloatArray) -> None:
        direction, span, jitter = self._directions[j]
        self.fault[i] = j
        self.start_k[i] = k
        self.end_k[i] = k + readings - 1
        self.direction[i] = direction
        self.fraction[i] = span[0] + (span[1] - span[0]) * draw
        self.jitter[i] = jitter
        # a physical fault: its defects' full severities, drawn in their ranges
        for d, defect in enumerate(self.kind.faults[j].defects):
            lo, hi = defect.severity
            self.fraction[i, d] = lo + (hi - lo) * draw[d]
            self.jitter[i, d] = defect.jitter

    def _progress(self, k: int, rows: IntArray) -> FloatArray:
        """How far the faults of assets ``rows`` have set in (0..1) at reading ``k``."""
        faults = self.kind.faults
        progress = np.empty(len(rows))
        for r, i in enumerate(rows.tolist()):
            shape = faults[int(self.fault[i])]
            done = (k - self.start_k[i] + 1) * self.interval
            if shape.profile == "creep":
                total = (self.end_k[i] - self.start_k[i] + 1) * self.interval
                progress[r] = min(1.0, done / total)
            else:
                progress[r] = min(1.0, done / max(shape.ramp, self.interval))
        return progress

    def _defects(self, k: int, u: FloatArray) -> dict[str, FloatArray]:
        """The severity of every defect of the active physical faults at reading ``k`` (its
        full severity times the progress, the jittered part redrawn from ``u``)."""
        out: dict[str, FloatArray] = {}
        rows = np.flatnonzero(self.fault >= 0)
        if not len(rows):
            return out
        progress = self._progress(k, rows)
        for r, i in enumerate(rows.tolist()):
            for d, defect in enumerate(self.kind.faults[int(self.fault[i])].defects):
                jit = self.jitter[i, d]
                size = self.fraction[i, d] * (1.0 - jit + jit * 2.0 * abs(float(u[i, d]) - 0.5))
                out.setdefault(defect.name, np.zeros(self.n))[i] = size * progress[r]
        return out

    def _event(self, i: int, end_k: int | None) -> AssetFault:
        shape = self.kind.faults[int(self.fault[i])]
        return AssetFault(i, shape.name, shape.sensors(), int(self.start_k[i]), end_k)

    def _end_faults(self, k: int) -> list[AssetFault]:
        ended = []
        due = np.flatnonzero((self.fault >= 0) & (self.end_k < k))
        forced_now = {a for fk, a, _, _ in self._forced if fk <= k}
        for i in sorted(set(due.tolist()) | {a for a in forced_now if self.fault[a] >= 0}):
            end = int(self.end_k[i]) if self.end_k[i] < k else k - 1
            ended.append(self._event(i, max(end, int(self.start_k[i]))))
            self.fault[i] = -1
            self.quiet_until[i] = k + math.ceil(FAULT_GAP / self.interval)
        return ended

    def _start_faults(self, k: int, u: FloatArray, size: FloatArray) -> list[AssetFault]:
        started = []
        while self._forced and self._forced[0][0] <= k:
            _, i, j, readings = self._forced.pop(0)
            self._begin(i, j, k, readings, size[i])
            started.append(self._event(i, None))
        if self._onset_p > 0 and k * self.interval >= self.warmup:
            free = (self.fault < 0) & (self.quiet_until <= k) & (u[:, 2] < self._onset_p)
            for i in np.flatnonzero(free).tolist():
                j = int(np.searchsorted(self._cum, u[i, 3], side="right"))
                j = min(j, len(self.kind.faults) - 1)
                shape = self.kind.faults[j]
                lo, hi = shape.duration
                readings = max(1, round((lo + (hi - lo) * u[i, 4]) / self.interval))
                self._begin(i, j, k, readings, size[i])
                started.append(self._event(i, None))
        return started

    def _apply(
        self, k: int, clean: FloatArray, z: FloatArray, u: FloatArray, faulty: BoolArray
    ) -> FloatArray:
        noisy = clean + self._noise * z
        normal = ~faulty
        if normal.any():
            self.clean_lo[normal] = np.minimum(self.clean_lo[normal], clean[normal])
            self.clean_hi[normal] = np.maximum(self.clean_hi[normal], clean[normal])
        out = noisy
        moved = faulty & self._has_effects[np.maximum(self.fault, 0)]
        if moved.any():
            out = noisy.copy()
            rows = np.flatnonzero(moved)
            out[rows] = self._faulted(k, rows, clean[rows], noisy[rows], u[rows])
        values = np.round(out * self._scale) / self._scale
        if normal.any():
            self.seen_lo[normal] = np.minimum(self.seen_lo[normal], values[normal])
            self.seen_hi[normal] = np.maximum(self.seen_hi[normal], values[normal])
        return values

    def _faulted(
        self, k: int, rows: IntArray, clean: FloatArray, noisy: FloatArray, u: FloatArray
    ) -> FloatArray:
        """Fault readings of assets ``rows``: effects on the clean values, the same noise as
        a normal reading, reflected into the normal range seen so far."""
        progress = self._progress(k, rows)
        direction, fraction, jitter = self.direction[rows], self.fraction[rows], self.jitter[rows]
        # both-ways effects take a random sign on every reading
        sign = np.where(direction == 0, np.where(u < 0.5, -1.0, 1.0), direction)
        amount = fraction * progress[:, None] * (1.0 - jitter + jitter * (2.0 * np.abs(u - 0.5)))
        lo_c, hi_c = self.clean_lo[rows], self.clean_hi[rows]
        room = np.where(sign > 0, hi_c - clean, clean - lo_c)
        shift = sign * amount * np.maximum(room, 0.0)
        out = noisy + shift
        lo, hi = self.seen_lo[rows], self.seen_hi[rows]
        out = np.where(out > hi, 2.0 * hi - out, out)
        out = np.where(out < lo, 2.0 * lo - out, out)
        return np.clip(out, lo, hi)

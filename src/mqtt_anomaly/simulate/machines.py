"""Machine kinds: the sensors of one asset, the physics that ties them, and its faults.

An asset's sensors are driven by shared hidden causes (:class:`Causes`): the speed the drive
runs at (following a set-point that changes now and then, ramped), the load (the system's
resistance or the plant's air demand, drifting slowly), the ambient temperature (the plant's
daily cycle plus a local offset), the supply voltage (plant-wide) and, for a pump, the suction
tank's level. Each kind turns them into its sensors' clean values with physically plausible
relations, so the sensors correlate as on a real machine:

- ``pump`` (centrifugal, variable speed): the pump curve ``H = H0 s² - a Q²`` against the
  system curve ``H = R Q²`` give flow ∝ speed and head ∝ speed² at a given resistance (the
  affinity laws), shaft power ∝ flow × head ∝ speed³; motor current follows power, the
  bearing temperature follows power with a first-order lag (3 minutes), vibration grows with
  speed², the motor terminals' voltage sags with current.
- ``compressor`` (oil-injected screw, variable speed, pressure-controlled): flow ∝ speed,
  power ∝ flow × log(pressure ratio), the discharge pressure sags a little at high demand,
  discharge and oil temperatures follow power and ambient with lags (2 and 5 minutes).

Faults (:class:`FaultShape`) are written as *effects*: per sensor a direction (+1 up, -1 down,
0 both ways at random), a fraction of the way to the edge of the range the asset has shown in
normal operation, a profile (``step``: ramped in over ``ramp`` seconds then held; ``creep``:
growing linearly over the fault) and a jitter (how much of the effect is redrawn at random on
every reading: cavitation and a loose coupling rattle, a closed valve does not). Every fault
moves several sensors at once in directions the physics does not produce at any speed, so the
relations break while each sensor stays inside its normal range
(:mod:`~mqtt_anomaly.simulate.assets` applies them).

They are made to be hard, as on a real machine: a step fault sets in over minutes (90–180 s),
a creeping one over its whole length (5–20 minutes), and no effect takes a sensor more than
half of the way to the edge of its range (mostly a tenth to a third). A univariate detector
sees a slow move inside the usual range and flags it no more often than it flags normal rows:
on ``mqtt-anomaly evaluate sim --assets 4`` the default set's alarms fall inside faults as
often as chance would place them (docs/simulator.md has the figures).

>>> sorted(KINDS)
['compressor', 'pump']
>>> [s.name for s in KINDS["pump"].sensors][:3]
['flow', 'suction_pressure', 'discharge_pressure']
>>> [f.name for f in KINDS["pump"].faults]
['cavitation', 'valve_restriction', 'bearing_wear', 'loose_coupling']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .signals import FloatArray


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One sensor of a machine kind: its topic level, unit, noise (standard deviation) and
    the decimals it reports."""

    name: str
    unit: str
    noise: float
    decimals: int


@dataclass(frozen=True, slots=True)
class Effect:
    """What a fault does to one sensor (see the module docstring)."""

    sensor: str
    direction: int  # +1 up, -1 down, 0 both ways (drawn per reading)
    fraction: tuple[float, float]  # of the way to the edge of the normal range, drawn per fault
    jitter: float = 0.0  # 0: steady; 1: the whole effect redrawn on every reading


@dataclass(frozen=True, slots=True)
class FaultShape:
    """A multivariate fault of a machine kind."""

    name: str
    effects: tuple[Effect, ...]
    duration: tuple[float, float]  # s, drawn per fault
    profile: str  # "step" or "creep"
    ramp: float = 120.0  # s, how long a step fault takes to set in
    forced_duration: float = 300.0  # s, an --inject without +DURATION

    def sensors(self) -> tuple[str, ...]:
        """The sensors the fault moves, in the order of its effects."""
        return tuple(e.sensor for e in self.effects)


@dataclass(slots=True)
class Causes:
    """The hidden causes of ``n`` assets at one reading (per asset arrays)."""

    speed: FloatArray  # per unit of the rated speed
    load: FloatArray  # around 1.0: the pump's system resistance, the compressor's air demand
    ambient: FloatArray  # °C
    supply: FloatArray  # V, the plant's supply voltage
    level: FloatArray  # around 1.0: the pump's suction tank level


class MachineKind:
    """A kind of machine: sensors, fault shapes, speed range and its physics.

    :meth:`clean` is stateful (the lagged temperatures): call it once per reading, in order.
    """

    name: str
    prefix: str
    sensors: tuple[SensorSpec, ...]
    faults: tuple[FaultShape, ...]
    speed_range: tuple[float, float] = (0.6, 1.0)

    def __init__(self, n: int) -> None:
        self.n = n
        self._lag: dict[str, FloatArray] = {}

    @property
    def k(self) -> int:
        return len(self.sensors)

    def index(self, sensor: str) -> int:
        return next(i for i, s in enumerate(self.sensors) if s.name == sensor)

    def fault(self, name: str) -> FaultShape:
        return next(f for f in self.faults if f.name == name)

    def clean(self, c: Causes, dt: float) -> FloatArray:
        """The sensors' clean values, ``(n, k)``."""
        raise NotImplementedError

    def _lagged(self, name: str, target: FloatArray, tau: float, dt: float) -> FloatArray:
        """A first-order lag of ``target`` (time constant ``tau`` s); starts settled."""
        prev = self._lag.get(name)
        if prev is None:
            out = target.copy()
        else:
            out = prev + (target - prev) * (1.0 - math.exp(-dt / tau))
        self._lag[name] = out
        return out


class Pump(MachineKind):
    """A centrifugal pump on a variable-speed drive (see the module docstring)."""

    name = "pump"
    prefix = "PUMP"
    sensors = (
        SensorSpec("flow", "m3/h", 0.6, 2),
        SensorSpec("suction_pressure", "bar", 0.004, 4),
        SensorSpec("discharge_pressure", "bar", 0.01, 4),
        SensorSpec("motor_current", "A", 0.15, 3),
        SensorSpec("vibration_de", "mm/s", 0.03, 4),
        SensorSpec("vibration_nde", "mm/s", 0.025, 4),
        SensorSpec("bearing_temperature", "C", 0.08, 3),
        SensorSpec("voltage", "V", 0.4, 2),
    )
    faults = (
        # low suction pressure: vapour bubbles collapse, head and flow drop, the pump rattles
        FaultShape(
            "cavitation",
            (
                Effect("suction_pressure", -1, (0.3, 0.45)),
                Effect("discharge_pressure", -1, (0.125, 0.225), jitter=0.5),
                Effect("flow", -1, (0.075, 0.175), jitter=0.4),
                Effect("vibration_de", +1, (0.2, 0.4), jitter=0.7),
                Effect("vibration_nde", +1, (0.15, 0.3), jitter=0.7),
                Effect("motor_current", 0, (0.05, 0.125), jitter=1.0),
            ),
            (120.0, 600.0),
            "step",
            ramp=180.0,
        ),
        # a valve partly closed downstream: less flow, more pressure, at the same speed
        FaultShape(
            "valve_restriction",
            (
                Effect("flow", -1, (0.175, 0.325)),
                Effect("discharge_pressure", +1, (0.175, 0.325)),
                Effect("motor_current", -1, (0.075, 0.15)),
            ),
            (180.0, 900.0),
            "step",
            ramp=120.0,
        ),
        # a worn bearing: vibration and temperature creep up against what the load explains
        FaultShape(
            "bearing_wear",
            (
                Effect("vibration_de", +1, (0.25, 0.425), jitter=0.2),
                Effect("vibration_nde", +1, (0.125, 0.25), jitter=0.2),
                Effect("bearing_temperature", +1, (0.225, 0.4)),
                Effect("motor_current", +1, (0.025, 0.075)),
            ),
            (300.0, 1200.0),
            "creep",
        ),
        # a loose coupling: the shaft knocks (vibration, current ripple), the pump slips a little
        FaultShape(
            "loose_coupling",
            (
                Effect("vibration_de", +1, (0.175, 0.35), jitter=0.6),
                Effect("vibration_nde", +1, (0.225, 0.4), jitter=0.6),
                Effect("motor_current", 0, (0.1, 0.2), jitter=1.0),
                Effect("flow", -1, (0.05, 0.125), jitter=0.3),
            ),
            (120.0, 600.0),
            "step",
            ramp=90.0,
        ),
    )

    Q_RATED = 120.0  # m3/h at rated speed and resistance
    HEAD_RATED = 4.0  # bar of differential pressure
    TANK = 1.6  # bar at the suction at no flow, tank at its usual level
    P_RATED = 15.0  # kW of shaft power

    def clean(self, c: Causes, dt: float) -> FloatArray:
        s, r = c.speed, c.load
        # pump curve H = H0 s² - a Q² (a = the rated resistance) against the system H = R Q²
        q_pu = s * np.sqrt(2.0 / (1.0 + r))
        head_pu = s * s * (2.0 * r / (1.0 + r))
        flow = self.Q_RATED * q_pu
        suction = self.TANK * c.level - 0.25 * q_pu * q_pu
        discharge = suction + self.HEAD_RATED * head_pu
        power = self.P_RATED * (0.08 + 0.92 * q_pu * head_pu)  # kW, friction + hydraulic
        current = 7.5 + power * 1000.0 / (math.sqrt(3.0) * c.supply * 0.86 * 0.93)
        vib_de = 0.7 + 2.2 * s * s + 0.15 * np.abs(q_pu - 1.0)
        vib_nde = 0.5 + 1.6 * s * s + 0.1 * np.abs(q_pu - 1.0)
        bearing = self._lagged("bearing", c.ambient + 12.0 + 1.6 * power, 180.0, dt)
        voltage = c.supply - 0.06 * current
        return np.column_stack(
            (flow, suction, discharge, current, vib_de, vib_nde, bearing, voltage)
        )


class Compressor(MachineKind):
    """An oil-injected screw compressor on a variable-speed drive (see the module docstring)."""

    name = "compressor"
    prefix = "COMPRESSOR"
    speed_range = (0.5, 1.0)
    sensors = (
        SensorSpec("flow", "m3/min", 0.08, 3),
        SensorSpec("discharge_pressure", "bar", 0.008, 4),
        SensorSpec("motor_current", "A", 0.3, 3),
        SensorSpec("vibration", "mm/s", 0.03, 4),
        SensorSpec("inlet_temperature", "C", 0.05, 3),
        SensorSpec("discharge_temperature", "C", 0.1, 3),
        SensorSpec("oil_temperature", "C", 0.08, 3),
        SensorSpec("voltage", "V", 0.4, 2),
    )
    faults = (
        # a clogged intake filter: less air for the same speed, a hotter discharge
        FaultShape(
            "intake_clogging",
            (
                Effect("flow", -1, (0.175, 0.3)),
                Effect("discharge_temperature", +1, (0.15, 0.3)),
                Effect("motor_current", -1, (0.05, 0.125)),
            ),
            (300.0, 1200.0),
            "creep",
        ),
        # a fouled oil cooler: oil and discharge temperatures climb at the same load
        FaultShape(
            "cooler_fouling",
            (
                Effect("oil_temperature", +1, (0.25, 0.425)),
                Effect("discharge_temperature", +1, (0.2, 0.35)),
            ),
            (300.0, 1200.0),
            "creep",
        ),
        # a worn valve or seal leaking internally: the drive works as hard for less air
        FaultShape(
            "internal_leak",
            (
                Effect("flow", -1, (0.175, 0.3)),
                Effect("discharge_pressure", -1, (0.15, 0.275)),
                Effect("motor_current", +1, (0.075, 0.175)),
            ),
            (180.0, 900.0),
            "step",
            ramp=150.0,
        ),
        # a worn bearing: vibration and oil temperature creep up against the load
        FaultShape(
            "bearing_wear",
            (
                Effect("vibration", +1, (0.25, 0.425), jitter=0.2),
                Effect("oil_temperature", +1, (0.15, 0.3)),
                Effect("motor_current", +1, (0.025, 0.075)),
            ),
            (300.0, 1200.0),
            "creep",
        ),
    )

    F_RATED = 18.0  # m3/min of free air at rated speed
    P_SET = 7.5  # bar(g), the pressure set-point
    POWER_RATED = 110.0  # kW

    def clean(self, c: Causes, dt: float) -> FloatArray:
        s = c.speed
        # the controller holds the set-point; the pressure sags a little at high demand
        pressure = self.P_SET - 0.45 * (c.load - 1.0) - 0.3 * (s - 0.75)
        ratio = (pressure + 1.013) / 1.013
        flow = self.F_RATED * s * (1.0 - 0.012 * (pressure - self.P_SET))
        power = self.POWER_RATED * (0.1 + 0.9 * s * np.log(ratio) / math.log(8.5 / 1.013))
        current = 12.0 + power * 1000.0 / (math.sqrt(3.0) * c.supply * 0.88 * 0.95)
        vibration = 1.1 + 1.8 * s + 0.2 * s * s
        inlet = c.ambient + 3.0
        discharge_t = self._lagged("discharge", inlet + 55.0 + 0.2 * power, 120.0, dt)
        oil = self._lagged("oil", inlet + 38.0 + 0.16 * power, 300.0, dt)
        voltage = c.supply - 0.02 * current
        return np.column_stack(
            (flow, pressure, current, vibration, inlet, discharge_t, oil, voltage)
        )


KINDS: dict[str, type[MachineKind]] = {"pump": Pump, "compressor": Compressor}

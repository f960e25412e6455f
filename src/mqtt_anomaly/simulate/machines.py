"""Machine kinds: the sensors of one asset, the physics that ties them, and its faults.

An asset's sensors are driven by shared hidden causes (:class:`Causes`): the speed the drive
runs at (following a set-point that changes now and then, ramped), the load (the system's
resistance or the plant's air demand, drifting slowly), the ambient temperature (the plant's
daily cycle plus a local offset), the supply voltage (plant-wide) and, for a pump, the suction
tank's level. Each kind turns them into its sensors' clean values with physically plausible
relations, so the sensors correlate as on a real machine:

- ``pump`` (centrifugal, variable speed): the pump curve ``H = H0 s² - a Q²`` against the
  system curve ``H = R Q²`` give flow ∝ speed and head ∝ speed² at a given resistance (the
  affinity laws); the brake power is ∝ speed³ at the rated flow share and falls with the flow
  at a given speed (``s³ (0.35 + 0.65 Q/s)``, per unit), motor current follows power, the
  bearing temperature follows power and the ambient temperature with a first-order lag (3
  minutes), vibration grows with speed², the motor terminals' voltage sags with current.
- ``compressor`` (oil-injected screw, variable speed, pressure-controlled): flow ∝ speed,
  power ∝ flow × log(pressure ratio), the discharge pressure sags a little at high demand,
  discharge and oil temperatures follow power and ambient with lags (2 and 5 minutes).

**Faults are physical** (:class:`Defect`): each is a cause the physics above turns
into sensor values, its severity drawn per fault, set in over a ramp (``step``) or growing over
the fault (``creep``), part of it redrawn on every reading where the defect is unsteady:

- ``cavitation`` (a clogged suction strainer): the suction line loses up to twice its normal
  drop (∝ Q²) and the impeller up to a fifth of its head: flow, suction and discharge pressure
  fall, the power and the current fall with the flow, the vibration rises (rattle);
- ``valve_restriction`` (a valve partly closed downstream): the system's resistance rises by
  20-50 % within 90 s, where its normal drift is ±6 % over tens of minutes: along the pump
  curve the flow falls and the discharge pressure rises, and the current falls;
- ``bearing_wear``: vibration up, friction heat (the bearing up to 9 °C hotter than the
  load and the ambient temperature explain) and a little more power, growing over the fault;
- ``loose_coupling``: the pump's shaft slips 3-8 % behind the motor's: flow and head of a
  slower pump while the motor keeps its speed (its vibration, its slip loss in the current)
  and the coupling knocks (vibration).

The unmeasured causes are bounded: the resistance drifts ±6 %, the tank level (held by a
controller) ±1.5 %; the supply voltage is measured (``voltage``), the ambient temperature
moves at most a few °C an hour. A physical fault is not kept inside the sensors' normal range:
a restricted valve at top speed may push the discharge pressure past anything seen before.

The compressor's faults are physical too: ``intake_clogging`` (less air taken in per turn,
compressed over a higher ratio: flow down, a hotter discharge, a little less current),
``cooler_fouling`` (the injected oil hotter: oil and discharge temperatures up at the same
load), ``internal_leak`` (part of the air goes round again: less delivered, the pressure sags,
the same power, a hotter discharge) and ``bearing_wear`` (vibration, oil temperature and
friction power up). Its inlet temperature measures the ambient one.

:class:`Effect` (per sensor a direction, a fraction of the way to the edge of the range the
asset has shown in normal operation, a profile and a jitter) remains for faults written as
sensor effects (:mod:`~mqtt_anomaly.simulate.assets` applies them, keeping every reading
inside its sensor's normal range); no built-in kind uses it now.

>>> sorted(KINDS)
['compressor', 'pump']
>>> [s.name for s in KINDS["pump"].sensors][:3]
['flow', 'suction_pressure', 'discharge_pressure']
>>> [f.name for f in KINDS["pump"].faults]
['cavitation', 'valve_restriction', 'bearing_wear', 'loose_coupling']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
class Defect:
    """A physical fault's cause: how severe it gets (drawn per fault, in the defect's own
    units, e.g. the share of the pump's head lost) and how much of it is redrawn on every
    reading (``jitter``: 0 steady, 1 the whole severity)."""

    name: str
    severity: tuple[float, float]
    jitter: float = 0.0


@dataclass(frozen=True, slots=True)
class FaultShape:
    """A multivariate fault of a machine kind: either ``effects`` on the sensors' values, or
    ``defects``, causes the kind's physics turns into sensor values (``moves``: the sensors
    they move)."""

    name: str
    effects: tuple[Effect, ...]
    duration: tuple[float, float]  # s, drawn per fault
    profile: str  # "step" or "creep"
    ramp: float = 120.0  # s, how long a step fault takes to set in
    forced_duration: float = 300.0  # s, an --inject without +DURATION
    defects: tuple[Defect, ...] = ()
    moves: tuple[str, ...] = ()

    def sensors(self) -> tuple[str, ...]:
        """The sensors the fault moves, in the order of its effects (or ``moves``)."""
        return tuple(e.sensor for e in self.effects) or self.moves


@dataclass(slots=True)
class Causes:
    """The hidden causes of ``n`` assets at one reading (per asset arrays)."""

    speed: FloatArray  # per unit of the rated speed
    load: FloatArray  # around 1.0: the pump's system resistance, the compressor's air demand
    ambient: FloatArray  # °C
    supply: FloatArray  # V, the plant's supply voltage
    level: FloatArray  # around 1.0: the pump's suction tank level
    defects: dict[str, FloatArray] = field(default_factory=dict)  # active defects' severity

    def defect(self, name: str) -> FloatArray:
        """Per asset the severity of defect ``name`` now (0: none)."""
        out = self.defects.get(name)
        return np.zeros_like(self.speed) if out is None else out


class MachineKind:
    """A kind of machine: sensors, fault shapes, speed range and its physics.

    :meth:`clean` is stateful (the lagged temperatures): call it once per reading, in order.
    """

    name: str
    prefix: str
    sensors: tuple[SensorSpec, ...]
    faults: tuple[FaultShape, ...]
    speed_range: tuple[float, float] = (0.6, 1.0)
    load_sd: float = 0.04  # spread of the load's slow drift (bounded to 3 of them)
    level_sd: float = 0.02  # spread of the suction tank level's drift

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
    load_sd = 0.02  # the system's resistance drifts ±6 % (a fixed piping system)
    level_sd = 0.005  # the suction tank is held by a level controller (±1.5 %)
    faults = (
        # a clogged suction strainer: the suction pressure falls with flow, the impeller
        # cavitates: it loses head (so flow and discharge pressure fall, and with the flow the
        # shaft power and the current), and the collapsing bubbles rattle it (vibration up)
        FaultShape(
            "cavitation",
            (),
            (120.0, 600.0),
            "step",
            ramp=90.0,
            defects=(Defect("cavitation", (0.5, 1.0), jitter=0.3),),
            moves=(
                "suction_pressure",
                "discharge_pressure",
                "flow",
                "vibration_de",
                "vibration_nde",
                "motor_current",
            ),
        ),
        # a valve partly closed downstream: the system's resistance rises by 20-50 % within a
        # minute or two (its normal drift is ±6 % over tens of minutes): along the pump curve
        # the flow falls, the discharge pressure rises, and the current falls with the power
        FaultShape(
            "valve_restriction",
            (),
            (180.0, 900.0),
            "step",
            ramp=90.0,
            defects=(Defect("valve", (0.2, 0.5)),),
            moves=("flow", "discharge_pressure", "suction_pressure", "motor_current"),
        ),
        # a worn bearing: vibration grows and the bearing runs hotter than its load and the
        # ambient temperature explain (friction heat), drawing a little more power
        FaultShape(
            "bearing_wear",
            (),
            (300.0, 1200.0),
            "creep",
            defects=(Defect("wear", (0.4, 1.0), jitter=0.2),),
            moves=("vibration_de", "vibration_nde", "bearing_temperature", "motor_current"),
        ),
        # a loose coupling: the pump's shaft slips behind the motor's (flow and head of a
        # slower pump, the motor's power the pump's plus the slip loss), and it knocks
        FaultShape(
            "loose_coupling",
            (),
            (120.0, 600.0),
            "step",
            ramp=60.0,
            defects=(Defect("slip", (0.03, 0.08), jitter=0.5),),
            moves=(
                "flow",
                "suction_pressure",
                "discharge_pressure",
                "motor_current",
                "vibration_de",
                "vibration_nde",
            ),
        ),
    )

    Q_RATED = 120.0  # m3/h at rated speed and resistance
    HEAD_RATED = 4.0  # bar of differential pressure
    TANK = 1.6  # bar at the suction at no flow, tank at its usual level
    P_RATED = 15.0  # kW of shaft power

    def clean(self, c: Causes, dt: float) -> FloatArray:
        cav, valve, wear, slip = (c.defect(d) for d in ("cavitation", "valve", "wear", "slip"))
        s = c.speed  # the motor's
        sp = s * (1.0 - slip)  # the pump's shaft
        r = c.load * (1.0 + valve)  # the system's resistance
        # pump curve H = H0 sp² (1 - loss) - a Q² (a = the rated resistance) against the
        # system curve H = R Q²; cavitation costs up to a fifth of the head
        head0 = 1.0 - 0.2 * cav
        q_pu = sp * np.sqrt(2.0 * head0 / (1.0 + r))
        head_pu = r * q_pu * q_pu
        flow = self.Q_RATED * q_pu
        # the tank's head less the suction line's loss (and a clogged strainer's, ∝ Q²)
        suction = self.TANK * c.level - (0.25 + 0.25 * cav) * q_pu * q_pu
        discharge = suction + self.HEAD_RATED * head_pu
        # brake power: a centrifugal pump draws less at less flow (affinity: sp³ at the
        # rated flow share); the motor delivers it plus the coupling's slip loss, plus the
        # worn bearing's friction
        pump_pu = sp**3 * (0.35 + 0.65 * q_pu / np.maximum(sp, 1e-6))
        power = self.P_RATED * (0.08 + 0.92 * pump_pu) / (1.0 - slip) + 0.6 * wear
        current = 7.5 + power * 1000.0 / (math.sqrt(3.0) * c.supply * 0.86 * 0.93)
        # vibration: ∝ speed², plus off-design flow, the cavitation's rattle, the bearing's
        # wear and the coupling's knock
        extra = 1.2 * cav + 1.0 * wear + 14.0 * slip
        vib_de = 0.7 + 2.2 * s * s + 0.15 * np.abs(q_pu - 1.0) + extra
        vib_nde = 0.5 + 1.6 * s * s + 0.1 * np.abs(q_pu - 1.0) + 0.6 * extra
        heat = c.ambient + 12.0 + 1.6 * power + 9.0 * wear
        bearing = self._lagged("bearing", heat, 180.0, dt)
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
        # a clogged intake filter: the inlet's pressure drops, so each turn of the screws takes
        # in less air (flow down at the same speed) and compresses it over a higher ratio
        # (a hotter discharge); the power falls a little with the mass of air
        FaultShape(
            "intake_clogging",
            (),
            (300.0, 1200.0),
            "creep",
            defects=(Defect("clog", (0.4, 1.0)),),
            moves=("flow", "discharge_temperature", "motor_current"),
        ),
        # a fouled oil cooler: the injected oil runs hotter, so do the oil and the discharge
        FaultShape(
            "cooler_fouling",
            (),
            (300.0, 1200.0),
            "creep",
            defects=(Defect("fouling", (0.4, 1.0)),),
            moves=("oil_temperature", "discharge_temperature"),
        ),
        # a worn valve or seal leaking internally: part of the compressed air goes round
        # again: less air delivered, the pressure sags, the drive works as hard, and the
        # recirculated air heats the discharge
        FaultShape(
            "internal_leak",
            (),
            (180.0, 900.0),
            "step",
            ramp=90.0,
            defects=(Defect("leak", (0.08, 0.2)),),
            moves=("flow", "discharge_pressure", "motor_current", "discharge_temperature"),
        ),
        # a worn bearing: vibration and oil temperature up, more friction power
        FaultShape(
            "bearing_wear",
            (),
            (300.0, 1200.0),
            "creep",
            defects=(Defect("wear", (0.4, 1.0), jitter=0.2),),
            moves=("vibration", "oil_temperature", "motor_current"),
        ),
    )

    F_RATED = 18.0  # m3/min of free air at rated speed
    P_SET = 7.5  # bar(g), the pressure set-point
    POWER_RATED = 110.0  # kW

    def clean(self, c: Causes, dt: float) -> FloatArray:
        clog, fouling, leak, wear = (c.defect(d) for d in ("clog", "fouling", "leak", "wear"))
        s = c.speed
        # the controller holds the set-point; the pressure sags a little at high demand, and
        # with an internal leak
        pressure = self.P_SET - 0.45 * (c.load - 1.0) - 0.3 * (s - 0.75) - 2.0 * leak
        ratio = (pressure + 1.013) / (1.013 * (1.0 - 0.12 * clog))
        intake = 1.0 - 0.12 * clog  # the air taken in per turn, against a clogged filter
        flow = self.F_RATED * s * intake * (1.0 - leak) * (1.0 - 0.012 * (pressure - self.P_SET))
        work = s * intake * np.log(ratio) / math.log(8.5 / 1.013)
        power = self.POWER_RATED * (0.1 + 0.9 * work) + 3.0 * wear
        current = 12.0 + power * 1000.0 / (math.sqrt(3.0) * c.supply * 0.88 * 0.95)
        vibration = 1.1 + 1.8 * s + 0.2 * s * s + 0.9 * wear
        inlet = c.ambient + 3.0
        hot = inlet + 55.0 + 0.2 * power + 14.0 * clog + 10.0 * fouling + 40.0 * leak
        discharge_t = self._lagged("discharge", hot, 120.0, dt)
        oil = self._lagged(
            "oil", inlet + 38.0 + 0.16 * power + 12.0 * fouling + 5.0 * wear, 300.0, dt
        )
        voltage = c.supply - 0.02 * current
        return np.column_stack(
            (flow, pressure, current, vibration, inlet, discharge_t, oil, voltage)
        )


KINDS: dict[str, type[MachineKind]] = {"pump": Pump, "compressor": Compressor}

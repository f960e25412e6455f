"""A read-only view of a :class:`~mqtt_anomaly.pipeline.Pipeline`, for dashboards and metrics.

The pipeline keeps its per-sensor state in numpy columns and alert books indexed by slot;
whoever only looks at it (the REST API, the event stream, the alert desk, Prometheus) reads it
here, through typed accessors, and never changes it: columns come as read-only arrays, rows
and counters as copies. Nothing here runs per message; a call costs what it returns (one
sensor, or one pass over the table).

Health is the pipeline's own (:meth:`Pipeline.health_of
<mqtt_anomaly.pipeline.Pipeline.health_of>`): the state last published on the sensor's
health topic.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .assets import AssetInfo
from .detectors.base import FloatArray
from .detectors.threshold import ThresholdDetector
from .drift import DriftReport
from .messages import HEALTH_STATES, HealthState, Severity
from .sparkplug import SparkplugCounters

if TYPE_CHECKING:
    from .pipeline import Counters, Pipeline


@dataclass(frozen=True, slots=True)
class SensorState:
    """One sensor as the pipeline sees it now (NaN: not known yet)."""

    sensor_id: str
    health: HealthState
    last_value: float  # the last scored reading's value
    last_ts: float  # ... and its timestamp
    last_seen: float  # when it arrived
    interval: float  # the usual gap between two readings, learned
    active_alerts: tuple[str, ...]  # detectors (and silence, offline) with an active alert


@dataclass(frozen=True, slots=True)
class Band:
    """The range the detectors expect for a sensor's next reading (None: no bound)."""

    low: float | None
    high: float | None
    threshold: float | None  # the threshold detector's, if it runs


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    """An alert active now, as the alert books hold it."""

    sensor_id: str
    detector: str
    severity: Severity


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


class PipelineView:
    """Typed, read-only access to one pipeline's sensor table, health, alerts and counters."""

    __slots__ = ("_pl",)

    def __init__(self, pipeline: Pipeline) -> None:
        self._pl = pipeline

    # ---- the sensor table --------------------------------------------------------------
    def __len__(self) -> int:
        """Known sensors (slots ``0 .. len - 1``)."""
        return len(self._pl.sensor_ids)

    def sensor_ids(self) -> tuple[str, ...]:
        """Every known sensor id, by slot."""
        return tuple(self._pl.sensor_ids)

    def sensor_id(self, slot: int) -> str:
        return self._pl.sensor_ids[slot]

    def slot(self, sensor_id: str) -> int | None:
        """The sensor's slot, None for a sensor not known (or forgotten)."""
        return self._pl.sensors.get(sensor_id)

    def unit(self, sensor_id: str) -> str | None:
        """The sensor's unit as an MQTT 5 user property named it (None: none did)."""
        return self._pl.units.get(sensor_id)

    def __contains__(self, sensor_id: object) -> bool:
        return sensor_id in self._pl.sensors

    def sensor(self, slot: int) -> SensorState:
        pl = self._pl
        return SensorState(
            sensor_id=pl.sensor_ids[slot],
            health=pl.health[slot],
            last_value=float(pl.last_value[slot]),
            last_ts=float(pl.last_ts[slot]),
            last_seen=float(pl.last_seen[slot]),
            interval=float(pl.interval[slot]),
            active_alerts=self.active_alerts(slot),
        )

    # ---- columns (read-only, by slot, NaN where not known) -------------------------------
    def last_values(self) -> FloatArray:
        return self._column(self._pl.last_value)

    def last_ts(self) -> FloatArray:
        return self._column(self._pl.last_ts)

    def last_seen(self) -> FloatArray:
        return self._column(self._pl.last_seen)

    def intervals(self) -> FloatArray:
        return self._column(self._pl.interval)

    def _column(self, column: FloatArray) -> FloatArray:
        view = column[: len(self)]  # a view of the live column: no copy
        view.flags.writeable = False
        return view

    # ---- health ----------------------------------------------------------------------------
    def health(self, slot: int) -> HealthState:
        return self._pl.health[slot]

    def healths(self) -> tuple[HealthState, ...]:
        """Every known sensor's health, by slot."""
        return tuple(self._pl.health)

    def health_counts(self) -> dict[HealthState, int]:
        """Known sensors by health (every state, 0 included)."""
        counts = Counter(self._pl.health)
        return {state: counts.get(state, 0) for state in HEALTH_STATES}

    def sensors_active(self, now: float) -> int:
        """Sensors that sent a reading within their silence limit before ``now``."""
        n = len(self)
        if not n:
            return 0
        pl = self._pl
        limit = pl.settings.detector.silence_factor * pl.interval[:n]
        with np.errstate(invalid="ignore"):
            return int(np.count_nonzero(now - pl.last_seen[:n] <= limit))

    # ---- alerts ----------------------------------------------------------------------------
    def detectors(self) -> tuple[str, ...]:
        """Names of everything that raises alerts: the detectors, ``silence``, ``offline``."""
        return tuple(self._pl.books)

    def active_alerts(self, slot: int) -> tuple[str, ...]:
        """Names of the detectors with an active alert on ``slot``."""
        return tuple(
            name
            for name, b in self._pl.books.items()
            if slot < len(b.active) and bool(b.active[slot])
        )

    def all_active_alerts(self) -> Iterator[ActiveAlert]:
        """Every active alert, detector by detector."""
        pl = self._pl
        n = len(pl.sensor_ids)
        for name, book in pl.books.items():
            for slot in np.flatnonzero(book.active[:n]).tolist():
                sev: Severity = "critical" if book.critical[slot] else "warning"
                yield ActiveAlert(pl.sensor_ids[slot], name, sev)

    # ---- what the detectors expect ---------------------------------------------------------
    def expected_bands(self, slots: Sequence[int]) -> tuple[FloatArray, FloatArray]:
        """``(low, high)`` for ``slots``: the narrowest band of all detectors'
        (:meth:`~mqtt_anomaly.detectors.base.Detector.expected_band`), NaN where none bounds."""
        idx = np.asarray(slots, dtype=np.intp)
        low = np.full(len(idx), math.nan)
        high = np.full(len(idx), math.nan)
        for det in self._pl.detectors:
            lo, hi = det.expected_band(idx)
            np.fmax(low, lo, out=low)  # fmax/fmin: a NaN (no bound) does not count
            np.fmin(high, hi, out=high)
        return low, high

    def expected_band(self, slot: int) -> Band:
        """The range the detectors expect for the sensor's next reading."""
        low, high = self.expected_bands([slot])
        threshold = None
        for det in self._pl.detectors:
            if isinstance(det, ThresholdDetector):
                threshold = float(det.threshold)
        return Band(_num(float(low[0])), _num(float(high[0])), threshold)

    # ---- assets ----------------------------------------------------------------------------
    def assets(self) -> list[AssetInfo]:
        """Every asset: its phase, sensors, alarm and latest contributions (a copy)."""
        return self._pl.assets.info()

    def asset(self, asset_id: str) -> AssetInfo | None:
        """One asset, or None."""
        return next((a for a in self._pl.assets.info() if a.id == asset_id), None)

    # ---- model health ----------------------------------------------------------------------
    def model_health(self, now: float) -> DriftReport:
        """Drift, alert rates, commissioning age and stale flags of every sensor at ``now``
        (epoch s), by slot: one vectorised pass over the table (:mod:`.drift`)."""
        return self._pl.drift.report(now, len(self))

    # ---- counters --------------------------------------------------------------------------
    def counters(self) -> Counters:
        """A copy of what the pipeline has counted."""
        return copy.deepcopy(self._pl.counters)

    def sparkplug_counters(self) -> dict[str, int]:
        """What the Sparkplug B host counted, by event (zeros when it is off)."""
        host = self._pl.sparkplug
        return dataclasses.asdict(SparkplugCounters() if host is None else host.counters)

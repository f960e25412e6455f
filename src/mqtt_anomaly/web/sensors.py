"""Per-sensor views of the pipeline's state: health as operators see it, rows, bands.

The pipeline's health is ``ok`` / ``anomalous`` / ``offline``; a sensor whose only active
alert is ``silence`` is shown as ``silent``, so a quiet sensor is told apart from a sensor
sending bad values.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from ..detectors.threshold import ThresholdDetector
from ..detectors.zscore import ZScoreDetector
from ..pipeline import OFFLINE, SILENCE, Pipeline

DisplayHealth = Literal["ok", "anomalous", "offline", "silent"]
HEALTH_ORDER: dict[str, int] = {"anomalous": 0, "offline": 1, "silent": 2, "ok": 3}


def active_detectors(pl: Pipeline, slot: int) -> list[str]:
    """Names of the detectors with an active alert on ``slot``."""
    return [name for name, b in pl.books.items() if slot < len(b.active) and bool(b.active[slot])]


def display_health(pl: Pipeline, slot: int) -> DisplayHealth:
    """``ok``, ``anomalous``, ``offline`` or ``silent`` for one sensor slot."""
    state = pl.health[slot]
    if state != "anomalous":
        return "offline" if state == OFFLINE else "ok"
    active = active_detectors(pl, slot)
    return "silent" if active == [SILENCE] else "anomalous"


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def sensor_row(pl: Pipeline, slot: int) -> dict[str, Any]:
    """One sensor as the API returns it."""
    return {
        "sensor_id": pl.sensor_ids[slot],
        "health": display_health(pl, slot),
        "last_value": _num(pl.last_value[slot]),
        "last_ts": _num(pl.last_ts[slot]),
        "last_seen": _num(pl.last_seen[slot]),
        "interval": round(pl.interval[slot], 6),
        "active_alerts": active_detectors(pl, slot),
    }


def expected_band(pl: Pipeline, slot: int) -> dict[str, float | None]:
    """The range the detectors currently expect for the sensor's next reading.

    ``low``/``high`` from the z-score detector once warmed up (mean ± z_alert·σ), capped by
    the threshold detector's critical threshold; None where no detector gives a bound.
    """
    low: float | None = None
    high: float | None = None
    threshold: float | None = None
    for det in pl.detectors:
        if isinstance(det, ThresholdDetector):
            threshold = float(det.threshold)
        elif isinstance(det, ZScoreDetector) and slot < len(det.state["n"]):
            st = det.state
            if int(st["n"][slot]) >= det.warmup:
                mean = float(st["mean"][slot])
                std = math.sqrt(
                    float(st["var"][slot]) + (det.min_std + det.rel_std * abs(mean)) ** 2
                )
                low, high = mean - det.z_alert * std, mean + det.z_alert * std
    if threshold is not None:
        high = threshold if high is None else min(high, threshold)
    return {"low": low, "high": high, "threshold": threshold}

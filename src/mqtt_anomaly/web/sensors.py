"""Sensors as the API returns them, from the pipeline's read-only view.

Health is the pipeline's (``ok``, ``anomalous``, ``offline``, ``silent``: the state published
on the sensor's health topic); a quiet sensor is told apart from a sensor sending bad values.
"""

from __future__ import annotations

import math
from typing import Any

from ..view import PipelineView

HEALTH_ORDER: dict[str, int] = {"anomalous": 0, "offline": 1, "silent": 2, "ok": 3}


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def sensor_row(view: PipelineView, slot: int) -> dict[str, Any]:
    """One sensor as the API returns it."""
    s = view.sensor(slot)
    return {
        "sensor_id": s.sensor_id,
        "health": s.health,
        "last_value": _num(s.last_value),
        "last_ts": _num(s.last_ts),
        "last_seen": _num(s.last_seen),
        "interval": round(s.interval, 6),
        "active_alerts": list(s.active_alerts),
        "unit": view.unit(s.sensor_id),
    }


def expected_band(view: PipelineView, slot: int) -> dict[str, float | None]:
    """The range the detectors currently expect for the sensor's next reading: the narrowest
    of their bands (the z-score's mean ± z_alert·σ once warmed up, capped by the threshold);
    None where no detector gives a bound."""
    band = view.expected_band(slot)
    return {"low": band.low, "high": band.high, "threshold": band.threshold}

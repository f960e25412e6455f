"""``GET /api/models/health``: drift and model health per sensor (:mod:`mqtt_anomaly.drift`).

One vectorised report over the whole table per request, then sorted (NaN last) and one page
of it returned, so thousands of sensors cost one numpy pass, not a Python loop over them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ..drift import DriftReport
from ..topics import MAX_SENSOR_ID_LENGTH
from .state import WebState

router = APIRouter()
SortKey = Literal["drift", "ks", "alert_rate", "age", "sensor_id"]


class ModelHealth(BaseModel):
    """One sensor's model health (None: not known yet)."""

    sensor_id: str
    phase: Literal["learning", "monitoring"] = Field(
        description="learning: its reference score distribution is not frozen yet"
    )
    drift: float | None = Field(description="Population stability index, recent vs reference")
    ks: float | None = Field(description="Largest difference of the two cumulative distributions")
    alert_rate: float | None = Field(description="Recent share of readings at the alert level")
    reference_alert_rate: float | None = Field(description="The same in the reference")
    age: float | None = Field(description="Seconds since commissioning (reference frozen)")
    learning_age: float | None = Field(description="Seconds since its first scored reading")
    stale: bool
    reasons: list[Literal["drift", "alerts", "age"]] = Field(description="Why it is stale")


class ModelHealthPage(BaseModel):
    """One page of the sensors' model health, with fleet-wide counts."""

    total: int = Field(description="Sensors matching the filter")
    sensors: int = Field(description="Known sensors")
    stale: int = Field(description="Sensors whose model looks stale")
    learning: int = Field(description="Sensors still learning their reference")
    threshold: float = Field(description="drift.threshold")
    offset: int
    items: list[ModelHealth]


def _num(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def health_row(sensor_id: str, r: DriftReport, slot: int) -> dict[str, Any]:
    """One sensor's entry of the page."""
    reasons = r.reasons(slot)
    return {
        "sensor_id": sensor_id,
        "phase": r.phase(slot),
        "drift": _num(float(r.drift[slot])),
        "ks": _num(float(r.ks[slot])),
        "alert_rate": _num(float(r.alert_rate[slot])),
        "reference_alert_rate": _num(float(r.reference_alert_rate[slot])),
        "age": _num(float(r.age[slot])),
        "learning_age": _num(float(r.learning_age[slot])),
        "stale": bool(reasons),
        "reasons": reasons,
    }


@router.get("/api/models/health", response_model=ModelHealthPage, tags=["models"])
def model_health(
    request: Request,
    stale: Annotated[bool | None, Query(description="Only stale (true) or not (false)")] = None,
    q: Annotated[
        str | None,
        Query(max_length=MAX_SENSOR_ID_LENGTH, description="Sensor id contains (case-insensitive)"),
    ] = None,
    sort: SortKey = "drift",
    desc: Annotated[bool, Query(description="Largest first (sensor_id: Z to A)")] = True,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
) -> dict[str, Any]:
    """Per sensor: drift of its score distribution against the one at commissioning, its
    alert rate against the reference rate, commissioning age and whether its model looks
    stale; sorted (NaN last), filtered and paginated. Default: the most drifted first."""
    w: WebState = request.app.state.web
    view = w.view
    r = view.model_health(w.service.clock())
    ids = view.sensor_ids()
    flags = r.stale
    slots = np.arange(len(ids))
    if stale is not None:
        slots = slots[flags == stale]
    if q:
        needle = q.lower()
        slots = slots[[needle in ids[s].lower() for s in slots.tolist()]]
    if sort == "sensor_id":
        ordered = sorted(slots.tolist(), key=ids.__getitem__, reverse=desc)
    else:
        column = {"drift": r.drift, "ks": r.ks, "alert_rate": r.alert_rate, "age": r.age}[sort]
        key = column[slots]
        key = np.where(np.isnan(key), -np.inf if desc else np.inf, key)  # NaN last
        order = np.argsort(-key if desc else key, kind="stable")
        ordered = slots[order].tolist()
    page = ordered[offset : offset + limit]
    return {
        "total": len(ordered),
        "sensors": len(ids),
        "stale": int(np.count_nonzero(flags)),
        "learning": r.learning,
        "threshold": w.service.settings.drift.threshold,
        "offset": offset,
        "items": [health_row(ids[s], r, s) for s in page],
    }

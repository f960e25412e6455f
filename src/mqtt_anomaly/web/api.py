"""The REST API: sensors, readings history, alerts (acknowledge, shelve), probes, metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..store.base import NullStore
from . import models
from .events import alert_json
from .history import downsample
from .sensors import HEALTH_ORDER, display_health, expected_band, sensor_row
from .state import WebState

router = APIRouter()
SortKey = Literal["sensor_id", "health", "last_value", "last_seen"]
MAX_ROWS = 200_000


def web(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


# ---- probes and metrics -----------------------------------------------------------------
@router.get("/healthz", response_model=models.Probe, tags=["probes"])
def healthz(request: Request) -> dict[str, Any]:
    """Liveness: the service's event loop answers."""
    svc = web(request).service
    return {"status": "ok", "connected": svc.client.connected, "subscribed": svc.ready.is_set()}


@router.get(
    "/readyz",
    response_model=models.Probe,
    tags=["probes"],
    responses={503: {"model": models.Probe, "description": "Not connected or not subscribed"}},
)
def readyz(request: Request) -> Any:
    """Readiness: connected to the broker and subscribed."""
    svc = web(request).service
    body = {"connected": svc.client.connected, "subscribed": svc.ready.is_set()}
    ok = body["connected"] and body["subscribed"]
    return JSONResponse({"status": "ok" if ok else "unavailable", **body}, 200 if ok else 503)


@router.get("/metrics", tags=["probes"], response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    body = web(request).metrics.exposition()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


# ---- sensors ------------------------------------------------------------------------------
@router.get("/api/sensors", response_model=models.SensorPage, tags=["sensors"])
def list_sensors(
    request: Request,
    health: Annotated[models.Health | None, Query(description="Only this health")] = None,
    q: Annotated[str | None, Query(description="Sensor id contains (case-insensitive)")] = None,
    sort: SortKey = "health",
    desc: bool = False,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> dict[str, Any]:
    """The fleet, filtered, sorted and paginated (health sorts anomalous first)."""
    pl = web(request).service.pipeline
    shown = [display_health(pl, s) for s in range(len(pl.sensor_ids))]
    counts = dict.fromkeys(HEALTH_ORDER, 0)
    for h in shown:
        counts[h] += 1
    slots = range(len(pl.sensor_ids))
    if health is not None:
        slots = [s for s in slots if shown[s] == health]  # type: ignore[assignment]
    if q:
        needle = q.lower()
        slots = [s for s in slots if needle in pl.sensor_ids[s].lower()]  # type: ignore[assignment]
    key: Any
    if sort == "health":
        key = lambda s: (HEALTH_ORDER[shown[s]], pl.sensor_ids[s])  # noqa: E731
    elif sort == "sensor_id":
        key = lambda s: pl.sensor_ids[s]  # noqa: E731
    else:
        column = pl.last_value if sort == "last_value" else pl.last_seen
        key = lambda s: (column[s] != column[s], column[s] if column[s] == column[s] else 0.0)  # noqa: E731
    ordered = sorted(slots, key=key, reverse=desc)
    page = ordered[offset : offset + limit]
    return {
        "total": len(ordered),
        "offset": offset,
        "items": [sensor_row(pl, s) for s in page],
        "counts": counts,
    }


@router.get(
    "/api/sensors/{sensor_id}",
    response_model=models.SensorDetail,
    tags=["sensors"],
    responses={404: {"description": "Unknown sensor"}},
)
def get_sensor(request: Request, sensor_id: str) -> dict[str, Any]:
    """One sensor, with the range its detectors expect next."""
    pl = web(request).service.pipeline
    slot = pl.sensors.get(sensor_id)
    if slot is None:
        raise HTTPException(404, f"unknown sensor {sensor_id!r}")
    return {**sensor_row(pl, slot), "band": expected_band(pl, slot)}


@router.get(
    "/api/sensors/{sensor_id}/readings", response_model=models.ReadingsHistory, tags=["sensors"]
)
async def readings(
    request: Request,
    sensor_id: str,
    start: Annotated[float | None, Query(description="From (epoch s)")] = None,
    end: Annotated[float | None, Query(description="Until (epoch s)")] = None,
    buckets: Annotated[int, Query(ge=1, description="At most this many points")] = 500,
    max_rows: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 50_000,
) -> dict[str, Any]:
    """Readings history from the store, downsampled to ``buckets`` time buckets.

    Without ``start``: the latest ``max_rows`` readings up to ``end``.
    """
    w = web(request)
    buckets = min(buckets, w.settings.max_points)
    store = w.service.store
    rows: list[Any] = []
    if store is not None:
        rows = await asyncio.to_thread(
            store.readings, sensor_id, start=start, end=end, limit=max_rows
        )
    return {
        "sensor_id": sensor_id,
        "start": start,
        "end": end,
        "rows": len(rows),
        "truncated": len(rows) >= max_rows,
        "buckets": downsample(rows, buckets),
    }


# ---- alerts -------------------------------------------------------------------------------
@router.get("/api/alerts", response_model=list[models.AlertEvent], tags=["alerts"])
async def alerts(
    request: Request,
    sensor: str | None = None,
    detector: str | None = None,
    state: Literal["raised", "cleared"] | None = None,
    since: Annotated[float | None, Query(description="alert_ts >= since (epoch s)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict[str, Any]]:
    """Alert events, newest first: from the history store, or from memory without one."""
    w = web(request)
    store = w.service.store
    if store is None or isinstance(store, NullStore):
        return w.desk.history(
            sensor_id=sensor, detector=detector, state=state, since=since, limit=limit
        )
    fetch = limit if state is None else min(limit * 4, 10_000)
    rows = await asyncio.to_thread(
        store.recent_alerts, limit=fetch, sensor_id=sensor, since=since, detector=detector
    )
    return [alert_json(a) for a in rows if state is None or a.state == state][:limit]


@router.get("/api/alerts/active", response_model=list[models.ActiveAlert], tags=["alerts"])
def active_alerts(
    request: Request,
    sensor: str | None = None,
    detector: str | None = None,
    state: Literal["acknowledged", "unacknowledged", "shelved"] | None = None,
) -> list[dict[str, Any]]:
    """Alerts active now, newest first, with their acknowledgement and shelving."""
    return web(request).desk.list_active(sensor, detector, state)


def _changed(w: WebState, item: Any) -> dict[str, Any]:
    if item is None:
        raise HTTPException(404, "no active alert for this sensor and detector")
    body: dict[str, Any] = item.as_json(w.desk.clock())
    w.hub.send("alert-state", body)
    return body


@router.post(
    "/api/alerts/{sensor_id}/{detector}/ack",
    response_model=models.ActiveAlert,
    tags=["alerts"],
    responses={404: {"description": "No such active alert"}},
)
def acknowledge(request: Request, sensor_id: str, detector: str) -> dict[str, Any]:
    """Acknowledge an active alert (until it clears)."""
    w = web(request)
    return _changed(w, w.desk.acknowledge(sensor_id, detector))


@router.post(
    "/api/alerts/{sensor_id}/{detector}/shelve",
    response_model=models.ActiveAlert,
    tags=["alerts"],
    responses={404: {"description": "No such active alert"}},
)
def shelve(request: Request, sensor_id: str, detector: str, body: models.Shelve) -> dict[str, Any]:
    """Shelve an active alert for a while: the dashboard hides it until then."""
    w = web(request)
    return _changed(w, w.desk.shelve(sensor_id, detector, body.seconds))


@router.delete(
    "/api/alerts/{sensor_id}/{detector}/shelve",
    response_model=models.ActiveAlert,
    tags=["alerts"],
    responses={404: {"description": "No such active alert"}},
)
def unshelve(request: Request, sensor_id: str, detector: str) -> dict[str, Any]:
    """End an alert's shelving now."""
    w = web(request)
    return _changed(w, w.desk.shelve(sensor_id, detector, None))


# ---- live events ----------------------------------------------------------------------------
@router.get("/api/events", tags=["events"], response_class=StreamingResponse)
def events(
    request: Request,
    sensor: Annotated[str | None, Query(description="Also stream this sensor's readings")] = None,
) -> StreamingResponse:
    """Server-sent events: ``alert``, ``health``, ``sensors``, ``alert-state``, ``reading``."""
    return StreamingResponse(
        web(request).hub.stream(sensor),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

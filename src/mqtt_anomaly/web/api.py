"""The REST API: sensors, readings history, alerts (acknowledge, shelve), maintenance windows,
probes, metrics.

Every parameter is bounded: numbers are finite and within a range, texts (sensor ids,
detector names, a search) have a maximum length. A value out of bounds answers 422 naming
the parameter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from ..maintenance import Window
from ..store.base import NullStore
from ..topics import MAX_SENSOR_ID_LENGTH
from . import models
from .events import EventHub, alert_json
from .history import downsample
from .sensors import HEALTH_ORDER, expected_band, sensor_row
from .state import WebState

router = APIRouter()
SortKey = Literal["sensor_id", "health", "last_value", "last_seen"]
MAX_ROWS = 200_000
MAX_OFFSET = 10_000_000
MAX_BUCKETS = 100_000  # and at most ``http.max_points`` are returned
EVENTS_RETRY_AFTER = 5  # seconds a refused event stream is told to wait

# Bounded parameters (FastAPI's Path/Query carry the limits into validation and OpenAPI).
SensorPath = Annotated[str, Path(min_length=1, max_length=MAX_SENSOR_ID_LENGTH)]
DetectorPath = Annotated[str, Path(min_length=1, max_length=models.MAX_NAME_LENGTH)]
SensorQuery = Annotated[
    str | None, Query(min_length=1, max_length=MAX_SENSOR_ID_LENGTH, description="Sensor id")
]
DetectorQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=models.MAX_NAME_LENGTH, description="Detector name"),
]


def epoch_query(description: str) -> Any:
    """A finite time (epoch seconds) within :data:`models.MIN_TS` .. :data:`models.MAX_TS`."""
    return Query(ge=models.MIN_TS, le=models.MAX_TS, allow_inf_nan=False, description=description)


def web(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


# ---- probes and metrics -----------------------------------------------------------------
@router.get("/healthz", response_model=models.Probe, tags=["probes"])
def healthz(request: Request) -> dict[str, Any]:
    """Liveness: the service's event loop answers."""
    w = web(request)
    svc = w.service
    phases = Counter(a.phase for a in w.view.assets())
    return {
        "status": "ok",
        "connected": svc.client.connected,
        "subscribed": svc.ready.is_set(),
        "assets": dict(sorted(phases.items())),
    }


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
    q: Annotated[
        str | None,
        Query(max_length=MAX_SENSOR_ID_LENGTH, description="Sensor id contains (case-insensitive)"),
    ] = None,
    sort: SortKey = "health",
    desc: bool = False,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> dict[str, Any]:
    """The fleet, filtered, sorted and paginated (health sorts anomalous first)."""
    view = web(request).service.pipeline.view()
    shown = view.healths()
    ids = view.sensor_ids()
    counts = dict.fromkeys(HEALTH_ORDER, 0)
    for h in shown:
        counts[h] += 1
    slots = range(len(ids))
    if health is not None:
        slots = [s for s in slots if shown[s] == health]  # type: ignore[assignment]
    if q:
        needle = q.lower()
        slots = [s for s in slots if needle in ids[s].lower()]  # type: ignore[assignment]
    key: Any
    if sort == "health":
        key = lambda s: (HEALTH_ORDER[shown[s]], ids[s])  # noqa: E731
    elif sort == "sensor_id":
        key = lambda s: ids[s]  # noqa: E731
    else:
        column = view.last_values() if sort == "last_value" else view.last_seen()
        key = lambda s: (column[s] != column[s], column[s] if column[s] == column[s] else 0.0)  # noqa: E731
    ordered = sorted(slots, key=key, reverse=desc)
    page = ordered[offset : offset + limit]
    return {
        "total": len(ordered),
        "offset": offset,
        "items": [sensor_row(view, s) for s in page],
        "counts": counts,
    }


@router.get(
    "/api/sensors/{sensor_id}",
    response_model=models.SensorDetail,
    tags=["sensors"],
    responses={404: {"description": "Unknown sensor"}},
)
def get_sensor(request: Request, sensor_id: SensorPath) -> dict[str, Any]:
    """One sensor, with the range its detectors expect next."""
    view = web(request).service.pipeline.view()
    slot = view.slot(sensor_id)
    if slot is None:
        raise HTTPException(404, f"unknown sensor {sensor_id!r}")
    return {**sensor_row(view, slot), "band": expected_band(view, slot)}


@router.get(
    "/api/sensors/{sensor_id}/readings", response_model=models.ReadingsHistory, tags=["sensors"]
)
async def readings(
    request: Request,
    sensor_id: SensorPath,
    start: Annotated[float | None, epoch_query("From (epoch s)")] = None,
    end: Annotated[float | None, epoch_query("Until (epoch s)")] = None,
    buckets: Annotated[
        int, Query(ge=1, le=MAX_BUCKETS, description="At most this many points")
    ] = 500,
    max_rows: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 50_000,
) -> dict[str, Any]:
    """Readings history from the store, downsampled to ``buckets`` time buckets.

    Without ``start``: the latest ``max_rows`` readings up to ``end``.
    """
    if start is not None and end is not None and end < start:
        loc, msg = ["query", "end"], "end must not be before start"
        raise HTTPException(422, [{"loc": loc, "msg": msg, "type": "value_error"}])
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
    sensor: SensorQuery = None,
    detector: DetectorQuery = None,
    state: Literal["raised", "cleared"] | None = None,
    since: Annotated[float | None, epoch_query("alert_ts >= since (epoch s)")] = None,
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
    sensor: SensorQuery = None,
    detector: DetectorQuery = None,
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
def acknowledge(request: Request, sensor_id: SensorPath, detector: DetectorPath) -> dict[str, Any]:
    """Acknowledge an active alert (until it clears)."""
    w = web(request)
    return _changed(w, w.desk.acknowledge(sensor_id, detector))


@router.post(
    "/api/alerts/{sensor_id}/{detector}/shelve",
    response_model=models.ActiveAlert,
    tags=["alerts"],
    responses={404: {"description": "No such active alert"}},
)
def shelve(
    request: Request, sensor_id: SensorPath, detector: DetectorPath, body: models.Shelve
) -> dict[str, Any]:
    """Shelve an active alert for a while: the dashboard hides it until then."""
    w = web(request)
    return _changed(w, w.desk.shelve(sensor_id, detector, body.seconds))


@router.delete(
    "/api/alerts/{sensor_id}/{detector}/shelve",
    response_model=models.ActiveAlert,
    tags=["alerts"],
    responses={404: {"description": "No such active alert"}},
)
def unshelve(request: Request, sensor_id: SensorPath, detector: DetectorPath) -> dict[str, Any]:
    """End an alert's shelving now."""
    w = web(request)
    return _changed(w, w.desk.shelve(sensor_id, detector, None))


# ---- maintenance windows -----------------------------------------------------------------
def _window_json(w: Window, source: str, now: float) -> dict[str, Any]:
    return {**w.model_dump(mode="json"), "source": source, "open": w.open_at(now)}


@router.get("/api/maintenance", response_model=list[models.MaintenanceWindow], tags=["maintenance"])
def maintenance_windows(request: Request) -> list[dict[str, Any]]:
    """The maintenance windows in force: from the configuration file and added here."""
    book = web(request).service.maintenance
    now = time.time()
    return [
        *(_window_json(w, "config", now) for w in book.configured),
        *(_window_json(w, "api", now) for w in book.added.values()),
    ]


@router.post(
    "/api/maintenance",
    response_model=models.MaintenanceWindow,
    status_code=201,
    tags=["maintenance"],
    responses={409: {"description": "A window of the configuration file has this id"}},
)
def add_maintenance_window(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Add a maintenance window (one-off: ``start``, ``end``; recurring: ``days``, ``at``,
    ``duration``), or replace the one added here with the same ``id``."""
    svc = web(request).service
    try:
        window = Window.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise HTTPException(422, f"{where}: {err['msg'].removeprefix('Value error, ')}") from None
    try:
        svc.maintenance.add(window)
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    svc.save_maintenance()
    return _window_json(window, "api", time.time())


@router.delete(
    "/api/maintenance/{window_id}",
    status_code=204,
    tags=["maintenance"],
    responses={404: {"description": "No window of this id was added here"}},
)
def remove_maintenance_window(
    request: Request, window_id: Annotated[str, Path(min_length=1, max_length=100)]
) -> Response:
    """Remove a window added here (those of the configuration file stay)."""
    svc = web(request).service
    if not svc.maintenance.remove(window_id):
        raise HTTPException(404, f"no window {window_id!r} added here")
    svc.save_maintenance()
    return Response(status_code=204)


# ---- assets -------------------------------------------------------------------------------
AssetPath = Annotated[str, Path(min_length=1, max_length=MAX_SENSOR_ID_LENGTH)]


@router.get("/api/assets", response_model=list[models.Asset], tags=["assets"])
def assets(request: Request) -> list[dict[str, Any]]:
    """Every asset with its phase, sensors, alarm and latest contributions."""
    return [dataclasses.asdict(a) for a in web(request).view.assets()]


@router.get(
    "/api/assets/{asset_id:path}/readings",
    response_model=models.AssetReadings,
    tags=["assets"],
    responses={404: {"description": "No such asset"}},
)
async def asset_readings(
    request: Request,
    asset_id: AssetPath,
    start: Annotated[float | None, epoch_query("From (epoch s)")] = None,
    buckets: Annotated[
        int, Query(ge=1, le=MAX_BUCKETS, description="At most this many points a sensor")
    ] = 300,
) -> dict[str, Any]:
    """The readings history of every sensor of the asset, downsampled, to chart them
    together (sensor ids may hold ``/``, which a sensor's own readings path cannot)."""
    w = web(request)
    found = w.view.asset(asset_id)
    if found is None:
        raise HTTPException(404, "no such asset")
    buckets = min(buckets, w.settings.max_points)
    store = w.service.store
    series = []
    for sid, name in zip(found.sensors, found.names, strict=True):
        rows: list[Any] = []
        if store is not None:
            rows = await asyncio.to_thread(store.readings, sid, start=start, limit=MAX_ROWS)
        series.append({"sensor_id": sid, "name": name, "buckets": downsample(rows, buckets)})
    return {"asset_id": found.id, "series": series}


@router.get(
    "/api/assets/{asset_id:path}",
    response_model=models.Asset,
    tags=["assets"],
    responses={404: {"description": "No such asset"}},
)
def asset(request: Request, asset_id: AssetPath) -> dict[str, Any]:
    """One asset (its id may hold ``/``)."""
    if asset_id.endswith("/recommission"):
        raise HTTPException(405, "recommission is a POST")
    found = web(request).view.asset(asset_id)
    if found is None:
        raise HTTPException(404, "no such asset")
    return dataclasses.asdict(found)


@router.post(
    "/api/assets/{asset_id:path}/recommission",
    response_model=models.Asset,
    tags=["assets"],
    responses={404: {"description": "No such asset"}},
)
def recommission(request: Request, asset_id: AssetPath) -> dict[str, Any]:
    """Start learning the asset again (after maintenance): it raises nothing until its
    commissioning is over."""
    w = web(request)
    if not w.service.recommission_asset(asset_id):
        raise HTTPException(404, "no such asset")
    found = w.view.asset(asset_id)
    assert found is not None
    w.hub.send("asset", dataclasses.asdict(found))
    return dataclasses.asdict(found)


# ---- live events ----------------------------------------------------------------------------
class EventStream(StreamingResponse):
    """An event stream that holds one of the hub's slots until the response ends.

    The slot is given back however the response ends (the client leaves, the server stops,
    an error), also when the stream's generator never started.
    """

    def __init__(self, hub: EventHub, sensor: str | None) -> None:
        super().__init__(
            hub.stream(sensor),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.release()


@router.get(
    "/api/events",
    tags=["events"],
    response_class=StreamingResponse,
    responses={503: {"description": "Every event stream slot is taken (see Retry-After)"}},
)
async def events(
    request: Request,
    sensor: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_SENSOR_ID_LENGTH,
            description="Also stream this sensor's readings",
        ),
    ] = None,
) -> Response:
    """Server-sent events: ``alert``, ``health``, ``sensors``, ``alert-state``, ``reading``.

    At most ``http.max_event_clients`` streams at once: beyond, 503 with ``Retry-After``.
    """
    w = web(request)
    if not w.hub.reserve():
        w.refused["event_clients"] += 1
        return JSONResponse(
            {"detail": "too many event streams; retry later"},
            503,
            headers={"Retry-After": str(EVENTS_RETRY_AFTER)},
        )
    try:
        return EventStream(w.hub, sensor)
    except BaseException:
        w.hub.release()
        raise

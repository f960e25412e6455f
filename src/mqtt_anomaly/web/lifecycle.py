"""The REST API of the configuration lifecycle: status, reload (and rollback), the shadow's
agreement report."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request

from ..topics import MAX_SENSOR_ID_LENGTH
from .state import WebState

router = APIRouter()


def _web(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


@router.get("/api/status", tags=["lifecycle"])
def status(request: Request) -> dict[str, Any]:
    """The configuration (and model) version in force, reload counts and the last reload."""
    svc = _web(request).service
    shadow = svc.shadow
    return {
        **svc.reloads.status(),
        "shadow": {"enabled": shadow is not None, "label": shadow.label if shadow else None},
        "detectors": [d.name for d in svc.pipeline.detectors],
    }


@router.post(
    "/api/reload",
    tags=["lifecycle"],
    responses={
        403: {"description": "No http.token configured: reloading over HTTP is off"},
        409: {"description": "Refused (settings that need a restart) or failed (invalid)"},
    },
)
async def reload(
    request: Request,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> dict[str, Any]:
    """Read the configuration file again and apply it between two batches, as SIGHUP does;
    ``{"rollback": true}``: go back to the configuration the last reload replaced.

    Only with ``http.token`` set (the token is then required for every request)."""
    w = _web(request)
    if w.settings.token is None and w.settings.token_file is None:
        raise HTTPException(403, "set http.token to reload over HTTP (or send SIGHUP)")
    body = body or {}
    unknown = set(body) - {"rollback"}
    if unknown or not isinstance(body.get("rollback", False), bool):
        raise HTTPException(422, 'body: only {"rollback": true|false}')
    reloads = w.service.reloads
    outcome = reloads.rollback("api") if body.get("rollback") else reloads.from_source("api")
    answer = outcome.as_json()
    if outcome.result in ("refused", "failed"):
        raise HTTPException(409, answer)
    return answer


@router.get("/api/shadow", tags=["lifecycle"])
def shadow(
    request: Request,
    sensor: Annotated[
        str | None, Query(min_length=1, max_length=MAX_SENSOR_ID_LENGTH, description="Sensor id")
    ] = None,
) -> dict[str, Any]:
    """Agreement of the live and the candidate configuration: per sensor and detector, the
    raised alerts of both, of the live one only and of the candidate only, with examples
    (the seqs of their readings)."""
    run = _web(request).service.shadow
    if run is None:
        return {"enabled": False}
    return run.report(sensor)

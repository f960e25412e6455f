"""Operator feedback on alerts over REST: ``POST /api/alerts/{id}/feedback`` (``confirmed``
or ``false_alarm``, an optional note) and ``GET /api/feedback``.

The alert is found in the history store by its id (the ``id`` of every alert event, live or
stored); feedback needs a store that keeps it (SQLite or PostgreSQL: 409 otherwise). Writes
are token-protected like every request when ``http.token`` is set (:mod:`.auth`). The
verdicts become labels for ``models evaluate --labels feedback`` (docs/models.md).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ..store.feedback import MAX_NOTE, FeedbackStore
from .state import WebState

router = APIRouter()
MAX_ALERT_ID = 1024


class FeedbackIn(BaseModel):
    """An operator's verdict on an alert."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["confirmed", "false_alarm"]
    note: str = Field("", max_length=MAX_NOTE)


class FeedbackOut(BaseModel):
    """Feedback as stored: the alert it is about, the verdict, when it was given."""

    alert_id: str
    sensor_id: str
    detector: str
    reading_ts: float | None
    alert_ts: float
    verdict: Literal["confirmed", "false_alarm"]
    note: str
    at: float


def _store(request: Request) -> FeedbackStore:
    web: WebState = request.app.state.web
    store = web.service.store
    if not isinstance(store, FeedbackStore):
        raise HTTPException(409, "feedback needs a history store (store.url sqlite or postgresql)")
    return store


@router.post(
    "/api/alerts/{alert_id:path}/feedback",
    response_model=FeedbackOut,
    status_code=201,
    tags=["feedback"],
    responses={
        404: {"description": "No such raised alert in the store"},
        409: {"description": "No history store keeps feedback"},
    },
)
async def add_feedback(
    request: Request,
    alert_id: Annotated[str, Path(min_length=1, max_length=MAX_ALERT_ID)],
    body: FeedbackIn,
) -> dict[str, Any]:
    """Mark a raised alert ``confirmed`` (its reading was anomalous) or ``false_alarm``
    (normal), with an optional note; a later verdict on the same alert replaces it."""
    store = _store(request)
    try:
        fb = await asyncio.to_thread(store.add_feedback, alert_id, body.verdict, body.note)
    except LookupError as exc:
        raise HTTPException(404, str(exc.args[0])) from exc
    result: dict[str, Any] = fb.as_json()
    request.app.state.web.hub.send("feedback", result)
    return result


@router.get("/api/feedback", response_model=list[FeedbackOut], tags=["feedback"])
async def list_feedback(
    request: Request,
    since: Annotated[
        float | None, Query(allow_inf_nan=False, description="alert_ts >= since")
    ] = None,
    until: Annotated[
        float | None, Query(allow_inf_nan=False, description="alert_ts <= until")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[dict[str, Any]]:
    """Feedback given, by the time of the alert, oldest first."""
    store = _store(request)
    rows = await asyncio.to_thread(store.feedback, since=since, until=until, limit=limit)
    return [f.as_json() for f in rows]

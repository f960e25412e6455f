"""``mqtt-anomaly maintenance``: list, add and remove maintenance windows of a running service
through its REST API (``detect --http``; the token of ``[http]`` when one is set)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from ..console import fail, out
from ..errors import MqttAnomalyError
from ..maintenance import Window
from .options import ConfigOpt
from .settings import settings_from_cli

app = typer.Typer(
    help="Maintenance windows of a running service (its REST API).", no_args_is_help=True
)
ApiOpt = Annotated[
    str | None,
    typer.Option(
        "--api",
        help="The service's HTTP address (default: http://[http] listen, else 127.0.0.1:8080).",
        show_default=False,
    ),
]


def _call(config: Any, api: str | None, method: str, path: str, body: Any = None) -> Any:
    try:
        settings = settings_from_cli(config, {})
        token = settings.http.secret_token()
    except MqttAnomalyError as exc:
        fail(str(exc))
    if api is None:
        host, port = settings.http.address or ("127.0.0.1", 8080)
        scheme = "https" if settings.http.cert_file is not None else "http"
        api = f"{scheme}://{host}:{port}"
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api.rstrip("/") + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except ValueError:
            detail = exc.reason
        fail(f"{api}{path}: HTTP {exc.code}: {detail}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        fail(f"{api}: {getattr(exc, 'reason', exc)}", code=1)
    return json.loads(raw) if raw else None


@app.command("list")
def list_windows(
    config: ConfigOpt = None,
    api: ApiOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List the maintenance windows in force."""
    rows = _call(config, api, "GET", "/api/maintenance")
    if as_json:
        out.print(json.dumps(rows), markup=False)
        return
    table = Table("id", "open", "sensors", "when", "time zone", "source", "reason")
    for w in rows:
        who = " ".join(w["sensors"] + [f"asset:{a}" for a in w["assets"]]) or "(all)"
        if w["at"] is not None:
            days = ",".join(w["days"]) or "daily"
            when = f"{days} {w['at']} for {w['duration']:g} s"
        else:
            when = f"{w['start']} → {w['end']}"
        table.add_row(
            w["id"], "yes" if w["open"] else "", who, when, w["timezone"], w["source"], w["reason"]
        )
    out.print(table)


@app.command("add")
def add_window(
    config: ConfigOpt = None,
    api: ApiOpt = None,
    window_id: Annotated[str, typer.Option("--id", help="Name (default: made up).")] = "",
    reason: Annotated[str, typer.Option(help="Shown with every suppressed alert.")] = "",
    sensor: Annotated[list[str] | None, typer.Option(help="Sensor id glob (repeat).")] = None,
    asset: Annotated[list[str] | None, typer.Option(help="Asset glob (repeat).")] = None,
    start: Annotated[str | None, typer.Option(help="One-off: opens (ISO 8601).")] = None,
    end: Annotated[str | None, typer.Option(help="One-off: closes (ISO 8601).")] = None,
    days: Annotated[str, typer.Option(help="Recurring: e.g. sat,sun (empty: daily).")] = "",
    at: Annotated[str | None, typer.Option(help="Recurring: local opening time HH:MM.")] = None,
    duration: Annotated[float, typer.Option(help="Recurring: seconds open.")] = 0.0,
    timezone: Annotated[str, typer.Option(help="IANA time zone.")] = "UTC",
) -> None:
    """Add a maintenance window (one-off with --start/--end, or recurring with --at)."""
    body: dict[str, Any] = {
        "id": window_id,
        "reason": reason,
        "sensors": sensor or [],
        "assets": asset or [],
        "timezone": timezone,
    }
    if start is not None or end is not None:
        body.update(start=start, end=end)
    if at is not None or days or duration:
        body.update(days=[d for d in days.split(",") if d], at=at, duration=duration)
    try:  # the same check as the service's, before asking it
        Window.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "window"
        fail(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    made = _call(config, api, "POST", "/api/maintenance", body)
    out.print(f"added maintenance window {made['id']}", markup=False)


@app.command("remove")
def remove_window(
    window_id: Annotated[str, typer.Argument(help="The window's id.")],
    config: ConfigOpt = None,
    api: ApiOpt = None,
) -> None:
    """Remove a maintenance window added at run time."""
    path = f"/api/maintenance/{urllib.parse.quote(window_id, safe='')}"
    _call(config, api, "DELETE", path)
    out.print(f"removed maintenance window {window_id}", markup=False)

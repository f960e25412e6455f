"""``mqtt-anomaly assets``: list the running service's assets, recommission one.

Both talk to the service's REST API (``detect --http``): ``--url``, else ``http.listen`` of
the configuration, else ``http://127.0.0.1:8080``; the token is ``http.token`` /
``http.token_file`` when set.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any

import typer
from rich.table import Table

from ..config import Settings
from ..console import fail, out
from ..errors import MqttAnomalyError
from .options import ConfigOpt
from .settings import settings_from_cli

assets_app = typer.Typer(help="The running service's assets.", no_args_is_help=True)

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", help="The service's HTTP address (default: http.listen).", show_default=False
    ),
]
TIMEOUT = 10.0


def _base(settings: Settings, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    address = settings.http.address
    if address is None:
        return "http://127.0.0.1:8080"
    host, port = address
    scheme = "https" if settings.http.cert_file is not None else "http"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def _call(settings: Settings, url: str | None, method: str, path: str) -> Any:
    """One request to the API; a one-line error (exit 2) for anything but 2xx."""
    base = _base(settings, url)
    try:
        token = settings.http.secret_token()
    except MqttAnomalyError as exc:
        fail(str(exc))
    req = urllib.request.Request(base + path, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = ""
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(exc.read()).get("detail", "")
        fail(f"{method} {base}{path}: {exc.code} {detail or exc.reason}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        fail(f"cannot reach the service at {base}: {reason} (is `detect --http` running?)")


@assets_app.command("list")
def assets_list(
    config: ConfigOpt = None,
    url: UrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List the assets: phase, sensors, alarm and the leading contributions."""
    settings = settings_from_cli(config, {})
    rows = _call(settings, url, "GET", "/api/assets")
    if as_json:
        out.print(json.dumps(rows), markup=False)
        return
    table = Table("asset", "phase", "sensors", "rows", "alarm", "leading sensors")
    for a in rows:
        lead = sorted(a["contributions"].items(), key=lambda kv: -kv[1])[:3]
        named = ", ".join(f"{s} {x:.0%}" for s, x in lead if x > 0)
        table.add_row(
            a["id"], a["phase"], str(len(a["sensors"])), str(a["rows"]),
            "yes" if a["alarm"] else "", named,
        )  # fmt: skip
    out.print(table)


@assets_app.command("recommission")
def assets_recommission(
    asset_id: Annotated[str, typer.Argument(help="The asset's id.")],
    config: ConfigOpt = None,
    url: UrlOpt = None,
) -> None:
    """Start learning an asset again (after maintenance): it raises nothing until its
    commissioning is over."""
    settings = settings_from_cli(config, {})
    path = f"/api/assets/{urllib.parse.quote(asset_id, safe='/')}/recommission"
    got = _call(settings, url, "POST", path)
    out.print(f"{got['id']}: {got['phase']}", markup=False)

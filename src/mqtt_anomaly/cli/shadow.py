"""``mqtt-anomaly shadow``: the shadow candidate of a running service (``[shadow]``), through its
REST API (``detect --http``; the token of ``[http]`` when one is set)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Annotated, Any

import typer
from rich.table import Table

from ..console import fail, out
from .maintenance import ApiOpt, _call
from .options import ConfigOpt

app = typer.Typer(help="The shadow candidate of a running service.", no_args_is_help=True)


def _seqs(values: list[Any]) -> str:
    return " ".join(f"{v[0]:g}~{v[1]:g}" if isinstance(v, list) else f"{v:g}" for v in values)


@app.command("report")
def report(
    config: ConfigOpt = None,
    api: ApiOpt = None,
    sensor: Annotated[str | None, typer.Option(help="Only this sensor.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Agreement of the live configuration and the candidate: per sensor and detector, the
    raised alerts of both, of the live one only and of the candidate only (matched by the
    seqs of their readings within [shadow] tolerance), with examples."""
    path = "/api/shadow"
    if sensor is not None:
        path += "?" + urllib.parse.urlencode({"sensor": sensor})
    body = _call(config, api, "GET", path)
    if as_json:
        out.print(json.dumps(body), markup=False)
        return
    if not body.get("enabled"):
        fail("the service runs no shadow candidate ([shadow] enabled = false)", code=1)
    t = body["totals"]
    cost = body["cost"]
    out.print(
        f"shadow {body['label']}: {', '.join(body['detectors']['shadow'])} beside "
        f"{', '.join(body['detectors']['live'])}; tolerance {body['tolerance']:g} seqs\n"
        f"both {t['both']}, live only {t['live_only']}, shadow only {t['shadow_only']}; "
        f"{body['shadow_alerts']} shadow alert events, "
        f"{cost['us_per_reading']:.2f} µs per reading",
        markup=False,
    )
    table = Table("sensor", "detector", "both", "live only", "shadow only", "examples (seqs)")
    for r in body["sensors"]:
        ex = r["examples"]
        shown = "; ".join(
            f"{name} {_seqs(ex[key])}"
            for key, name in (("both", "both"), ("live_only", "live"), ("shadow_only", "shadow"))
            if ex[key]
        )
        table.add_row(
            r["sensor_id"],
            r["detector"],
            str(r["both"]),
            str(r["live_only"]),
            str(r["shadow_only"]),
            shown,
        )
    out.print(table)

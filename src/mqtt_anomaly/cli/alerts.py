"""``mqtt-anomaly alerts``: recent alerts from the history store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from ..console import fail, out
from ..errors import MqttAnomalyError
from .options import ConfigOpt
from .settings import settings_from_cli


def alerts(
    config: ConfigOpt = None,
    store: Annotated[
        str | None, typer.Option(help="History store URL.", show_default=False)
    ] = None,
    sensor: Annotated[str | None, typer.Option(help="Only this sensor.")] = None,
    detector: Annotated[str | None, typer.Option(help="Only this detector.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines output.")] = False,
    shadow: Annotated[
        bool, typer.Option("--shadow", help="The shadow candidate's alerts ([shadow]) instead.")
    ] = False,
) -> None:
    """List recent alerts from the history store."""
    settings = settings_from_cli(config, {"store": {"url": store}})
    from ..messages import encode
    from ..store import open_store

    try:
        st = open_store(settings.store.url, settings.store)
    except MqttAnomalyError as exc:
        fail(str(exc))
    with st:
        rows = st.recent_alerts(limit=limit, sensor_id=sensor, detector=detector, shadow=shadow)
    if as_json:
        for a in rows:
            out.print(encode(a).decode(), markup=False)
        return
    table = Table("alert time (UTC)", "sensor", "detector", "severity", "state", "value", "score")
    for a in rows:
        when = datetime.fromtimestamp(a.alert_ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        value = "" if a.value is None else f"{a.value:.2f}"
        table.add_row(when, a.sensor_id, a.detector, a.severity, a.state, value, f"{a.score:.3f}")
    out.print(table)

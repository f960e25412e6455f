"""``mqtt-anomaly config``: inspect the effective configuration."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ..config import Settings, settings_as_toml
from ..console import fail, out
from .options import BrokerOpt, ConfigOpt
from .settings import settings_from_cli

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


def _line(key: str, value: Any, source: str) -> str:
    text = json.dumps(list(value) if isinstance(value, tuple) else value)
    return f"{key} = {text}  # {source}"


def _sensor_lines(settings: Settings, sensor: str) -> list[str]:
    from ..assets import AssetBook
    from ..inherit import effective

    hit = AssetBook(settings.assets).resolve(sensor, None)
    asset = hit[0] if hit else None
    lines = [f"# sensor {sensor}" + (f" (asset {asset})" if asset else " (in no asset)")]
    for key, v in effective(settings, sensor, asset).items():
        lines.append(_line(key, v.value, v.source))
    return lines


def _asset_lines(settings: Settings, asset: str) -> list[str]:
    from ..inherit import effective

    a = settings.assets
    defined = next((d for d in a.define if d.id == asset), None)
    how = "defined in assets.define" if defined else f"by assets.template {a.template!r}"
    lines = [f"# asset {asset} ({how})"]
    if defined:
        lines.append(_line("sensors", defined.sensors, "assets.define"))
    for key in ("method", "commission_rows", "commission_seconds", "stale_after"):
        default = type(a).model_fields[key].default
        value = getattr(a, key)
        lines.append(_line(key, value, "defaults" if value == default else "assets"))
    for key, param in sorted(a.params.items()):
        lines.append(_line(f"params.{key}", param, "assets.params"))
    lines.append("# its sensors, before their own overrides:")
    for key, v in effective(settings, None, asset).items():
        lines.append(_line(key, v.value, v.source))
    return lines


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    sensor: Annotated[
        str | None,
        typer.Option(help="The effective settings of this sensor and where each came from."),
    ] = None,
    asset: Annotated[
        str | None,
        typer.Option(help="The effective settings of this asset and where each came from."),
    ] = None,
) -> None:
    """Print the effective configuration as TOML (secrets masked); with --sensor or --asset,
    the settings that apply to it, each with the level it came from."""
    settings = settings_from_cli(config, {"broker": {"url": broker}})
    if sensor is not None and asset is not None:
        fail("--sensor and --asset: one at a time")
    if sensor is not None:
        out.print("\n".join(_sensor_lines(settings, sensor)), markup=False)
    elif asset is not None:
        out.print("\n".join(_asset_lines(settings, asset)), markup=False)
    else:
        out.print(settings_as_toml(settings), markup=False, end="")

"""``mqtt-anomaly config``: inspect the effective configuration."""

from __future__ import annotations

import typer

from ..config import settings_as_toml
from ..console import out
from .options import BrokerOpt, ConfigOpt
from .settings import settings_from_cli

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(config: ConfigOpt = None, broker: BrokerOpt = None) -> None:
    """Print the effective configuration as TOML (secrets masked)."""
    settings = settings_from_cli(config, {"broker": {"url": broker}})
    out.print(settings_as_toml(settings), markup=False, end="")

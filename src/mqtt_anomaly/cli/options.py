"""Command-line options shared by several commands.

Imported by the command modules wherever they live (``cli/``, ``replay/``, ``simulate/``, ...);
it imports nothing of the package, so a command never depends on the app that mounts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file.", show_default=False),
]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker",
        "-b",
        help="Broker URL, e.g. mqtt://localhost:1883 or mqtts://host:8883.",
        show_default=False,
    ),
]
AssetsOpt = Annotated[
    int | None,
    typer.Option(
        help="N simulated machines (see --asset-kind) instead of temperature sensors.",
        metavar="N",
        show_default=False,
    ),
]
AssetKindOpt = Annotated[
    str, typer.Option(help="Kind of machine with --assets: pump or compressor.")
]

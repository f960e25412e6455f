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

# ---- replaying and scoring recorded readings (models, evaluate history) ----------------------
TIME_HELP = "epoch seconds or ISO 8601 (UTC unless an offset is given)"
SinceOpt = Annotated[
    str | None, typer.Option(help=f"Readings from this time on: {TIME_HELP}.", show_default=False)
]
UntilOpt = Annotated[
    str | None, typer.Option(help=f"Readings up to this time: {TIME_HELP}.", show_default=False)
]
DetectorsOpt = Annotated[
    str | None,
    typer.Option(
        help="Detectors, comma-separated (instead of detector.detectors).",
        metavar="A,B,C",
        show_default=False,
    ),
]
LabelsOpt = Annotated[
    str,
    typer.Option(
        help="feedback (the store's operator feedback), feedback:STORE_URL, sim:PATH or "
        "PATH.jsonl (simulator labels), csv:PATH (a labelled CSV, whose readings are replayed).",
        show_default=False,
    ),
]
LabelledFromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="Readings to replay: a store URL or kafka://HOST:PORT/TOPIC (default: store.url; "
        "csv labels: the CSV).",
        show_default=False,
    ),
]
GraceOpt = Annotated[
    float, typer.Option(help="Seconds after a labelled time an alert still counts for it.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

"""``mqtt-anomaly demo``: a small simulated fleet and the detector in one process."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from ..console import run, setup_logging
from .options import BrokerOpt, ConfigOpt
from .settings import settings_from_cli


def demo(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    embedded: Annotated[
        bool, typer.Option("--embedded", help="Always start the embedded broker.")
    ] = False,
    sensors: Annotated[int, typer.Option("--sensors", "-n", help="Number of sensors.")] = 5,
    duration: Annotated[
        float | None,
        typer.Option(
            help="Stop after this many seconds (default: run until Ctrl-C).", show_default=False
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.", show_default=False)] = None,
) -> None:
    """Run a small simulated fleet and the detector together, printing live alerts.

    Broker: --broker when given; else localhost:1883 when a broker answers there; else an
    embedded broker on a free port. A spike is injected 5 seconds in, a level shift and a
    stuck sensor later on.
    """
    settings = settings_from_cli(
        config,
        {
            "broker": {"url": broker},
            "simulator": {"sensors": sensors, "seed": seed, "faults": _NO_RANDOM_FAULTS},
        },
    )
    from ..demo import run_demo

    setup_logging(False, level=logging.WARNING)
    run(
        lambda: run_demo(
            settings, broker_given=broker is not None, embedded=embedded, duration=duration
        )
    )


_NO_RANDOM_FAULTS = {
    "spike": 0.0,
    "level_shift": 0.0,
    "drift": 0.0,
    "stuck": 0.0,
    "noise_burst": 0.0,
    "dropout": 0.0,
    "crash": 0.0,
}

"""The ``mqtt-anomaly`` command line: the typer app and :func:`main`.

One module per command group: ``detect``, ``alerts``, ``demo``, ``config``,
``maintenance`` and ``shadow`` live here; the
other commands live with what they drive (``simulate/command.py``, ``bench/command.py``,
``certs.py``, ``replay/command.py``, ``evaluate/cli.py``,
``models/cli.py``) and are mounted by this module.
Every command module takes its shared options from :mod:`.options` and its settings from
:mod:`.settings`, never from this module.

The app is assembled on first use (``mqtt_anomaly.cli.app`` or :func:`main`): importing
``mqtt_anomaly.cli.options`` runs this file first, and a command module that does so must not
find itself imported again half-way by the app that mounts it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated

import typer

from .. import __version__
from ..console import out

if TYPE_CHECKING:
    app: typer.Typer

__all__ = ["app", "main"]


def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)
    ] = False,
) -> None:
    if version:
        out.print(f"mqtt-anomaly {__version__}")
        raise typer.Exit()


@functools.cache
def _build_app() -> typer.Typer:
    from ..bench.command import bench
    from ..certs import certs
    from ..evaluate.cli import app as evaluate_app
    from ..models.cli import app as models_app
    from ..replay.command import replay
    from ..simulate.command import simulate
    from .alerts import alerts
    from .assets import assets_app
    from .cluster import app as cluster_app
    from .config import config_app
    from .demo import demo
    from .detect import detect
    from .maintenance import app as maintenance_app
    from .shadow import app as shadow_app

    root = typer.Typer(
        name="mqtt-anomaly",
        help="Real-time anomaly detection for industrial IoT sensors over MQTT.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    root.callback()(_root)
    root.add_typer(config_app, name="config")
    root.add_typer(maintenance_app, name="maintenance")
    root.add_typer(assets_app, name="assets")
    root.add_typer(shadow_app, name="shadow")
    root.add_typer(cluster_app, name="cluster")
    root.command("detect")(detect)
    root.command("alerts")(alerts)
    root.command("demo")(demo)
    root.command("simulate")(simulate)
    root.command("bench")(bench)
    root.command("certs")(certs)
    root.command("replay")(replay)
    root.add_typer(evaluate_app, name="evaluate", help="Score detectors: NAB, your own CSV.")
    root.add_typer(models_app, name="models")
    return root


def __getattr__(name: str) -> typer.Typer:
    if name == "app":
        return _build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Run the command line (the ``mqtt-anomaly`` console script, ``python -m mqtt_anomaly``)."""
    _build_app()()

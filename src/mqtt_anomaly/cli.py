"""The ``mqtt-anomaly`` command line."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from . import __version__
from .config import Settings, load_settings, settings_as_toml
from .console import fail, out, run, setup_logging
from .errors import MqttAnomalyError
from .options import BrokerOpt, ConfigOpt

app = typer.Typer(
    name="mqtt-anomaly",
    help="Real-time anomaly detection for industrial IoT sensors over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def settings_from_cli(config: Path | None, overrides: dict[str, Any]) -> Settings:
    """Effective settings for a command; a mistake ends the command with one line."""
    try:
        return load_settings(config, overrides)
    except MqttAnomalyError as exc:
        fail(str(exc))


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)
    ] = False,
) -> None:
    if version:
        out.print(f"mqtt-anomaly {__version__}")
        raise typer.Exit()


@config_app.command("show")
def config_show(config: ConfigOpt = None, broker: BrokerOpt = None) -> None:
    """Print the effective configuration as TOML (secrets masked)."""
    settings = settings_from_cli(config, {"broker": {"url": broker}})
    out.print(settings_as_toml(settings), markup=False, end="")


@app.command()
def detect(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    client_id: Annotated[
        str | None,
        typer.Option(help="MQTT client id; keep it stable so the broker keeps the session."),
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            "-t",
            help="Topic filter to subscribe (repeatable); default: readings and status wildcards.",
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Critical threshold (°C).", show_default=False)
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="History store URL: sqlite:///PATH, postgresql://USER@HOST/DB or none://.",
            show_default=False,
        ),
    ] = None,
    kafka: Annotated[
        str | None,
        typer.Option(
            help="Also send readings, alerts and health to Kafka: kafka://HOST:PORT[,HOST:PORT].",
            show_default=False,
        ),
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            help="Serve the dashboard, REST API and /metrics on [HOST:]PORT "
            "(host 127.0.0.1 when only a port is given).",
            show_default=False,
        ),
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(help="File whose first line is the broker password.", show_default=False),
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Where detector state is saved.", show_default=False)
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print every reading received.")
    ] = False,
) -> None:
    """Subscribe to the fleet's readings, score every reading, publish alerts.

    Prints `[ALERT]` lines, publishes alerts on `factory/{sensor_id}/alerts` and a retained
    `factory/{sensor_id}/health`, and keeps history in the store (and Kafka, with `--kafka`).
    A reading is acknowledged to the broker once stored. Stops cleanly on Ctrl-C or SIGTERM,
    saving detector state for the next start.
    """
    settings = settings_from_cli(
        config,
        {
            "broker": {"url": broker, "client_id": client_id, "password_file": password_file},
            "topics": {"subscribe": tuple(topic) if topic else None},
            "http": {"listen": http},
            "detector": {"threshold": threshold},
            "store": {"url": store},
            "kafka": {"url": kafka},
            "service": {"state_dir": state_dir, "verbose": verbose or None},
        },
    )
    from .service import run_service

    setup_logging(False)
    run(lambda: run_service(settings))


@app.command()
def alerts(
    config: ConfigOpt = None,
    store: Annotated[
        str | None, typer.Option(help="History store URL.", show_default=False)
    ] = None,
    sensor: Annotated[str | None, typer.Option(help="Only this sensor.")] = None,
    detector: Annotated[str | None, typer.Option(help="Only this detector.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines output.")] = False,
) -> None:
    """List recent alerts from the history store."""
    settings = settings_from_cli(config, {"store": {"url": store}})
    from .messages import encode
    from .store import open_store

    try:
        st = open_store(settings.store.url, settings.store)
    except MqttAnomalyError as exc:
        fail(str(exc))
    with st:
        rows = st.recent_alerts(limit=limit, sensor_id=sensor, detector=detector)
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


@app.command()
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
    from .demo import run_demo

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


def _register_subcommands() -> None:
    from .bench.command import bench
    from .certs import certs
    from .evaluate.cli import app as evaluate_app
    from .replay.command import replay
    from .simulate.command import simulate

    app.command("simulate")(simulate)
    app.command("bench")(bench)
    app.command("certs")(certs)
    app.command("replay")(replay)
    app.add_typer(evaluate_app, name="evaluate", help="Score detectors: NAB, your own CSV.")


_register_subcommands()


def main() -> None:
    app()

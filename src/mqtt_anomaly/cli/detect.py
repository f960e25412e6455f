"""``mqtt-anomaly detect``: the detector service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import fail, run, setup_logging
from .options import BrokerOpt, ConfigOpt
from .settings import settings_from_cli


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
    registry: Annotated[
        Path | None,
        typer.Option(
            help="Model registry: start from its current model (default "
            "<state-dir>/models, [models] registry).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print every reading received.")
    ] = False,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="Run as a worker of a NATS JetStream cluster: nats://HOST:PORT[,HOST:PORT...] "
            "(see docs/architecture.md#scale-out-on-nats-jetstream).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Subscribe to the fleet's readings, score every reading, publish alerts.

    Prints `[ALERT]` lines, publishes alerts on `factory/{sensor_id}/alerts` and a retained
    `factory/{sensor_id}/health`, and keeps history in the store (and Kafka, with `--kafka`).
    A reading is acknowledged to the broker once stored. Stops cleanly on Ctrl-C or SIGTERM,
    saving detector state for the next start. With a current model in the model registry
    (`mqtt-anomaly models promote`), starts from it: its detector configuration and state.
    SIGHUP reads the configuration file again and applies its detection settings without a
    restart.
    """
    overrides = {
        "broker": {"url": broker, "client_id": client_id, "password_file": password_file},
        "topics": {"subscribe": tuple(topic) if topic else None},
        "http": {"listen": http},
        "detector": {"threshold": threshold},
        "store": {"url": store},
        "kafka": {"url": kafka},
        "service": {"state_dir": state_dir, "verbose": verbose or None},
        "models": {"registry": registry},
        "cluster": {"urls": cluster},
    }
    settings = settings_from_cli(config, overrides)
    if settings.cluster.enabled:
        from ..cluster.worker import run_worker

        setup_logging(False)
        run(lambda: run_worker(settings))
        return
    from ..errors import StateFileError
    from ..liveconf import ConfigSource
    from ..models.registry import current_model
    from ..service import STATE_FILE, run_service
    from ..statefile import prepare_dir

    setup_logging(False)
    try:  # before the model registry in it: an unusable state dir is one line, not two
        prepare_dir(settings.service.state_dir)
    except StateFileError as exc:
        fail(str(exc))
    model = current_model(settings, settings.service.state_dir / STATE_FILE)
    if model is not None:
        settings = model.settings(settings)
    source = ConfigSource(config, overrides)  # read again on SIGHUP and POST /api/reload
    run(lambda: run_service(settings, model=model, source=source))

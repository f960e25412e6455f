"""``python -m mqtt_anomaly.bench``: the same command as ``mqtt-anomaly bench``."""

import typer

from .command import bench

typer.run(bench)

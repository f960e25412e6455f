"""A private Mosquitto for the benchmark: own config, own free port on loopback.

Queue and in-flight limits are off (a flat-out burst is queued by the broker, not dropped) and
persistence is off (the broker does not write its database while we measure). By default
its TCP settings are Mosquitto's stock ones (Nagle's algorithm on, as Debian's package and the
official image run it): a small write to a peer can wait for that peer's delayed ACK, up to
40 ms on Linux, unless the peer acknowledges at once. With ``nodelay`` the broker sets
TCP_NODELAY on its connections (``set_tcp_nodelay true``). As root it runs as root so that it
can use our temporary directory.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from ..errors import BrokerError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    path = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return path if Path(path).exists() else None


class Mosquitto:
    """One Mosquitto process; ``with Mosquitto(workdir) as broker: broker.url``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        nodelay: bool = False,
        max_inflight: int = 0,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.nodelay = nodelay
        self.max_inflight = max_inflight
        """``max_inflight_messages``: 0 (no limit, as ``deploy/mosquitto/mosquitto.conf``)
        or Mosquitto's stock 20."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 10.0) -> Self:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed: install it or pass --broker URL")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        run_as = f"user {getpass.getuser()}\n" if os.geteuid() == 0 else ""
        conf.write_text(
            run_as + f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"
            f"max_inflight_messages {self.max_inflight}\n"
            + ("set_tcp_nodelay true\n" if self.nodelay else "")
            + f"log_dest file {self.workdir / 'mosquitto.log'}\n"
            "log_type error\nlog_type warning\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self.proc.returncode} at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""Each side of the benchmark in its own process, and the parent's handle on it.

A child talks to the parent over a :func:`multiprocessing.Pipe` with tuples: it sends
``("ready", info)`` when it is connected, ``("result", data)`` at the end, ``("error", text)``
if it fails; the parent may send commands (``"stop"``, ``"snapshot"``, ...). Children are
started with the *spawn* method: a fresh interpreter, nothing inherited from the parent's
threads or event loop.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from ..console import quiet_libraries
from ..errors import MqttAnomalyError


class BenchError(MqttAnomalyError):
    """A side of the benchmark failed; the message says which and why."""


class Child:
    """One child process and its end of the pipe."""

    def __init__(self, name: str, target: Callable[..., None], *args: object) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child_conn = ctx.Pipe()
        self.proc: BaseProcess = ctx.Process(
            target=target, args=(child_conn, *args), name=f"bench-{name}", daemon=True
        )
        self.proc.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        return self.proc.pid or 0

    def send(self, *cmd: object) -> None:
        self.conn.send(cmd)

    def expect(self, kind: str, timeout: float) -> Any:
        """The payload of the next message, which must be ``kind``; raises otherwise."""
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.1):
            if not self.proc.is_alive():
                raise BenchError(f"{self.name} process exited ({self.proc.exitcode})")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no {kind!r} within {timeout:.0f}s")
        try:
            got, data = self.conn.recv()
        except EOFError as exc:
            raise BenchError(f"{self.name} process exited ({self.proc.exitcode})") from exc
        if got == "error":
            raise BenchError(str(data))
        if got != kind:
            raise BenchError(f"{self.name}: expected {kind!r}, got {got!r}")
        return data

    def close(self, timeout: float = 15.0) -> None:
        """Wait for the process to end; terminate it if it does not."""
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self.conn.close()


def quiet_child(workdir: str, role: str) -> None:
    """In a child: operator lines to /dev/null, warnings to a log file in ``workdir``."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 — lives as long as the process
    logging.basicConfig(
        level=logging.WARNING,
        filename=str(Path(workdir) / f"{role}-{os.getpid()}.log"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    quiet_libraries()


def report_errors(conn: Connection, role: str, body: Callable[[], Any]) -> None:
    """Run ``body`` and send its result, or the error it raised, to the parent."""
    try:
        result = body()
    except MqttAnomalyError as exc:
        conn.send(("error", f"{role}: {exc}"))
    except Exception as exc:
        conn.send(("error", f"{role}: {type(exc).__name__}: {exc}"))
    except KeyboardInterrupt:
        return
    else:
        conn.send(("result", result))

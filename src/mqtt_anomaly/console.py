"""Console output: the operator-facing lines, logging set-up, and one-line user errors."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

from rich.console import Console

from .errors import MqttAnomalyError

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def setup_logging(verbose: bool = False, level: int = logging.INFO) -> None:
    """Plain log lines on stderr; MQTT libraries only from ERROR."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    quiet_libraries()


def quiet_libraries() -> None:
    """MQTT libraries log every lost socket write; keep only their errors."""
    for name in ("gmqtt", "mqtt_anomaly.transport.gmqtt", "amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit: for user mistakes, never a traceback."""
    err.print(f"[bold red]error:[/] {message}", markup=True)
    raise SystemExit(code)


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async entry point; package errors become one line and exit code 2."""
    try:
        return asyncio.run(main())
    except MqttAnomalyError as exc:
        fail(str(exc))
    except KeyboardInterrupt as exc:
        raise SystemExit(130) from exc


class RateLimitedLog:
    """At most one log record per ``period`` seconds per key; counts what it suppressed."""

    def __init__(self, logger: logging.Logger, period: float = 5.0) -> None:
        self.logger = logger
        self.period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.INFO, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) >= self.period:
            n = self._suppressed.pop(key, 0)
            suffix = f" ({n} similar suppressed)" if n else ""
            self.logger.log(level, msg + suffix, *args)
            self._last[key] = now
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1


def emit(line: str) -> None:
    """One operator line on stdout, flushed (these are what the README shows)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class LineBudget:
    """At most ``rate`` lines per second (a token bucket of one second's lines); counts the
    lines refused, for one summary line (:meth:`summary`)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._at = clock()
        self.suppressed = 0  # since the last summary
        self.suppressed_total = 0

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        self.suppressed_total += 1
        return False

    def summary(self) -> str | None:
        """The refused lines since the last summary, as one line (None if there were none)."""
        if not self.suppressed:
            return None
        n, self.suppressed = self.suppressed, 0
        return (
            f"[ALERT] … {n:,} more alert{'s' if n > 1 else ''} not shown "
            "(the dashboard and `mqtt-anomaly alerts` list them)"
        )

"""The operator's console as a sink: alert lines (at most ``alerts.console_rate`` a second,
then one summary line), flood lines, connection lines, and with ``service.verbose`` one line
per reading."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..console import LineBudget, emit
from .base import BaseSink

if TYPE_CHECKING:
    from ..messages import Alert
    from ..pipeline import Output


class ConsoleSink(BaseSink):
    """Lines on stdout. :meth:`write` prints the readings (``verbose``); the alerts shown one
    by one come from the flood filter (:class:`~.mqtt.MqttSink` calls :meth:`show`, so the
    console and the MQTT alert topic show the same alerts), its lines through :meth:`line`."""

    name = "console"

    def __init__(self, *, verbose: bool = False, rate: float = 20.0) -> None:
        self.verbose = verbose
        self.budget = LineBudget(rate)

    def write(self, out: Output) -> None:
        if self.verbose:
            for r in out.readings:
                emit(f"[DATA] Received {r.value:.1f}°{r.unit} from {r.sensor_id}")

    def line(self, text: str) -> None:
        emit(text)

    def show(self, alerts: list[Alert]) -> None:
        """One line per alert while the budget allows; the rest are counted for
        :meth:`summarise`."""
        allow = self.budget.allow
        for alert in alerts:
            if allow():
                emit(alert_line(alert))

    def summarise(self) -> None:
        """One line for the alerts the budget refused since the last summary, if any."""
        if more := self.budget.summary():
            emit(more)


def alert_line(a: Alert) -> str:
    """The operator's line for one alert event (a suppressed one says why it is)."""
    line = _alert_line(a)
    return f"{line} [suppressed: {a.suppressed}]" if a.suppressed else line


def _alert_line(a: Alert) -> str:
    value = f"{a.value:.1f}°C" if a.value is not None else ""
    if a.state == "cleared":
        return f"[CLEAR] {a.sensor_id} {a.detector} alert cleared {value}".rstrip()
    if a.detector == "offline":
        return f"[ALERT] 🔌 {a.sensor_id} OFFLINE (Last Will)"
    if a.detector == "silence":
        return f"[ALERT] ⏱️ {a.sensor_id} SILENT: {a.message}"
    if a.severity == "critical":
        return f"[ALERT] 🚨 CRITICAL ANOMALY DETECTED: {value}! ({a.sensor_id}, {a.detector})"
    return f"[ALERT] ⚠️ WARNING: anomaly on {a.sensor_id}: {value} ({a.detector})"

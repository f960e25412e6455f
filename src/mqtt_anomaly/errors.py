"""The package's exceptions.

Every error raised on purpose derives from :class:`MqttAnomalyError`, so a caller can catch
one type. Third-party errors are translated at the boundary with ``raise ... from exc``::

    MqttAnomalyError
    ├── ConfigError        a bad setting: the message names the key and the problem
    ├── PayloadError       an MQTT payload that cannot become a reading (carries ``reason``)
    ├── BrokerError        the broker cannot be reached or refused us
    ├── StoreError         the history store failed
    ├── SinkError          a sink's client (Kafka) refused or failed
    ├── StateFileError     saved state that cannot be written or read back (also a ValueError)
    └── ModelError         a model version that cannot be loaded, promoted or rolled back
"""

from __future__ import annotations


class MqttAnomalyError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(MqttAnomalyError):
    """A configuration value is missing, malformed or out of range."""


class PayloadError(MqttAnomalyError):
    """An incoming payload was rejected; ``reason`` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BrokerError(MqttAnomalyError):
    """The MQTT broker could not be reached, or refused the connection."""


class StoreError(MqttAnomalyError):
    """The history store could not be opened or written."""


class StateFileError(MqttAnomalyError, ValueError):
    """Saved detector state could not be written, read, or does not fit: one line."""


class SinkError(MqttAnomalyError):
    """A sink's client library (Kafka's) refused or failed what the sink asked of it."""


class ModelError(MqttAnomalyError):
    """A model version (:mod:`mqtt_anomaly.models`) is missing, damaged, foreign or tampered
    with, or the registry refused a promotion or rollback: one line."""

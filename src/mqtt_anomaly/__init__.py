"""mqtt-anomaly: real-time anomaly detection for industrial IoT sensors over MQTT.

The public surface is ``__all__``: what an extension or an embedding program builds on.

- Detectors: :class:`Detector` (subclass it, declare ``fields`` and implement ``_update``),
  :class:`Scores` (what it returns for a batch), :class:`Field` (one per-sensor state array).
- Outputs: :class:`Sink`, the contract every output of the service implements;
  :class:`Store`, the protocol every history store implements.
- Messages: :class:`Reading`, :class:`Alert`, :class:`DeadLetter`.
- Configuration: :class:`Settings`, :func:`load_settings`.
- Errors: :class:`MqttAnomalyError` and its subclasses :class:`ConfigError`,
  :class:`PayloadError`, :class:`BrokerError`, :class:`StoreError`, :class:`StateFileError`.

Each name is imported from its module on first use, so ``import mqtt_anomaly`` (and so every
command, ``mqtt-anomaly --help`` included) loads neither numpy nor pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings, load_settings
    from .detectors.base import Detector, Field, Scores
    from .errors import (
        BrokerError,
        ConfigError,
        MqttAnomalyError,
        PayloadError,
        StateFileError,
        StoreError,
    )
    from .messages import Alert, DeadLetter, Reading
    from .sinks.base import Sink
    from .store.base import Store

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "BrokerError",
    "ConfigError",
    "DeadLetter",
    "Detector",
    "Field",
    "MqttAnomalyError",
    "PayloadError",
    "Reading",
    "Scores",
    "Settings",
    "Sink",
    "StateFileError",
    "Store",
    "StoreError",
    "__version__",
    "load_settings",
]

_WHERE = {
    "Settings": "config",
    "load_settings": "config",
    "Detector": "detectors.base",
    "Field": "detectors.base",
    "Scores": "detectors.base",
    "BrokerError": "errors",
    "ConfigError": "errors",
    "MqttAnomalyError": "errors",
    "PayloadError": "errors",
    "StateFileError": "errors",
    "StoreError": "errors",
    "Alert": "messages",
    "DeadLetter": "messages",
    "Reading": "messages",
    "Sink": "sinks.base",
    "Store": "store.base",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and the module's dunders (not its helpers nor loaded submodules)."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__") and n.endswith("__"))})

"""The sensor fleet simulator: virtual temperature sensors publishing over MQTT.

- :mod:`.signals`: healthy signals (base level, daily cycle, noise);
- :mod:`.faults`: fault kinds, random onsets, forced injections (``--inject``);
- :mod:`.model`: the fleet's readings without I/O, reproducible from a seed;
- :mod:`.fleet`: one MQTT connection per sensor and one scheduler for all (:class:`Fleet`);
- :mod:`.labels`: the ground-truth file of injected faults;
- :mod:`.command`: ``mqtt-anomaly simulate``.

The names below are imported on first use, so importing the command stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .faults import FaultKind, Injection, parse_injection
    from .fleet import Fleet, FleetStats, run_fleet
    from .labels import Label, LabelWriter, read_labels
    from .model import FleetModel, Step

__all__ = [
    "FaultKind",
    "Fleet",
    "FleetModel",
    "FleetStats",
    "Injection",
    "Label",
    "LabelWriter",
    "Step",
    "parse_injection",
    "read_labels",
    "run_fleet",
]

_WHERE = {
    "FaultKind": "faults",
    "Injection": "faults",
    "parse_injection": "faults",
    "Fleet": "fleet",
    "FleetStats": "fleet",
    "run_fleet": "fleet",
    "Label": "labels",
    "LabelWriter": "labels",
    "read_labels": "labels",
    "FleetModel": "model",
    "Step": "model",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)

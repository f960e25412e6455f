"""Streaming detectors, one per module, all behind :class:`~.base.Detector`.

``create(name, settings)`` builds one by name; ``available()`` lists the names. Detectors are
registered through entry points (:mod:`.registry`): the built-ins and any installed plug-in.
:mod:`.checks` holds the detector contract as functions a plug-in's tests can call.
"""

from __future__ import annotations

from ..config import DetectorSettings
from .base import Detector, Field, Scores
from .registry import current, get


def available() -> list[str]:
    """Names of every registered detector."""
    return sorted(current().detectors)


def create(name: str, settings: DetectorSettings | None = None) -> Detector:
    """Build the detector called ``name`` from ``settings`` (defaults when None)."""
    return get(name).from_settings(settings or DetectorSettings())


__all__ = ["Detector", "Field", "Scores", "available", "create"]

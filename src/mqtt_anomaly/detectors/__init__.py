"""Streaming detectors, one per module, all behind :class:`~.base.Detector`.

``create(name, settings)`` builds one by name; ``available()`` lists the names.
"""

from __future__ import annotations

from ..config import DetectorSettings
from ..errors import ConfigError
from .art import ArtDetector
from .base import Detector, Field, Scores
from .changepoint import ChangePointDetector
from .ensemble import EnsembleDetector
from .rate import RateDetector
from .river_adapter import RiverDetector, river_available
from .robust import RobustDetector
from .seasonal import SeasonalDetector
from .stuck import StuckDetector
from .threshold import ThresholdDetector
from .zscore import ZScoreDetector

_REGISTRY: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        ThresholdDetector,
        ZScoreDetector,
        StuckDetector,
        RobustDetector,
        RateDetector,
        SeasonalDetector,
        ChangePointDetector,
        EnsembleDetector,
        ArtDetector,
    )
}
if river_available():  # optional extra: pip install river
    _REGISTRY[RiverDetector.name] = RiverDetector


def available() -> list[str]:
    """Names of every registered detector."""
    return sorted(_REGISTRY)


def create(name: str, settings: DetectorSettings | None = None) -> Detector:
    """Build the detector called ``name`` from ``settings`` (defaults when None)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"detector.detectors: unknown detector {name!r} (available: {', '.join(available())})"
        ) from None
    return cls.from_settings(settings or DetectorSettings())


__all__ = ["Detector", "Field", "Scores", "available", "create"]

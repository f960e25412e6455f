"""The detector registry: the built-in detectors and plug-ins, found through entry points.

A detector is registered by an entry point in the group ``mqtt_anomaly.detectors`` whose name
is the detector's :attr:`~.base.Detector.name` and whose value is ``module:Class``, a
subclass of :class:`~.base.Detector`. The built-ins are declared so in mqtt-anomaly's own
``pyproject.toml``; any installed distribution can add detectors the same way::

    [project.entry-points."mqtt_anomaly.detectors"]
    band = "my_detectors.band:BandDetector"

Entry points are read once, when the registry is first used (:func:`refresh` reads them again,
for a plug-in installed while the process runs). A plug-in that cannot be used — its module
does not import, its object is not a detector class, its name is not the entry point's, or the
name is taken — is left out with one warning line, and asking for it by name raises a
:class:`~mqtt_anomaly.errors.ConfigError` that says why. The built-ins are loaded first, so a
plug-in cannot replace one. A detector whose optional dependencies are missing
(:meth:`~.base.Detector.installed` is False, e.g. ``river`` without River) is not listed.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from ..errors import ConfigError
from .base import Detector

log = logging.getLogger(__name__)

GROUP = "mqtt_anomaly.detectors"
DISTRIBUTION = "mqtt-anomaly"
# What pyproject.toml declares (a test keeps the two equal). Used only when the package's own
# metadata declares no detector at all: a source tree on sys.path that was never installed.
BUILTIN = {
    "art": "mqtt_anomaly.detectors.art:ArtDetector",
    "changepoint": "mqtt_anomaly.detectors.changepoint:ChangePointDetector",
    "ensemble": "mqtt_anomaly.detectors.ensemble:EnsembleDetector",
    "fusion": "mqtt_anomaly.detectors.fusion:FusionDetector",
    "rate": "mqtt_anomaly.detectors.rate:RateDetector",
    "river": "mqtt_anomaly.detectors.river_adapter:RiverDetector",
    "robust": "mqtt_anomaly.detectors.robust:RobustDetector",
    "seasonal": "mqtt_anomaly.detectors.seasonal:SeasonalDetector",
    "stuck": "mqtt_anomaly.detectors.stuck:StuckDetector",
    "threshold": "mqtt_anomaly.detectors.threshold:ThresholdDetector",
    "zscore": "mqtt_anomaly.detectors.zscore:ZScoreDetector",
}


@dataclass(frozen=True)
class Registry:
    """Detector classes by name, where each came from, and the plug-ins that failed."""

    detectors: dict[str, type[Detector]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # name -> one line: what and why


_lock = threading.Lock()
_current: Registry | None = None


def current() -> Registry:
    """The registry, discovered on first use."""
    global _current  # noqa: PLW0603 - one lazily built registry per process
    with _lock:
        if _current is None:
            _current = discover()
        return _current


def refresh() -> Registry:
    """Read the entry points again (after installing or removing a plug-in)."""
    global _current  # noqa: PLW0603
    with _lock:
        _current = discover()
        return _current


def get(name: str) -> type[Detector]:
    """The class registered as ``name``; ConfigError (one line) when there is none."""
    reg = current()
    try:
        return reg.detectors[name]
    except KeyError:
        pass
    if name in reg.broken:
        raise ConfigError(f"detector.detectors: {reg.broken[name]}")
    known = ", ".join(sorted(reg.detectors))
    raise ConfigError(f"detector.detectors: unknown detector {name!r} (available: {known})")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist
    where = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"{ep.value}{where}"


def _ordered(eps: list[EntryPoint]) -> list[EntryPoint]:
    """The package's own entry points first (or the built-in table if it has none), then
    the others; identical duplicates (the same package twice on the path) once."""
    own = [ep for ep in eps if ep.dist is not None and _canonical(ep.dist.name) == DISTRIBUTION]
    if not own:
        own = [EntryPoint(name, value, GROUP) for name, value in BUILTIN.items()]
    others = [ep for ep in eps if ep not in own]
    seen: set[tuple[str, str]] = set()
    out = []
    for ep in own + others:
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            out.append(ep)
    return out


def _load(ep: EntryPoint) -> type[Detector]:
    """The detector class ``ep`` names; ValueError with the reason if it is not one."""
    try:
        obj = ep.load()
    except Exception as exc:  # a plug-in's import can fail in any way
        raise ValueError(f"cannot be imported: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Detector)):
        raise ValueError(f"{obj!r} is not a subclass of mqtt_anomaly.detectors.Detector")
    name = getattr(obj, "name", None)
    if name != ep.name:
        raise ValueError(f"the class's name is {name!r}, not the entry point's {ep.name!r}")
    return obj


def discover() -> Registry:
    """Build a registry from the installed entry points (see the module docstring)."""
    reg = Registry()
    for ep in _ordered(list(entry_points(group=GROUP))):
        origin = _origin(ep)
        try:
            if ep.name in reg.detectors:
                raise ValueError(f"the name is taken by {reg.origins[ep.name]}")
            cls = _load(ep)
        except ValueError as exc:
            reason = f"detector plug-in {ep.name!r} ({origin}) {exc}"
            log.warning("%s: left out", reason)
            reg.broken.setdefault(ep.name, reason)
            continue
        if cls.installed():
            reg.detectors[ep.name] = cls
            reg.origins[ep.name] = origin
    return reg

"""Per-group, per-asset and per-sensor settings with inheritance, and where each came from.

The effective value of a key for one sensor is the last one set along::

    defaults ([detector]) < group ([[overrides.groups]], in order) < asset
    ([overrides.assets."ID"]) < sensor ([overrides.sensors."ID"])

for ``threshold``, ``threshold_clear`` (default: 2 below the effective threshold) and
``detectors`` (the detectors that score the sensor). A group matches sensor ids like an MQTT
topic filter (``+`` one level, ``#`` the rest); the asset is the one the sensor belongs to
(:class:`~mqtt_anomaly.assets.AssetBook` resolves it; here it is given).

>>> from mqtt_anomaly.config import load_settings
>>> s = load_settings(None, {"overrides": {
...     "groups": [{"pattern": "+/voltage", "threshold": 440.0}],
...     "sensors": {"PUMP-01/voltage": {"threshold": 450.0}}}})
>>> eff = effective(s, "PUMP-02/voltage", "PUMP-02")
>>> eff["threshold"].value, eff["threshold"].source
(440.0, 'group +/voltage')
>>> eff["threshold_clear"].value, eff["threshold_clear"].source
(438.0, 'threshold - 2 (group +/voltage)')
>>> effective(s, "PUMP-01/voltage", "PUMP-01")["threshold"].source
'sensor PUMP-01/voltage'
>>> effective(s, "PUMP-01/flow", "PUMP-01")["threshold"].source
'defaults'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .config import Override, Settings
from .errors import ConfigError

KEYS = ("threshold", "threshold_clear", "detectors")


@dataclass(frozen=True, slots=True)
class Value:
    """One effective setting and the level it came from."""

    value: Any
    source: str


def matches(pattern: str, sensor_id: str) -> bool:
    """Whether ``sensor_id`` matches the MQTT-style ``pattern``.

    >>> matches("+/voltage", "PUMP-01/voltage"), matches("line-1/#", "line-1/p/flow")
    (True, True)
    >>> matches("+/voltage", "a/b/voltage"), matches("#", "x")
    (False, True)
    """
    want, have = pattern.split("/"), sensor_id.split("/")
    for i, w in enumerate(want):
        if w == "#":
            return True
        if i >= len(have) or (w != "+" and w != have[i]):
            return False
    return len(want) == len(have)


def layers(
    settings: Settings, sensor_id: str | None, asset_id: str | None
) -> list[tuple[str, Override]]:
    """The overrides that apply, lowest first, each with its name."""
    o = settings.overrides
    out: list[tuple[str, Override]] = []
    if sensor_id is not None:
        out += [(f"group {g.pattern}", g) for g in o.groups if matches(g.pattern, sensor_id)]
    if asset_id is not None and asset_id in o.assets:
        out.append((f"asset {asset_id}", o.assets[asset_id]))
    if sensor_id is not None and sensor_id in o.sensors:
        out.append((f"sensor {sensor_id}", o.sensors[sensor_id]))
    return out


def effective(settings: Settings, sensor_id: str | None, asset_id: str | None) -> dict[str, Value]:
    """The effective ``threshold``, ``threshold_clear`` and ``detectors`` of a sensor (or,
    with ``sensor_id`` None, of an asset's sensors before their own overrides)."""
    d = settings.detector
    eff = {
        "threshold": Value(d.threshold, "defaults"),
        "threshold_clear": Value(
            d.clear_threshold, "defaults" if d.threshold_clear is not None else "threshold - 2"
        ),
        "detectors": Value(tuple(d.detectors), "defaults"),
    }
    clear_set = d.threshold_clear is not None
    for name, layer in layers(settings, sensor_id, asset_id):
        if layer.threshold is not None:
            eff["threshold"] = Value(layer.threshold, name)
        if layer.threshold_clear is not None:
            eff["threshold_clear"] = Value(layer.threshold_clear, name)
            clear_set = True
        if layer.detectors is not None:
            eff["detectors"] = Value(tuple(layer.detectors), name)
    if not clear_set:
        t = eff["threshold"]
        source = "threshold - 2" if t.source == "defaults" else f"threshold - 2 ({t.source})"
        eff["threshold_clear"] = Value(float(t.value) - 2.0, source)
    return eff


def check(settings: Settings, known: Iterable[str]) -> None:
    """Every override names known detectors and keeps its clear level below its threshold;
    a one-line :class:`ConfigError` naming the key otherwise."""
    names = set(known)
    o = settings.overrides
    where: list[tuple[str, Override, str | None, str | None]] = [
        (f"overrides.groups[{i}]", g, None, None) for i, g in enumerate(o.groups)
    ]
    where += [(f'overrides.assets."{a}"', v, None, a) for a, v in o.assets.items()]
    where += [(f'overrides.sensors."{s}"', v, s, None) for s, v in o.sensors.items()]
    for key, layer, sensor, asset in where:
        unknown = [n for n in layer.detectors or () if n not in names]
        if unknown:
            raise ConfigError(
                f"{key}.detectors: unknown detector {unknown[0]!r} "
                f"(one of: {', '.join(sorted(names))})"
            )
        if sensor is not None or asset is not None:
            eff = effective(settings, sensor, asset)
            if not eff["threshold_clear"].value < eff["threshold"].value:
                raise ConfigError(
                    f"{key}: threshold_clear ({eff['threshold_clear'].value:g}) must be below "
                    f"threshold ({eff['threshold'].value:g})"
                )
        elif (
            layer.threshold is not None
            and layer.threshold_clear is not None
            and not layer.threshold_clear < layer.threshold
        ):
            raise ConfigError(f"{key}: threshold_clear must be below threshold")

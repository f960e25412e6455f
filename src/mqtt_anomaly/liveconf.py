"""What a configuration reload may change, and where the new configuration comes from.

A running ``detect`` service reads its configuration file again on SIGHUP, ``POST
/api/reload`` or, with ``service.watch_config``, when the file changes
(:class:`ConfigSource`: the same file, environment and command-line flags as at the start).
Only detection settings change live (:data:`LIVE`): the detectors, their parameters and
thresholds, the alert books' debounce and clear run, ``[overrides]``, the configured
maintenance windows and ``[shadow]``. A new file that changes anything else (the broker,
topics, the state dir, the store, HTTP, routes, ...) is refused as a whole, with the keys named
(:func:`refused_keys`): those need a restart.

>>> from mqtt_anomaly.config import load_settings
>>> a = load_settings(None, {})
>>> b = load_settings(None, {"detector": {"threshold": 80.0}, "broker": {"url": "mqtt://x:1"}})
>>> changed_keys(a, b), refused_keys(a, b)
(['broker.url', 'detector.threshold'], ['broker.url'])
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .config import Settings, load_settings

__all__ = ["LIVE", "ConfigSource", "changed_keys", "config_version", "refused_keys"]

LIVE: Final = frozenset({"detector", "overrides", "maintenance", "shadow", "simulator"})
"""Sections a reload applies to the running service (``simulator``: not used by ``detect``)."""


@dataclass(frozen=True)
class ConfigSource:
    """The configuration a service was started with: the file (None: none), and the
    overrides of the command line, which win over it again at every reload."""

    path: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Settings:
        """The settings as they stand now (:class:`~.errors.ConfigError`: one line)."""
        return load_settings(self.path, self.overrides)

    def mtime(self) -> int | None:
        """The file's modification time in ns (None: no file, or it cannot be read)."""
        if self.path is None:
            return None
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return None


def _dump(settings: Settings) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section in type(settings).model_fields:
        value = getattr(settings, section)
        dumped = (
            value.model_dump(mode="json")
            if hasattr(value, "model_dump")
            else [v.model_dump(mode="json") for v in value]
            if isinstance(value, tuple)
            else {k: v.model_dump(mode="json") for k, v in value.items()}
        )
        if isinstance(dumped, dict):
            for k, v in dumped.items():
                flat[f"{section}.{k}"] = v
        else:
            flat[section] = dumped
    return flat


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The settings that differ, as ``section.key`` (a whole list section: its name)."""
    a, b = _dump(old), _dump(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def refused_keys(old: Settings, new: Settings) -> list[str]:
    """The changed settings a running service cannot take (they need a restart)."""
    return [k for k in changed_keys(old, new) if k.split(".", 1)[0] not in LIVE]


def config_version(settings: Settings) -> str:
    """A short digest of the effective settings (secrets as masked): equal settings, equal
    version, whatever file or environment gave them."""
    text = settings.model_dump_json()
    return hashlib.sha256(text.encode()).hexdigest()[:12]

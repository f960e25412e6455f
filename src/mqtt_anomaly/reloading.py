"""Configuration reload of a running service: SIGHUP, ``POST /api/reload``, the file watch.

:class:`Reloads` reads the configuration again (:class:`~.liveconf.ConfigSource`), checks it,
and hands it to :meth:`.service.DetectorService.reload`, which swaps the detection settings
between two batches (:mod:`.swap`). Every attempt ends in one log line and one of four
results, counted (``mqtt_anomaly_reloads_total{result}``):

- ``applied``: the new detection settings score the next reading;
- ``unchanged``: the file gives the settings in force;
- ``refused``: it changes settings a running service cannot take (named in the line), nothing
  is applied;
- ``failed``: it cannot be read or is not valid (the line says why), nothing is applied.

The settings replaced by each applied reload are kept (the last :data:`KEEP`): ``POST
/api/reload {"rollback": true}`` goes back to the one before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .config import Settings
from .errors import MqttAnomalyError
from .liveconf import ConfigSource, changed_keys, config_version, refused_keys

if TYPE_CHECKING:
    from .service import DetectorService

log = logging.getLogger(__name__)
KEEP = 5
Result = Literal["applied", "unchanged", "refused", "failed"]
RESULTS: tuple[Result, ...] = ("applied", "unchanged", "refused", "failed")


@dataclass(frozen=True)
class Outcome:
    """One reload attempt."""

    result: Result
    message: str
    trigger: str
    version: str  # the configuration version in force afterwards
    changed: list[str] = field(default_factory=list)
    at: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Reloads:
    """The reloads of one service: from its configuration source, by settings (a model
    promoted, a test), or back to the previous settings."""

    def __init__(self, service: DetectorService, source: ConfigSource | None = None) -> None:
        self.service = service
        self.source = source
        self.counts: dict[str, int] = dict.fromkeys(RESULTS, 0)
        self.version = config_version(service.settings)
        self.model_version: str | None = None
        self.loaded_at = time.time()
        self.previous: list[tuple[Settings, str | None]] = []
        self.last: Outcome | None = None
        self._mtime = source.mtime() if source is not None else None

    # ---- triggers -----------------------------------------------------------------
    def from_source(self, trigger: str) -> Outcome:
        """Read the configuration source again and apply it."""
        if self.source is None:
            return self._done("failed", trigger, "no configuration source to read again")
        self._mtime = self.source.mtime()
        try:
            settings = self.source.load()
        except MqttAnomalyError as exc:
            return self._done("failed", trigger, str(exc))
        return self.apply(settings, trigger=trigger)

    def rollback(self, trigger: str = "rollback") -> Outcome:
        """Back to the settings the last applied reload replaced."""
        if not self.previous:
            return self._done("failed", trigger, "no previous configuration to go back to")
        settings, model = self.previous[-1]
        outcome = self.apply(settings, version=model, trigger=trigger, keep=False)
        if outcome.result == "applied":
            self.previous.pop()
        return outcome

    def apply(
        self,
        settings: Settings,
        *,
        state: Mapping[str, Any] | None = None,
        version: str | None = None,
        trigger: str = "api",
        keep: bool = True,
    ) -> Outcome:
        """Check ``settings`` against those in force and swap them in (see the module
        docstring); ``state``/``version``: a model's detector state and its version."""
        svc = self.service
        old = svc.settings
        refused = refused_keys(old, settings)
        if refused:
            why = f"{', '.join(refused)} cannot change while running (restart to apply)"
            return self._done("refused", trigger, why, refused)
        changed = changed_keys(old, settings)
        model = version if version is not None else self.model_version
        if not changed and state is None and model == self.model_version:
            return self._done("unchanged", trigger, "the configuration in force", changed)
        try:
            summary = svc.reload(settings, state=state)
        except (MqttAnomalyError, ValueError) as exc:
            return self._done("failed", trigger, " ".join(str(exc).split()), changed)
        if keep:
            self.previous = [*self.previous, (old, self.model_version)][-KEEP:]
        before = self.version
        self.version = config_version(settings)
        self.model_version = model
        self.loaded_at = time.time()
        what = ", ".join(changed) or "model state"
        return self._done("applied", trigger, f"{what} ({summary}; was {before})", changed)

    # ---- the watch ----------------------------------------------------------------
    async def watch(self, period: float) -> None:
        """Reload whenever the file's modification time changes (checked every ``period``)."""
        while True:
            await asyncio.sleep(period)
            if self.source is None:
                continue
            mtime = self.source.mtime()
            if mtime is not None and mtime != self._mtime:
                self.from_source("watch")

    # ---- status -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        src = self.source
        return {
            "config_version": self.version,
            "model_version": self.model_version,
            "config_file": str(src.path) if src is not None and src.path is not None else None,
            "loaded_at": self.loaded_at,
            "reloads": dict(self.counts),
            "last_reload": self.last.as_json() if self.last is not None else None,
            "rollback_available": bool(self.previous),
        }

    def _done(
        self, result: Result, trigger: str, message: str, changed: list[str] | None = None
    ) -> Outcome:
        outcome = Outcome(result, message, trigger, self.version, list(changed or ()))
        self.counts[result] += 1
        self.last = outcome
        level = logging.INFO if result in ("applied", "unchanged") else logging.WARNING
        log.log(
            level,
            "configuration reload %s (%s, version %s): %s",
            result,
            trigger,
            self.version,
            message,
        )
        return outcome

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

**Models.** Reading the source again also reads the model registry (:mod:`.models`, ``[models]
registry``): when its current model is another version than the one running (``models
promote``, ``models rollback``), its ``[detector]``, ``[overrides]`` and ``[assets]`` replace
the file's and its detectors start from its state (by sensor id); the same version keeps
running with what it learned since; no current model: the file's detectors. A model that
cannot be used fails the reload (one line), the running configuration stays.
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
    from .models.format import LoadedModel
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
        self.model_version: str | None = service.model.version if service.model else None
        self.loaded_at = time.time()
        self.previous: list[tuple[Settings, LoadedModel | None]] = []
        self.last: Outcome | None = None
        self._mtime = source.mtime() if source is not None else None
        self._registry_mtime = self._registry_stamp(service.settings)

    # ---- triggers -----------------------------------------------------------------
    def from_source(self, trigger: str) -> Outcome:
        """Read the configuration source again and apply it."""
        if self.source is None:
            return self._done("failed", trigger, "no configuration source to read again")
        self._mtime = self.source.mtime()
        try:
            settings = self.source.load()
            self._registry_mtime = self._registry_stamp(settings)
            model = self._current_model(settings)
        except MqttAnomalyError as exc:
            return self._done("failed", trigger, " ".join(str(exc).split()))
        running = self.service.model
        if model is None:
            return self.apply(settings, trigger=trigger, model=None)
        settings = model.settings(settings)
        if running is not None and model.version == running.version:  # what it learned stays
            return self.apply(settings, trigger=trigger, model=running)
        return self.apply(settings, state=model.state, trigger=trigger, model=model)

    def _current_model(self, settings: Settings) -> LoadedModel | None:
        """The registry's current model, checked (ModelError: it cannot be used)."""
        from .models.registry import Registry, registry_path

        reg = Registry(registry_path(settings))
        ref = reg.current()
        if ref is None:
            return None
        running = self.service.model
        if running is not None and running.version == ref.version:
            return running
        model = reg.load(ref)
        model.pipeline(settings)  # ModelError unless its state fits its configuration
        return model

    @staticmethod
    def _registry_stamp(settings: Settings) -> int | None:
        """The registry index's modification time (ns; None: no registry)."""
        from .models.registry import INDEX, registry_path

        try:
            return (registry_path(settings) / INDEX).stat().st_mtime_ns
        except OSError:
            return None

    def rollback(self, trigger: str = "rollback") -> Outcome:
        """Back to the settings the last applied reload replaced."""
        if not self.previous:
            return self._done("failed", trigger, "no previous configuration to go back to")
        settings, model = self.previous[-1]
        outcome = self.apply(settings, trigger=trigger, keep=False, model=model)
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
        model: LoadedModel | Literal[False] | None = False,
    ) -> Outcome:
        """Check ``settings`` against those in force and swap them in (see the module
        docstring); ``state``/``version``: a model's detector state and its version
        (``model``: the registry's model they come from, None: no model; the default: the
        model in force stays)."""
        svc = self.service
        old = svc.settings
        if model is not False:
            version = model.version if model is not None else ""
        refused = refused_keys(old, settings)
        if refused:
            why = f"{', '.join(refused)} cannot change while running (restart to apply)"
            return self._done("refused", trigger, why, refused)
        changed = changed_keys(old, settings)
        new_version = (version or None) if version is not None else self.model_version
        if not changed and state is None and new_version == self.model_version:
            return self._done("unchanged", trigger, "the configuration in force", changed)
        try:
            summary = svc.reload(settings, state=state)
        except (MqttAnomalyError, ValueError) as exc:
            return self._done("failed", trigger, " ".join(str(exc).split()), changed)
        if keep:
            self.previous = [*self.previous, (old, svc.model)][-KEEP:]
        if model is not False:
            svc.model = model  # the saved state records the model it continues
        before = self.version
        self.version = config_version(settings)
        before_model = self.model_version
        self.model_version = new_version
        self.loaded_at = time.time()
        what = ", ".join(changed) or "model state"
        if new_version != before_model:
            what += f"; model {before_model or 'none'} -> {new_version or 'none'}"
        return self._done("applied", trigger, f"{what} ({summary}; was {before})", changed)

    # ---- the watch ----------------------------------------------------------------
    async def watch(self, period: float) -> None:
        """Reload whenever the file's modification time changes (checked every ``period``)."""
        while True:
            await asyncio.sleep(period)
            if self.source is None:
                continue
            mtime = self.source.mtime()
            registry = self._registry_stamp(self.service.settings)
            if (mtime is not None and mtime != self._mtime) or registry != self._registry_mtime:
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

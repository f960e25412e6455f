"""The model registry: a local folder of model versions, a ``current`` pointer and the
promotion history.

::

    <registry>/                     [models] registry, default <service.state_dir>/models
        registry.json               {"current": "v3", "stack": ["v1", "v3"], "history": [...]}
        versions/v1/, versions/v2/  one model each (:mod:`.format`)
        .lock                       held (flock) while the registry is changed

``stack`` is the promotions still in force, the current model last: ``promote`` pushes,
``rollback`` pops (back to the model that was current before). ``history`` records every
promotion and rollback (time, version, the one before, forced or not). Every change is
written atomically (a temporary file, fsync, rename, fsync of the folder), under an
exclusive lock of ``.lock``, so two commands at once cannot lose one's change; a new
version is written in a temporary folder and renamed into ``versions/`` complete.

Promotion is gated (:meth:`Registry.promote`): with a current model, a candidate must have
been evaluated against *that* model (``models evaluate``, which writes both figures into the
candidate's manifest) and be at least as good on ``[models] metric``; otherwise it is refused
with one line, unless forced. A model that does not load (damaged, foreign, tampered with) is
never promoted nor rolled back to; the current pointer stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..config import Settings
from ..errors import ModelError, StateFileError
from ..statefile import load
from .format import (
    LoadedModel,
    fsync_dir,
    load_model,
    read_manifest,
    utc_now,
    write_json,
    write_model,
)

__all__ = ["METRICS", "ModelRef", "Registry", "current_model", "registry_path"]

log = logging.getLogger(__name__)

INDEX: Final = "registry.json"
VERSIONS: Final = "versions"
METRICS: Final = ("f1", "precision", "recall")
_VERSION: Final = re.compile(r"v([1-9][0-9]{0,8})")


def registry_path(settings: Settings) -> Path:
    """``[models] registry``, or ``<service.state_dir>/models`` when it is not set."""
    return settings.models.registry or settings.service.state_dir / "models"


def current_model(settings: Settings, saved_state: Path | None = None) -> LoadedModel | None:
    """The registry's current model, read, checked and tried on a new pipeline; None when
    there is none.

    A current model that cannot be used (damaged, foreign, tampered with) is refused with
    one error line; then the model the saved state ``saved_state`` continues (the one that
    was running) is kept if it loads, else None (the configured detectors)."""
    path = registry_path(settings)
    reg = Registry(path)
    try:
        ref = reg.current()
        if ref is None:
            return None
        return _usable(reg, ref, settings)
    except ModelError as exc:
        refused = " ".join(str(exc).split())
    running = _running_version(saved_state)
    kept: LoadedModel | None = None
    if running is not None:
        try:
            kept = _usable(reg, reg.ref(running), settings)
        except ModelError:
            kept = None
    log.error(
        "model registry %s: current model refused: %s; %s",
        path,
        refused,
        f"keeping {running}, the model the saved state continues"
        if kept is not None
        else "starting without a model",
    )
    return kept


def _usable(reg: Registry, ref: ModelRef, settings: Settings) -> LoadedModel:
    model = reg.load(ref)
    model.pipeline(settings)  # its state fits its configuration
    return model


def _running_version(saved_state: Path | None) -> str | None:
    """The model version the saved state continues (None: none, or no usable state)."""
    if saved_state is None:
        return None
    try:
        version = load(saved_state).get("model")
    except (OSError, StateFileError):
        return None
    return version if isinstance(version, str) and _VERSION.fullmatch(version) else None


@dataclass(frozen=True, order=True)
class ModelRef:
    """A model version in a registry."""

    number: int
    version: str
    path: Path


class Registry:
    """The registry in folder ``path`` (created by the first :meth:`create`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # ---- reading --------------------------------------------------------------------
    def _index(self) -> dict[str, Any]:
        path = self.path / INDEX
        try:
            doc = json.loads(path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):  # no registry (yet)
            return {"current": None, "stack": [], "history": []}
        except OSError as exc:
            raise ModelError(f"registry {path}: cannot read: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ModelError(f"registry {path}: not JSON") from exc
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("stack"), list)
            or not all(isinstance(v, str) and _VERSION.fullmatch(v) for v in doc["stack"])
            or not isinstance(doc.get("history"), list)
            or doc.get("current") != (doc["stack"][-1] if doc["stack"] else None)
        ):
            raise ModelError(f"registry {path}: not a registry index")
        return doc

    def versions(self) -> list[ModelRef]:
        """Every version, oldest first."""
        try:
            names = [p.name for p in (self.path / VERSIONS).iterdir() if p.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise ModelError(f"registry {self.path}: {exc.strerror or exc}") from exc
        return sorted(self._ref(n) for n in names if _VERSION.fullmatch(n))

    def _ref(self, version: str) -> ModelRef:
        match = _VERSION.fullmatch(version)
        if match is None:
            raise ModelError(f"{version!r} is not a model version (v1, v2, ...)")
        return ModelRef(int(match.group(1)), version, self.path / VERSIONS / version)

    def ref(self, version: str) -> ModelRef:
        """The version ``version``; ModelError when the registry has none such."""
        ref = self._ref(version)
        if not ref.path.is_dir():
            raise ModelError(f"registry {self.path} has no model {version}")
        return ref

    def current(self) -> ModelRef | None:
        """The current model, or None when none was promoted."""
        version = self._index()["current"]
        return None if version is None else self._ref(version)

    def history(self) -> list[dict[str, Any]]:
        """Every promotion and rollback, oldest first."""
        return list(self._index()["history"])

    def manifest(self, ref: ModelRef) -> dict[str, Any]:
        """The checked manifest of ``ref`` (:func:`.format.read_manifest`)."""
        return read_manifest(ref.path)

    def load(self, ref: ModelRef) -> LoadedModel:
        """The model ``ref``, read and checked (:func:`.format.load_model`)."""
        return load_model(ref.path)

    # ---- changing -------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ModelError(f"registry {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def create(
        self, *, config: Mapping[str, Any], training: Mapping[str, Any], state: Mapping[str, Any]
    ) -> ModelRef:
        """Write a new version (the next number) and return it; not promoted."""
        with self._locked():
            versions = self.path / VERSIONS
            versions.mkdir(exist_ok=True)
            existing = self.versions()
            ref = self._ref(f"v{existing[-1].number + 1 if existing else 1}")
            tmp = versions / f".new-{os.getpid()}-{secrets.token_hex(4)}"
            tmp.mkdir()
            try:
                write_model(tmp, version=ref.version, config=config, training=training, state=state)
                fsync_dir(tmp)
                tmp.rename(ref.path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(versions)
        return ref

    def set_evaluation(self, ref: ModelRef, evaluation: Mapping[str, Any]) -> None:
        """Write ``evaluation`` into the manifest of ``ref`` (atomically)."""
        with self._locked():
            manifest = read_manifest(ref.path)
            manifest["evaluation"] = dict(evaluation)
            write_json(ref.path / "manifest.json", manifest)

    def _write_index(self, index: dict[str, Any]) -> None:
        index["current"] = index["stack"][-1] if index["stack"] else None
        write_json(self.path / INDEX, index)

    def promote(self, version: str, *, force: bool = False, metric: str = "f1") -> str:
        """Make ``version`` the current model; returns the one-line reason it was allowed.

        Refused (ModelError, one line) when the model does not load, when it is current
        already, and, with a current model and without ``force``: when it was not evaluated
        against the current model, or is worse than it on ``metric``."""
        if metric not in METRICS:
            raise ModelError(f"models.metric {metric!r}: expected one of {', '.join(METRICS)}")
        ref = self.ref(version)
        with self._locked():
            index = self._index()
            current = index["current"]
            if current == version:
                raise ModelError(f"{version} is the current model already")
            self.load(ref)  # a model that does not load is never promoted
            evaluation = read_manifest(ref.path).get("evaluation")
            allowed, reason = _gate(version, current, evaluation, metric)
            if not allowed:
                if not force:
                    raise ModelError(f"{version} not promoted: {reason} (--force to promote)")
                reason = f"forced ({reason})"
            index["stack"].append(version)
            index["history"].append(
                {
                    "at": utc_now(),
                    "action": "promote",
                    "version": version,
                    "previous": current,
                    "forced": force,
                    "reason": reason,
                }
            )
            self._write_index(index)
        return reason

    def rollback(self) -> ModelRef:
        """Make the model that was current before the current one current again; returns it.
        ModelError when there is none, or when it does not load (the current one stays)."""
        with self._locked():
            index = self._index()
            stack = index["stack"]
            if len(stack) < 2:
                raise ModelError(
                    "nothing to roll back to: no model was current before "
                    + (stack[-1] if stack else "(no current model)")
                )
            target = self.ref(stack[-2])
            self.load(target)
            index["history"].append(
                {
                    "at": utc_now(),
                    "action": "rollback",
                    "version": target.version,
                    "previous": stack.pop(),
                    "forced": False,
                    "reason": "rollback",
                }
            )
            self._write_index(index)
        return target


def _gate(version: str, current: str | None, evaluation: Any, metric: str) -> tuple[bool, str]:
    """Whether ``version`` may replace ``current``, and why (or why not)."""
    if current is None:
        return True, "the first model of the registry"
    if not isinstance(evaluation, dict):
        return False, f"not evaluated (models evaluate {version} --labels ...)"
    baseline = evaluation.get("baseline")
    candidate = evaluation.get("candidate")
    if not isinstance(baseline, dict) or not isinstance(candidate, dict):
        return False, f"evaluation of {version} has no candidate and baseline figures"
    if baseline.get("version") != current:
        against = baseline.get("version") or "the configured detectors"
        return False, (
            f"evaluated against {against}, the current model is {current} "
            f"(models evaluate {version} again)"
        )
    new, old = candidate.get(metric), baseline.get(metric)
    if not isinstance(new, int | float) or not isinstance(old, int | float):
        return False, f"the evaluation has no {metric}"
    labels = evaluation.get("labels", "?")
    if new < old:
        return False, (
            f"{metric} {new:.3f} is below the current model {current}'s {old:.3f} on {labels}"
        )
    return True, f"{metric} {new:.3f} >= {old:.3f} of {current} on {labels}"

"""The model format: one directory per model version, data only.

A model is what a pipeline learned from a period of readings, with the detector
configuration that shapes its scoring, so that ``detect`` (or ``models evaluate``) can start a
pipeline exactly where training ended::

    <version>/
        manifest.json    what the model is (below), UTF-8 JSON
        state.mqas       the learned arrays: a state file (:mod:`mqtt_anomaly.statefile`)

``manifest.json`` (format version 1)::

    {"format": "mqtt-anomaly-model", "format_version": 1,
     "version": "v3", "created": "2026-12-07T23:59:00Z", "package": "0.1.0",
     "config": {"detector": {...}, "overrides": {...}, "assets": {...}},
     "training": {"source": "sqlite:///plant.db", "since": null, "until": null,
                  "first_ts": ..., "last_ts": ..., "readings": 86400, "sensors": ["S1", ...],
                  "assets": ["pump-1"], "data_sha256": "<hex>"},
     "state": {"file": "state.mqas", "bytes": 12345, "sha256": "<hex>"},
     "evaluation": null}

``config`` holds the ``[detector]``, ``[overrides]`` and ``[assets]`` settings the model was
trained with (the settings that shape scoring); ``training.data_sha256`` is the SHA-256 of the
training readings as they were read (:class:`DataHash`); ``evaluation`` is written by
``models evaluate``. The state is :meth:`Pipeline.state_dict()
<mqtt_anomaly.pipeline.Pipeline.state_dict>` without what belongs to a running service and
not to what was learned (:func:`model_state`): the dedup windows, health, activity and the
alert books (alerts in progress) start fresh.

:func:`load_model` refuses, with one :class:`~mqtt_anomaly.errors.ModelError` line and
without running anything from the files: a missing or unreadable directory or file, a
manifest that is not this format's JSON (another format, another format version, written by
another major version of the package), a state file whose size or SHA-256 is not the
manifest's (truncated, replaced, tampered with), a state file the state format refuses (its
own checksum) and a configuration the settings refuse. :meth:`LoadedModel.pipeline` then
loads the state into a new pipeline, which checks its shape (also a ``ModelError``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ValidationError

from .. import __version__
from ..config import AssetSettings, DetectorSettings, OverrideSettings, Settings
from ..drift import DRIFT, DriftBook
from ..errors import ConfigError, ModelError, StateFileError
from ..statefile import decode, dump

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = [
    "CONFIG_SECTIONS",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "STATE",
    "DataHash",
    "LoadedModel",
    "load_model",
    "model_config",
    "model_state",
    "read_manifest",
    "write_json",
    "write_model",
]

FORMAT: Final = "mqtt-anomaly-model"
FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
STATE: Final = "state.mqas"
MAX_MANIFEST: Final = 16 * 1024 * 1024  # bytes: a manifest larger than this is refused
CONFIG_SECTIONS: Final[dict[str, type[BaseModel]]] = {
    "detector": DetectorSettings,
    "overrides": OverrideSettings,
    "assets": AssetSettings,
}
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_READING: Final = struct.Struct("<ddq")


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second (``2026-12-07T23:59:00Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- writing ----------------------------------------------------------------------------
class DataHash:
    """SHA-256 of readings in the order they are read: per reading the UTF-8 sensor id, a NUL
    byte, then ``ts`` and ``value`` as little-endian float64 and ``seq`` as int64."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.readings = 0

    def update(
        self, sensor_ids: Sequence[str], ts: Iterable[float], values: Iterable[float], seqs: Any
    ) -> None:
        pack, h = _READING.pack, self._h
        for sid, t, v, s in zip(sensor_ids, ts, values, seqs, strict=True):
            h.update(sid.encode())
            h.update(b"\0")
            h.update(pack(float(t), float(v), int(s)))
        self.readings += len(sensor_ids)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def model_config(settings: Settings) -> dict[str, Any]:
    """The settings that shape scoring, as JSON-ready data (``manifest["config"]``)."""
    return {name: getattr(settings, name).model_dump(mode="json") for name in CONFIG_SECTIONS}


def model_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline's :meth:`~mqtt_anomaly.pipeline.Pipeline.state_dict` without what belongs to
    a running service: dedup windows and seq values, activity, health and the alert books
    start fresh; the sensors, their learned intervals, the detectors' and the assets' state
    are kept."""
    ids = list(state["sensor_ids"])
    n = len(ids)
    return {
        "version": state["version"],
        "sensor_ids": ids,
        "seq_top": [-1] * n,
        "seq_mask": [0] * n,
        "interval": list(state["interval"]),
        "health": ["ok"] * n,
        "detectors": state["detectors"],
        "books": {},
        "assets": state["assets"],
        **({"drift": DriftBook.reference_state(state["drift"])} if "drift" in state else {}),
    }


def write_json(path: Path, doc: Any) -> None:
    """Write ``doc`` as JSON to ``path`` atomically: a temporary file, fsync, rename, fsync of
    the directory. A crash leaves the old file or the new one, never half of one."""
    data = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be synced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_model(
    directory: Path,
    *,
    version: str,
    config: Mapping[str, Any],
    training: Mapping[str, Any],
    state: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a model into ``directory`` (which must exist and be empty): the state file, then
    the manifest naming its size and SHA-256. Returns the manifest."""
    path = directory / STATE
    dump(path, state, sync=True)
    data = path.read_bytes()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "created": utc_now(),
        "package": __version__,
        "config": dict(config),
        "training": dict(training),
        "state": {"file": STATE, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "evaluation": None,
    }
    write_json(directory / MANIFEST, manifest)
    return manifest


# ---- reading ----------------------------------------------------------------------------
def _bad(directory: Path, why: str) -> ModelError:
    return ModelError(f"model {directory.name} ({directory}): {why}")


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the model in ``directory``, checked (see the module); ModelError."""
    path = directory / MANIFEST
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST + 1)
    except FileNotFoundError as exc:
        raise _bad(directory, f"no {MANIFEST}") from exc
    except OSError as exc:
        raise _bad(directory, f"cannot read {MANIFEST}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_MANIFEST:
        raise _bad(directory, f"{MANIFEST} is larger than {MAX_MANIFEST} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _bad(directory, f"{MANIFEST} is not JSON") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(directory, f"not an {FORMAT} manifest")
    if doc.get("format_version") != FORMAT_VERSION:
        raise _bad(
            directory,
            f"format version {doc.get('format_version')!r}, this program reads {FORMAT_VERSION}",
        )
    package = doc.get("package")
    if not isinstance(package, str) or _major(package) != _major(__version__):
        raise _bad(
            directory,
            f"written by mqtt-anomaly {package!r}, another major version than {__version__}",
        )
    for key, kind in (
        ("version", str),
        ("created", str),
        ("config", dict),
        ("training", dict),
        ("state", dict),
    ):
        if not isinstance(doc.get(key), kind):
            raise _bad(directory, f"{MANIFEST}: {key} missing or not a {kind.__name__}")
    if doc["version"] != directory.name:
        raise _bad(directory, f"{MANIFEST} names version {doc['version']!r}")
    st = doc["state"]
    if (
        st.get("file") != STATE
        or type(st.get("bytes")) is not int
        or not isinstance(st.get("sha256"), str)
        or not _HEX64.fullmatch(st["sha256"])
    ):
        raise _bad(directory, f"{MANIFEST}: state is not {{file, bytes, sha256}}")
    if doc.get("evaluation") is not None and not isinstance(doc["evaluation"], dict):
        raise _bad(directory, f"{MANIFEST}: evaluation is not an object")
    return doc


@dataclass(frozen=True)
class LoadedModel:
    """A model read and checked: its manifest, its settings sections and its state tree."""

    version: str
    manifest: dict[str, Any]
    settings_overrides: dict[str, BaseModel]
    """``detector``, ``overrides``, ``assets``: the settings sections the model was trained
    with, validated."""
    state: dict[str, Any]

    def settings(self, base: Settings) -> Settings:
        """``base`` with the model's detector configuration in place of its own."""
        return base.model_copy(update=self.settings_overrides)

    def pipeline(self, base: Settings) -> Pipeline:
        """A new pipeline with the model's configuration and state (ModelError if the state
        does not fit it)."""
        from ..pipeline import Pipeline

        try:
            pipeline = Pipeline(self.settings(base))
            skipped = pipeline.load_state_dict(self.state)
        except (StateFileError, ConfigError, ValueError) as exc:
            raise ModelError(f"model {self.version}: state does not fit: {exc}") from exc
        from ..detectors.river_adapter import RiverDetector

        river = {d.name for d in pipeline.detectors if isinstance(d, RiverDetector)}
        # River relearns; drift references that do not fit are learned again
        misfits = [name for name in skipped if name not in river and name != DRIFT]
        if misfits:
            raise ModelError(f"model {self.version}: state of {', '.join(misfits)} does not fit")
        return pipeline


def load_model(directory: Path) -> LoadedModel:
    """Read and check the model in ``directory`` (see the module); ModelError, one line."""
    manifest = read_manifest(directory)
    expected = manifest["state"]
    path = directory / STATE
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise _bad(directory, f"no {STATE}") from exc
    except OSError as exc:
        raise _bad(directory, f"cannot read {STATE}: {exc.strerror or exc}") from exc
    if len(data) != expected["bytes"]:
        raise _bad(
            directory, f"{STATE} is {len(data)} bytes, the manifest says {expected['bytes']}"
        )
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise _bad(directory, f"{STATE} does not match the SHA-256 in the manifest (tampered?)")
    try:
        state = decode(data)
    except StateFileError as exc:
        raise _bad(directory, f"{STATE}: {exc}") from exc
    config = manifest["config"]
    sections: dict[str, BaseModel] = {}
    for name, model in CONFIG_SECTIONS.items():
        try:
            sections[name] = model.model_validate(config.get(name, {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise _bad(directory, f"config.{name}.{where}: {err['msg']}") from exc
    return LoadedModel(manifest["version"], manifest, sections, state)

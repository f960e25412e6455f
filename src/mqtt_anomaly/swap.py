"""Swap a pipeline's detection configuration in place, between two batches.

:func:`swap_detection` gives a running :class:`~.pipeline.Pipeline` new detection settings
(``[detector]``, ``[overrides]``) without a restart and without touching anything else it
keeps: the sensor table, dedup windows, seq values, intervals, health, the silence and offline
books, the assets. Per detector:

- **unchanged** (same name, class and :meth:`~.detectors.base.Detector.params`): the same
  object, its learned state kept;
- **changed** or **added**: a new one, with fresh state; its alert book is kept (an active
  alert stays active until the new configuration clears it), with the new debounce and clear
  run;
- with a **state given** (a model promoted): every detector it has state for that fits
  starts from it (its arrays by sensor id, :func:`remapped`), unchanged ones included;
- **removed**: its active alerts are cleared (one ``cleared`` event each, message
  ``detector removed by a configuration reload``) and its book dropped.

Model health (:mod:`.drift`): the score distributions learned so far belong to the detectors
that scored them, so when any detector changes (or a model's state is given) every sensor
learns its reference again, from the model's references where the model has the sensor.

With ``[overrides]`` (or any detector replaced), every known sensor is configured again: its
threshold (limits set by an override and not any more are forgotten; a range a Sparkplug birth
declared stays) and which detectors score it.

Everything that can fail is built first, on a probe pipeline of the new settings (unknown
detector, bad parameters, overrides naming unknown detectors: :class:`~.errors.ConfigError`
or ValueError); the running pipeline is changed only after that, and then nothing raises.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import Settings
from .detectors import Detector
from .detectors.threshold import ThresholdDetector
from .drift import DriftBook
from .messages import Alert
from .pipeline import OFFLINE, SILENCE, Output, Pipeline, cleared_alert

__all__ = ["REMOVED", "Swap", "remapped", "swap_detection"]

REMOVED = "detector removed by a configuration reload"


@dataclass(slots=True)
class Swap:
    """What a swap did, by detector name, and the events it produced (cleared alerts of
    removed detectors, health changes)."""

    kept: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    from_state: list[str] = field(default_factory=list)  # new detectors given saved state
    out: Output = field(default_factory=Output)

    def summary(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("changed", self.changed),
                ("added", self.added),
                ("removed", self.removed),
                ("kept", self.kept),
            )
            if names
        ]
        if self.from_state:
            parts.append(f"state given for {', '.join(self.from_state)}")
        return "; ".join(parts) or "no detector"


def _same(a: Detector, b: Detector) -> bool:
    return type(a) is type(b) and a.params() == b.params()


def remapped(
    saved: Mapping[str, Any], ids: list[str], sensors: Mapping[str, int]
) -> dict[str, Any]:
    """A detector's saved state (``state_dict()`` of a pipeline whose sensors were ``ids``,
    in slot order) with its arrays moved to the slots of ``sensors``; sensors it does not
    know keep the fill value of a fresh detector (NaN/0), i.e. they start learning."""
    arrays = saved.get("arrays")
    if not isinstance(arrays, Mapping):
        raise ValueError("saved state has no arrays")
    n = max(sensors.values(), default=-1) + 1
    src = [(slot, i) for i, sid in enumerate(ids) if (slot := sensors.get(sid)) is not None]
    out: dict[str, Any] = {}
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.ndim < 1:
            raise ValueError(f"saved state: {k} is not an array")
        fill = np.nan if a.dtype.kind == "f" else 0
        b = np.full((n, *a.shape[1:]), fill, dtype=a.dtype)
        for slot, i in src:
            if i < len(a):
                b[slot] = a[i]
        out[k] = b
    return {**saved, "arrays": out}


def swap_detection(
    pipeline: Pipeline, settings: Settings, state: Mapping[str, Any] | None = None
) -> Swap:
    """Give ``pipeline`` the detection settings of ``settings`` (see the module docstring).

    ``state``: a pipeline state (``sensor_ids`` and ``detectors``, as
    :meth:`~.pipeline.Pipeline.state_dict` gives) whose detectors' state the changed and added
    detectors start from, when it fits them (else fresh). Raises (nothing changed) when the
    new settings cannot be built."""
    probe = Pipeline(settings)  # ConfigError / ValueError here: nothing changed yet
    given_ids: list[str] = []
    given: Mapping[str, Any] = {}
    if state is not None:
        ids = state.get("sensor_ids")
        dets = state.get("detectors")
        if isinstance(ids, list) and isinstance(dets, Mapping):
            given_ids, given = [str(s) for s in ids], dets
    res = Swap()
    old = {d.name: d for d in pipeline.detectors}
    n = len(pipeline.sensor_ids)
    detectors: list[Detector] = []
    for det in probe.detectors:
        was = old.get(det.name)
        saved = given.get(det.name)
        if isinstance(saved, Mapping):  # checked on the new object, taken below
            try:
                det.load_state_dict(remapped(saved, given_ids, pipeline.sensors))
                res.from_state.append(det.name)
            except (ValueError, TypeError, KeyError):
                pass  # another configuration: it does not take this state
        if was is not None and _same(was, det):
            res.kept.append(det.name)
            if det.name not in res.from_state:
                detectors.append(was)
                continue
        else:
            (res.changed if was is not None else res.added).append(det.name)
        det.reserve(n)
        if isinstance(det, ThresholdDetector) and isinstance(was, ThresholdDetector):
            _keep_declared_ranges(was, det)
        detectors.append(det)
    res.removed = [name for name in old if name not in probe.books]
    # ---- from here on nothing raises
    out = res.out
    now = _now(pipeline)
    touched: set[int] = set()
    for name in res.removed:
        book = pipeline.books[name]
        for slot in np.flatnonzero(book.active[:n]).tolist():
            out.alerts.append(_cleared(pipeline, name, slot, bool(book.critical[slot]), now))
            touched.add(slot)
    books = {}
    for name, new_book in probe.books.items():
        if name in (SILENCE, OFFLINE):
            continue
        kept = pipeline.books.get(name)
        if kept is None:
            books[name] = new_book
            continue
        for attr in ("raise_level", "clear_level", "critical_level", "debounce", "clear_after"):
            setattr(kept, attr, getattr(new_book, attr))
        books[name] = kept
    books[SILENCE] = pipeline.books[SILENCE]
    books[OFFLINE] = pipeline.books[OFFLINE]
    overrides_changed = pipeline.settings.overrides != settings.overrides
    pipeline.settings = settings
    pipeline.detectors = detectors
    pipeline.books = books
    pipeline._enabled = probe._enabled
    if settings.overrides or overrides_changed:
        for det in detectors:
            if isinstance(det, ThresholdDetector):
                _forget_override_limits(det)
        for slot, sid in enumerate(pipeline.sensor_ids):
            pipeline._configure(slot, sid)
    if res.changed or res.added or res.removed or res.from_state:
        pipeline.drift = _new_drift(pipeline, settings, state)
    pipeline._update_health(touched, out)
    return res


def _new_drift(
    pipeline: Pipeline, settings: Settings, state: Mapping[str, Any] | None
) -> DriftBook:
    """A drift book learning every known sensor's reference again; with a model's state, its
    references for the sensors it has (by sensor id)."""
    n = len(pipeline.sensor_ids)
    book = DriftBook(settings.drift)
    for k in range(n):
        book.admit(k)
    saved = state.get("drift") if state is not None else None
    ids = state.get("sensor_ids") if state is not None else None
    if isinstance(saved, Mapping) and isinstance(ids, list) and n:
        fresh = book.state_dict(n)
        sensors = pipeline.sensors
        rows = [(at, i) for i, sid in enumerate(ids) if (at := sensors.get(sid)) is not None]
        try:
            arrays = {}
            for name, a in fresh["arrays"].items():
                given = saved["arrays"][name]
                b = a.copy()
                for at, i in rows:
                    b[at] = given[i]
                arrays[name] = b
            book.load_state_dict({**saved, "arrays": arrays}, n)
        except (ValueError, KeyError, TypeError, IndexError):
            pass  # not references of these bins: every sensor learns
    return book


def _now(pipeline: Pipeline) -> float:
    """The message time of the last reading (the time a removed detector's alerts clear)."""
    n = len(pipeline.sensor_ids)
    seen = pipeline.last_seen[:n]
    if n and not np.isnan(seen).all():
        return float(np.nanmax(seen))
    return time.time()


def _cleared(pipeline: Pipeline, name: str, slot: int, critical: bool, now: float) -> Alert:
    pipeline.counters.alerts_cleared += 1
    return cleared_alert(pipeline.sensor_ids[slot], name, critical, now, REMOVED)


def _keep_declared_ranges(old: ThresholdDetector, new: ThresholdDetector) -> None:
    """The ranges Sparkplug births declared (not those of overrides) carry over."""
    if not old._seeded:
        return
    span = np.full(len(old.high), np.nan)
    span[: min(len(span), len(old.span))] = old.span[: len(span)]
    for slot in np.flatnonzero(~np.isnan(old.high) & np.isnan(span)).tolist():
        new.seed_range(slot, float(old.low[slot]), float(old.high[slot]))


def _forget_override_limits(det: ThresholdDetector) -> None:
    """Forget the limits ``[overrides]`` set (they are set again from the new settings)."""
    own = np.flatnonzero(~np.isnan(det.span))
    if len(own):
        det.low[own] = math.nan
        det.high[own] = math.nan
        det.span[own] = math.nan

"""Assets: groups of sensors scored together, their rows, lifecycle and alerts. No I/O.

An **asset** is a group of sensors (``[assets]``: explicit ``define`` lists, the ``asset`` tag
of a mapping rule, or ``template`` on the sensor id: by default the parent level is the asset,
``line-1/pump-7/flow`` → asset ``line-1/pump-7``, sensor ``flow``). :class:`AssetBook` keeps,
per sensor slot of the pipeline, the asset and column it belongs to and its latest value.

**Rows.** A row of an asset is its sensors' latest values. It is scored once every sensor has
reported since the last row, or, when a sensor reports a second time before the others did,
with what there is (the readings of a round that belong to the pending row are taken
first): a sensor whose latest value is older than ``stale_after`` seconds (reading
time) before the row, or that never reported, is missing (NaN, imputed by the detector from
the others), never zero.

**Lifecycle.** An asset starts in ``commissioning`` (it learns, raises nothing) and is in
``monitoring`` after ``commission_rows`` rows (and ``commission_seconds``); ``recommission``
starts learning again. An asset whose set of sensors changes (a new sensor joins it, one is
forgotten) starts commissioning again too: its model was of other sensors.

**Alerts.** The k-of-n alarm of :class:`~mqtt_anomaly.mvdetectors.AssetDetector` raises and
clears one alert per asset (detector ``asset``, ``sensor_id`` and ``asset_id`` the asset id),
with the contributing sensors' shares.

>>> from mqtt_anomaly.config import AssetSettings
>>> book = AssetBook(AssetSettings())
>>> book.resolve("line-1/pump-7/flow", None), book.resolve("SENSOR-01", None)
(('line-1/pump-7', 'flow'), None)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .config import AssetSettings
from .detectors._grow import capacity_for, grown
from .messages import NO_SEQ, Alert, AlertState, alert_id
from .mvdetectors import MONITORING, PHASES, AssetDetector, AssetScores
from .mvdetectors.offline import create

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

DETECTOR = "asset"
CRITICAL_RATIO = 4.0  # index over its limit from which an asset alert is critical
TOP = 3  # contributing sensors named in an alert's message
_FIELDS = (
    *("assets", "by_id", "detectors", "_free", "_next", "asset_of", "column", "latest"),
    *("latest_ts", "resolved", "got", "full", "row_ts", "active"),
)  # what load_state_dict replaces


@dataclass(slots=True)
class AssetInfo:
    """What the API and the dashboard show of one asset."""

    id: str
    phase: str
    sensors: list[str]
    names: list[str]
    rows: int
    alarm: bool
    score: float | None
    contributions: dict[str, float]


class _Asset:
    __slots__ = ("det_slot", "id", "names", "score", "sensors", "shares", "slots", "width")

    def __init__(self, asset_id: str) -> None:
        self.id = asset_id
        self.names: list[str] = []
        self.sensors: list[str] = []
        self.slots: list[int] = []
        self.det_slot = -1  # slot in the detector of its width (-1: none yet)
        self.width = 0  # the number of sensors of that detector
        self.score = math.nan
        self.shares: FloatArray = np.zeros(0)


def _template_regex(template: str) -> re.Pattern[str] | None:
    if not template:
        return None
    pattern = re.escape(template)
    pattern = pattern.replace(re.escape("{asset}"), "(?P<asset>.+)", 1)
    pattern = pattern.replace(re.escape("{sensor}"), "(?P<sensor>[^/]+)", 1)
    return re.compile(pattern)


class AssetBook:
    """The pipeline's assets (see the module docstring)."""

    def __init__(self, settings: AssetSettings) -> None:
        self.settings = settings
        self._regex = _template_regex(settings.template)
        self._defined = {s: (a.id, s) for a in settings.define for s in a.sensors}
        self._order = {a.id: list(a.sensors) for a in settings.define}
        self.assets: list[_Asset] = []
        self.by_id: dict[str, int] = {}
        self.detectors: dict[int, AssetDetector] = {}  # by number of sensors
        self._free: dict[int, list[int]] = {}  # detector slots given back, by width
        self._next: dict[int, int] = {}
        # per sensor slot: asset index (-1: none), column, latest value and time, resolved
        self.asset_of = np.empty(0, dtype=np.intp)
        self.column = np.empty(0, dtype=np.intp)
        self.latest = np.empty(0)
        self.latest_ts = np.empty(0)
        self.resolved = np.empty(0, dtype=bool)
        # per asset: the columns reported since the last row, all columns, the row's time
        self.got = np.empty(0, dtype=np.uint64)
        self.full = np.empty(0, dtype=np.uint64)
        self.row_ts = np.empty(0)
        self.active = np.empty(0, dtype=bool)

    # ---- membership -------------------------------------------------------------------
    def resolve(self, sensor_id: str, tags: Mapping[str, str] | None) -> tuple[str, str] | None:
        """``(asset id, sensor name)`` of a sensor, or None when it is in no asset."""
        hit = self._defined.get(sensor_id)
        if hit is not None:
            return hit
        found: tuple[str, str] | None = None
        if tags and tags.get("asset"):
            found = tags["asset"], tags.get("quantity") or tags.get("sensor") or sensor_id
        elif self._regex is not None:
            m = self._regex.fullmatch(sensor_id)
            if m is not None:
                found = m["asset"], m["sensor"]
        if found is not None and found[0] in self._order:
            return None  # a defined asset has the sensors its definition lists, no others
        return found

    def _reserve_sensors(self, n: int) -> None:
        if n <= len(self.asset_of):
            return
        cap = capacity_for(n, len(self.asset_of))
        self.asset_of = grown(self.asset_of, cap, -1)
        self.column = grown(self.column, cap, 0)
        self.latest = grown(self.latest, cap, math.nan)
        self.latest_ts = grown(self.latest_ts, cap, math.nan)
        self.resolved = grown(self.resolved, cap, False)

    def _reserve_assets(self, n: int) -> None:
        if n <= len(self.got):
            return
        cap = capacity_for(n, len(self.got))
        self.got = grown(self.got, cap, 0)
        self.full = grown(self.full, cap, 0)
        self.row_ts = grown(self.row_ts, cap, -math.inf)
        self.active = grown(self.active, cap, False)

    def _join(self, slot: int, sensor_id: str, tags: Mapping[str, str] | None) -> None:
        self.resolved[slot] = True
        hit = self.resolve(sensor_id, tags)
        if hit is None:
            return
        asset_id, name = hit
        idx = self.by_id.get(asset_id)
        if idx is None:
            idx = self.by_id[asset_id] = len(self.assets)
            self.assets.append(_Asset(asset_id))
            self._reserve_assets(idx + 1)
        a = self.assets[idx]
        a.names.append(name)
        a.sensors.append(sensor_id)
        a.slots.append(slot)
        order = self._order.get(asset_id)
        if order is not None:  # defined assets: columns in the order of the definition
            ranked = sorted(
                zip(a.sensors, a.names, a.slots, strict=True), key=lambda t: order.index(t[0])
            )
            a.sensors = [t[0] for t in ranked]
            a.names = [t[1] for t in ranked]
            a.slots = [t[2] for t in ranked]
        self.asset_of[slot] = idx
        self._relayout(idx)

    def moved(self, slot: int, sensor_id: str, tags: Mapping[str, str] | None) -> bool:
        """The sensor's tags changed (an MQTT 5 asset property): if they resolve to another
        asset than the one it is in, it leaves that one and joins the new one with its next
        reading. True when it moves."""
        if slot >= len(self.asset_of) or not self.resolved[slot]:
            return False  # not placed yet: it joins by its tags with its first reading
        idx = int(self.asset_of[slot])
        now = self.assets[idx].id if idx >= 0 else None
        hit = self.resolve(sensor_id, tags)
        if (hit[0] if hit is not None else None) == now:
            return False
        self.forget(slot)
        return True

    def forget(self, slot: int) -> None:
        """The pipeline gave ``slot`` to another sensor: take the old one out of its asset."""
        if slot >= len(self.asset_of):
            return
        idx = int(self.asset_of[slot])
        self.resolved[slot] = False
        self.latest[slot] = self.latest_ts[slot] = math.nan
        if idx < 0:
            return
        self.asset_of[slot] = -1
        a = self.assets[idx]
        j = a.slots.index(slot)
        del a.slots[j], a.sensors[j], a.names[j]
        self._relayout(idx)

    def _relayout(self, idx: int) -> None:
        """The asset's sensors changed: new columns, back to commissioning."""
        a = self.assets[idx]
        self._release(a)
        for j, s in enumerate(a.slots):
            self.column[s] = j
        k = len(a.slots)
        self.full[idx] = np.uint64((1 << k) - 1) if k <= 64 else np.uint64(0)
        self.got[idx] = 0
        self.active[idx] = False
        a.score, a.shares = math.nan, np.zeros(k)
        if 2 <= k <= 64:
            det = self._detector(k)
            free = self._free.setdefault(k, [])
            a.det_slot = free.pop() if free else self._take(k)
            a.width = k
            det.recommission(np.array([a.det_slot], dtype=np.intp))

    def _release(self, a: _Asset) -> None:
        if a.det_slot >= 0:
            self._free.setdefault(a.width, []).append(a.det_slot)
        a.det_slot, a.width = -1, 0

    def _take(self, k: int) -> int:
        n = self._next.get(k, 0)
        self._next[k] = n + 1
        return n

    def _detector(self, k: int) -> AssetDetector:
        det = self.detectors.get(k)
        if det is None:
            s = self.settings
            det = self.detectors[k] = create(
                k,
                s.method,
                commission_rows=s.commission_rows,
                commission_seconds=s.commission_seconds,
                **s.params,
            )
        return det

    # ---- rows -------------------------------------------------------------------------
    def observe(
        self,
        slots: IntArray,
        values: FloatArray,
        ts: FloatArray,
        ids: Callable[[int], tuple[str, Mapping[str, str] | None]],
    ) -> list[Alert]:
        """One round of readings (distinct sensor slots); ``ids(slot)`` gives a new slot's
        sensor id and tags. Returns the asset alerts raised or cleared."""
        if not len(slots):
            return []
        top = int(slots.max()) + 1
        if top > len(self.asset_of):
            self._reserve_sensors(top)
        new = ~self.resolved[slots]
        if new.any():
            for s in slots[new].tolist():
                self._join(s, *ids(s))
        a = self.asset_of[slots]
        m = a >= 0
        if not m.any():
            return []
        s, a, v, t = slots[m], a[m], values[m], ts[m]
        bit = np.left_shift(np.uint64(1), self.column[s].astype(np.uint64))
        alerts: list[Alert] = []
        # A round holds one reading per sensor, but not one row per asset: the round of a
        # batch that began mid-row has the rest of that row and the start of the next. The
        # readings of sensors not yet in the pending row complete it; the asset's row is then
        # scored, and the readings of sensors already in it start the next row.
        repeat = (self.got[a] & bit) != 0
        if repeat.any():
            cur = ~repeat
            self._take_readings(s[cur], a[cur], bit[cur], v[cur], t[cur])
            alerts += self._rows(np.unique(a[repeat]))
            self._take_readings(s[repeat], a[repeat], bit[repeat], v[repeat], t[repeat])
        else:
            self._take_readings(s, a, bit, v, t)
        touched = np.unique(a)
        done = touched[self.got[touched] == self.full[touched]]
        if len(done):
            alerts += self._rows(done)
        return alerts

    def _take_readings(
        self, s: IntArray, a: IntArray, bit: NDArray[np.uint64], v: FloatArray, t: FloatArray
    ) -> None:
        self.latest[s] = v
        self.latest_ts[s] = t
        np.bitwise_or.at(self.got, a, bit)
        np.maximum.at(self.row_ts, a, t)

    def _rows(self, assets: IntArray) -> list[Alert]:
        """Score the pending rows of ``assets`` (by width), then start new rows."""
        alerts: list[Alert] = []
        by_width: dict[int, list[int]] = {}
        for i in assets.tolist():
            a = self.assets[i]
            if a.det_slot >= 0:
                by_width.setdefault(len(a.slots), []).append(i)
        for k, idx in by_width.items():
            members = np.array([self.assets[i].slots for i in idx], dtype=np.intp)
            row_ts = self.row_ts[idx]
            rows = self.latest[members]
            seen = self.latest_ts[members]
            stale = ~(seen >= (row_ts - self.settings.stale_after)[:, None])
            rows[stale] = math.nan
            det_slots = np.array([self.assets[i].det_slot for i in idx], dtype=np.intp)
            out = self._detector(k).update(det_slots, rows, row_ts)
            alerts += self._transitions(idx, out, row_ts)
        self.got[assets] = 0
        return alerts

    def _transitions(self, idx: list[int], out: AssetScores, row_ts: FloatArray) -> list[Alert]:
        was = self.active[idx]
        now = out.alarm
        self.active[idx] = now
        for j, i in enumerate(idx):
            a = self.assets[i]
            a.score = float(out.score[j])
            if now[j]:
                a.shares = out.contributions[j].copy()
        alerts = []
        for j in np.flatnonzero(was != now).tolist():
            alerts.append(self._alert(idx[j], bool(now[j]), out, j, float(row_ts[j])))
        return alerts

    def _alert(self, i: int, raised: bool, out: AssetScores, j: int, ts: float) -> Alert:
        a = self.assets[i]
        shares = {s: round(float(x), 4) for s, x in zip(a.sensors, a.shares, strict=True)}
        state: AlertState = "raised" if raised else "cleared"
        ratio = float(out.ratio[j])
        lead = sorted(shares.items(), key=lambda kv: -kv[1])[:TOP]
        named = ", ".join(f"{s} {x:.0%}" for s, x in lead if x > 0)
        if raised:
            message = f"sensors of {a.id} out of their learned relation: {named}"
        else:
            message = f"sensors of {a.id} back in their learned relation"
        return Alert(
            sensor_id=a.id,
            detector=DETECTOR,
            severity="critical" if raised and ratio >= CRITICAL_RATIO else "warning",
            state=state,
            value=None,
            score=round(float(out.score[j]), 6) if math.isfinite(out.score[j]) else 0.0,
            threshold=None,
            expected_low=None,
            expected_high=None,
            reading_ts=ts,
            alert_ts=ts,
            message=message,
            id=alert_id(a.id, DETECTOR, state, NO_SEQ, ts),
            asset_id=a.id,
            contributions=shares,
        )

    # ---- lifecycle and views ----------------------------------------------------------
    def phase(self, i: int) -> str:
        a = self.assets[i]
        if a.det_slot < 0:
            return "incomplete"
        det = self.detectors[len(a.slots)]
        return PHASES[int(det.phase_of(np.array([a.det_slot], dtype=np.intp))[0])]

    def recommission(self, asset_id: str) -> bool:
        """Start learning ``asset_id`` again; False if there is no such asset."""
        i = self.by_id.get(asset_id)
        if i is None:
            return False
        a = self.assets[i]
        if a.det_slot >= 0:
            self.detectors[len(a.slots)].recommission(np.array([a.det_slot], dtype=np.intp))
        self.active[i] = False
        self.got[i] = 0
        a.score, a.shares = math.nan, np.zeros(len(a.slots))
        return True

    def info(self) -> list[AssetInfo]:
        out = []
        for i, a in enumerate(self.assets):
            rows = 0
            if a.det_slot >= 0:
                rows = int(self.detectors[len(a.slots)].state["seen"][a.det_slot])
            out.append(
                AssetInfo(
                    id=a.id,
                    phase=self.phase(i),
                    sensors=list(a.sensors),
                    names=list(a.names),
                    rows=rows,
                    alarm=bool(self.active[i]),
                    score=a.score if math.isfinite(a.score) else None,
                    contributions={
                        s: round(float(x), 4) for s, x in zip(a.sensors, a.shares, strict=True)
                    },
                )
            )
        return out

    def monitoring(self) -> int:
        """How many assets are monitoring."""
        return sum(1 for i in range(len(self.assets)) if self.phase(i) == PHASES[MONITORING])

    # ---- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data: the assets' layout (sensor ids in column order, detector slots) and the
        detectors' state."""
        return {
            "ids": [a.id for a in self.assets],
            "sensors": [list(a.sensors) for a in self.assets],
            "names": [list(a.names) for a in self.assets],
            "det_slots": [a.det_slot for a in self.assets],
            "active": self.active[: len(self.assets)].copy(),
            "detectors": {str(k): d.state_dict() for k, d in self.detectors.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], slots: Mapping[str, int]) -> None:
        """Restore :meth:`state_dict` output; ``slots`` maps sensor ids to the pipeline's
        slots. ValueError (nothing changed) when the state does not fit."""
        ids, sensors, names = state["ids"], state["sensors"], state["names"]
        det_slots, active = state["det_slots"], np.asarray(state["active"], dtype=bool)
        n = len(ids)
        if not (len(sensors) == len(names) == len(det_slots) == len(active) == n):
            raise ValueError("saved asset state: lists differ in length")
        if any(s not in slots for group in sensors for s in group):
            raise ValueError("saved asset state names sensors the pipeline does not know")
        fresh = AssetBook(self.settings)
        for k_text, saved in state["detectors"].items():
            k = int(k_text)
            fresh._detector(k).load_state_dict(saved)
        fresh._reserve_sensors(max(slots.values(), default=-1) + 1)
        fresh._reserve_assets(n)
        for i, (asset_id, group, labels, det_slot) in enumerate(
            zip(ids, sensors, names, det_slots, strict=True)
        ):
            a = _Asset(str(asset_id))
            a.sensors, a.names = [str(s) for s in group], [str(x) for x in labels]
            a.slots = [slots[s] for s in a.sensors]
            a.det_slot = int(det_slot)
            a.shares = np.zeros(len(a.slots))
            k = len(a.slots)
            a.width = k if a.det_slot >= 0 else 0
            known = fresh.detectors.get(k)
            if a.det_slot >= 0 and (known is None or a.det_slot >= known.capacity):
                raise ValueError(f"saved asset state: {asset_id} has no detector state")
            fresh.assets.append(a)
            fresh.by_id[a.id] = i
            for j, s in enumerate(a.slots):
                fresh.asset_of[s] = i
                fresh.column[s] = j
                fresh.resolved[s] = True
            fresh.full[i] = np.uint64((1 << k) - 1) if k <= 64 else np.uint64(0)
            fresh.active[i] = active[i]
            if a.det_slot >= 0:
                fresh._next[k] = max(fresh._next.get(k, 0), a.det_slot + 1)
        for k, det in fresh.detectors.items():
            used = {a.det_slot for a in fresh.assets if len(a.slots) == k}
            fresh._free[k] = [s for s in range(fresh._next.get(k, 0)) if s not in used]
            det.reserve(fresh._next.get(k, 0))
        for name in _FIELDS:
            setattr(self, name, getattr(fresh, name))

"""The processing core: bytes from the broker in, alert events out. No I/O here.

One batch of raw messages takes one straight path:

1. **decode** every payload once (``messages.decode_reading``) or turn it into a dead letter;
2. **dedup / order** by ``(sensor, seq)`` — see :class:`SeqWindow`; a repeated ``seq`` with
   another value than the first is a dead letter (``seq_conflict``), not a duplicate;
3. **score** with every detector, one vectorised call per detector per *round* (a round holds
   at most one reading per sensor, so a batch with several readings of one sensor keeps their
   order);
4. **alert**: each detector's :class:`~mqtt_anomaly.alerting.AlertBook` turns scores into
   raised/cleared events, and the sensor's health is derived from its active alerts
   (:meth:`Pipeline.health_of`: ``ok``, ``anomalous``, ``offline``, ``silent``).

Steps 1–2 are :meth:`Pipeline.decode` (a :class:`Decoded`), steps 3–4 :meth:`Pipeline.score`;
:meth:`Pipeline.process` is both. Readings decoded elsewhere (a replay, another intake) enter
at step 2 through :meth:`Pipeline.score_readings`. The service (``service.py``) feeds batches
in and hands :class:`Output` to the sinks; dashboards and metrics read the state through
:meth:`Pipeline.view` (:class:`~mqtt_anomaly.view.PipelineView`), never its arrays.

**The sensor table.** A sensor gets a slot on its first message, up to
``service.max_sensors``. Once the table is full, a new sensor takes the slot of the sensor
silent longest (no reading, no status), if that one has been silent for over
``service.evict_after`` seconds; everything kept for the slot is reset, and the evicted id is
reported in :attr:`Output.evicted`. Otherwise the new sensor's message is a dead letter
(``sensor_limit``). With ``service.sensor_pattern`` set, an id that does not match it as a
whole never gets a slot (``sensor_not_allowed``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any, Protocol

import msgspec
import numpy as np
from numpy.typing import NDArray

from . import inherit
from .alerting import AlertBook
from .assets import DETECTOR as ASSET_DETECTOR
from .assets import AssetBook
from .config import DetectorSettings, Settings
from .detectors import Detector, available, create
from .detectors._grow import capacity_for, grown
from .detectors.base import FloatArray, IntArray
from .detectors.threshold import ThresholdDetector
from .drift import DRIFT, DriftBook
from .errors import PayloadError, StateFileError
from .mapping import Rule
from .messages import (
    HEALTH_STATES,
    MAX_TS_SKEW_S,
    NO_SEQ,
    Alert,
    AlertState,
    DeadLetter,
    HealthState,
    Reading,
    Severity,
    alert_id,
    dead_letter,
    decode_reading,
    encode,
)
from .sparkplug import NAMESPACE, SparkplugHost
from .topics import TopicTemplate, valid_sensor_id
from .view import PipelineView

SEQ_WINDOW = 1024
NEW, LATE, DUPLICATE, STALE = "new", "late", "duplicate", "stale"
_MASK = (1 << SEQ_WINDOW) - 1
SEQ_VALUES = 32  # per sensor, the values of the last SEQ_VALUES seqs (a power of two)
_RING = SEQ_VALUES - 1
EVICT_SCAN_EVERY = 1.0  # seconds (of message time) between two scans for silent sensors
EVICT_SCAN_MAX = 16_384  # candidates kept from one scan, oldest first
_SLOT, _RECEIVED = itemgetter(0), itemgetter(2)  # of a round's (slot, reading, received_at)

OFFLINE = "offline"
SILENCE = "silence"
DATA_LOSS = "data_loss"  # a Sparkplug node's seq gap


class SeqWindow:
    """Duplicate and order check per sensor: the highest ``seq`` seen and a 1024-bit window.

    - ``seq`` above the highest: **new** (in order, or after a gap: the gap is not waited for);
    - ``seq`` within the window below the highest and not seen: **late** (out of order, e.g. a
      sensor's retransmission after a broker restart): kept in the history but not scored,
      since detectors learn in time order;
    - ``seq`` seen before (a QoS 1 redelivery): **duplicate**, dropped (the pipeline compares
      its value with the first one's: another value is a ``seq_conflict`` dead letter);
    - ``seq`` further back than the window: if it is small (< window) the sensor restarted
      its counter: **new**, and the window starts again; otherwise **stale**, dropped.

    >>> w = SeqWindow()
    >>> w.grow(1)
    >>> [w.check(0, s) for s in (1, 2, 2, 5, 3, 3, 9000, 4000, 1, 2)]
    ['new', 'new', 'duplicate', 'new', 'late', 'duplicate', 'new', 'stale', 'new', 'new']
    """

    def __init__(self) -> None:
        self.top: list[int] = []
        self.mask: list[int] = []

    def grow(self, n: int) -> None:
        while len(self.top) < n:
            self.top.append(-1)
            self.mask.append(0)

    def check(self, slot: int, seq: int) -> str:
        top = self.top[slot]
        if seq == top + 1:  # the common case: the next reading in order
            self.mask[slot] = ((self.mask[slot] << 1) | 1) & _MASK
            self.top[slot] = seq
            return NEW
        if seq > top:
            shift = seq - top
            self.mask[slot] = ((self.mask[slot] << shift) | 1) & _MASK if shift < SEQ_WINDOW else 1
            self.top[slot] = seq
            return NEW
        back = top - seq
        if back < SEQ_WINDOW:
            bit = 1 << back
            if self.mask[slot] & bit:
                return DUPLICATE
            self.mask[slot] |= bit
            return LATE
        if seq < SEQ_WINDOW:
            self.top[slot] = seq
            self.mask[slot] = 1
            return NEW
        return STALE

    def reset(self, slot: int) -> None:
        """Forget every seq seen in ``slot`` (for a slot given to a new sensor)."""
        self.top[slot] = -1
        self.mask[slot] = 0


@dataclass(slots=True)
class Counters:
    """What the pipeline has seen, by outcome."""

    received: int = 0
    processed: int = 0
    duplicates: int = 0
    late: int = 0
    stale: int = 0
    dead_letters: int = 0
    status: int = 0
    alerts_raised: int = 0
    alerts_cleared: int = 0
    seq_conflicts: int = 0
    sensors_evicted: int = 0
    sensors_rejected: int = 0  # messages of a sensor refused a slot (table full, not allowed)
    dead_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Output:
    """What one batch produced, for the sinks."""

    readings: list[Reading] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    health: list[tuple[str, HealthState]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    new_sensors: list[str] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)  # sensors whose slot went to a new one
    commands: list[tuple[str, bytes]] = field(default_factory=list)  # (topic, payload), QoS 0

    def __bool__(self) -> bool:
        return bool(
            self.readings
            or self.alerts
            or self.health
            or self.dead
            or self.evicted
            or self.commands
        )


Round = list[tuple[int, Reading, float]]
"""One round of a batch: ``(slot, reading, received_at)``, at most one reading per sensor."""


class ShadowTap(Protocol):
    """What scores a candidate configuration beside the pipeline's (:mod:`.shadow`)."""

    def score(self, rnd: Round, slots: IntArray, values: FloatArray, ts: FloatArray) -> None:
        """Score one round (the pipeline's, after its gates)."""

    def forget(self, slot: int) -> None:
        """The slot goes to another sensor: forget what was learned for it."""


@dataclass(slots=True, eq=False)
class Decoded:
    """One batch decoded and placed, not scored yet (:meth:`Pipeline.decode`).

    ``out`` already holds what decoding produced: every reading to store (in arrival order,
    late ones included), dead letters, new and evicted sensors, and the alerts and health
    changes of status messages and evictions. ``rounds`` are the readings to score with their
    slot and receive time, the k-th reading of each sensor in round k; ``late`` the
    ``(slot, seq, value)`` of late readings, recorded once the rounds are.
    """

    out: Output
    rounds: list[list[tuple[int, Reading, float]]]
    late: list[tuple[int, int, float]]

    @property
    def scored(self) -> int:
        """How many readings :meth:`Pipeline.score` will score."""
        return sum(len(r) for r in self.rounds)


def cleared_alert(sensor_id: str, detector: str, critical: bool, now: float, message: str) -> Alert:
    """The ``cleared`` event of an alert that no reading clears: its sensor forgotten, its
    detector removed by a reload."""
    severity: Severity = "critical" if critical else "warning"
    return Alert(
        sensor_id=sensor_id,
        detector=detector,
        severity=severity,
        state="cleared",
        value=None,
        score=0.0,
        threshold=None,
        expected_low=None,
        expected_high=None,
        reading_ts=None,
        alert_ts=now,
        message=message,
        id=alert_id(sensor_id, detector, "cleared", NO_SEQ, now),
    )


class Pipeline:
    """Decode → dedup → detect → alert for many sensors; state is per sensor slot."""

    def __init__(self, settings: Settings, detectors: Sequence[Detector] | None = None) -> None:
        self.settings = settings
        self.gate: Callable[[Round], Round] | None = None
        """Takes a round and returns the readings of it to score (operating-state gates,
        :mod:`.gates`); None: every reading is scored."""
        self.shadow: ShadowTap | None = None
        """A candidate configuration scoring the same rounds (``[shadow]``, :mod:`.shadow`)."""
        ds = settings.detector
        self.readings_topic = TopicTemplate(settings.topics.readings)
        self.status_topic = TopicTemplate(settings.topics.status)
        self.detectors: list[Detector] = (
            list(detectors) if detectors is not None else [create(n, ds) for n in ds.detectors]
        )
        self.books: dict[str, AlertBook] = {d.name: _book(d, ds) for d in self.detectors}
        # [overrides]: detectors some sensors choose beyond the defaults, and per-slot masks of
        # which sensors each detector scores (only for detectors a sensor may leave or join)
        self._enabled: dict[str, NDArray[np.bool_]] = {}
        if settings.overrides:
            inherit.check(settings, available())
            self._add_chosen_detectors(ds)
        self.books[SILENCE] = AlertBook(SILENCE, debounce=1, clear_after=1)
        self.books[OFFLINE] = AlertBook(OFFLINE, critical_level=0.5, debounce=1, clear_after=1)
        self.sensors: dict[str, int] = {}
        self.sensor_ids: list[str] = []
        self.seq = SeqWindow()
        self.health: list[HealthState] = []
        # per-sensor columns, indexed by slot (capacity grows by doubling)
        self.last_value = np.empty(0)
        self.last_ts = np.empty(0)
        self.last_seen = np.empty(0)
        self.interval = np.empty(0)
        # when a sensor was last heard other than by a scored reading (status, late reading,
        # first message, restored state); its activity is the later of this and last_seen
        self.last_active = np.empty(0)
        # the values of the last SEQ_VALUES seqs, at seq % SEQ_VALUES (NaN: none recorded)
        self.seq_values = np.empty((0, SEQ_VALUES))
        self.counters = Counters()
        self._reading_topics: dict[str, tuple[str, int]] = {}
        pattern = settings.service.sensor_pattern
        self._pattern = re.compile(pattern) if pattern else None
        self._candidates: list[int] = []  # slots silent for evict_after, the oldest last
        self._scanned = -math.inf  # message time of the last scan for them
        self._scan_more = False  # the last scan found more than it kept
        # per batch being decoded: slots with readings in it, first values by seq
        self._pending: dict[int, int] = {}
        self._firsts: dict[tuple[str, int], float] = {}
        self._indexed = 0
        self._open: Decoded | None = None  # decoded, not scored yet
        mapping = settings.mapping.compiled
        self.mapping = mapping if mapping.rules else None
        # topic → (rule, tags, quantity → sensor id) for topics a mapping rule applies to
        self._mapped_topics: dict[str, tuple[Rule, dict[str, str], dict[str, str]]] = {}
        self.tags: dict[str, dict[str, str]] = {}  # sensor id → its tags (mapped sensors)
        self.units: dict[str, str] = {}  # sensor id → unit named by an MQTT 5 user property
        sp = settings.sparkplug
        self.sparkplug = (
            SparkplugHost(rebirth=sp.rebirth, rebirth_interval=sp.rebirth_interval)
            if sp.enabled
            else None
        )
        self._sp_prefix = NAMESPACE + "/"
        self.assets = AssetBook(settings.assets)
        self.drift = DriftBook(settings.drift)  # score distributions: model health
        self._view = PipelineView(self)

    def _add_chosen_detectors(self, ds: DetectorSettings) -> None:
        o = self.settings.overrides
        chosen = [*o.groups, *o.assets.values(), *o.sensors.values()]
        names = dict.fromkeys(n for c in chosen for n in (c.detectors or ()))
        have = {d.name for d in self.detectors}
        for name in names:
            if name not in have:
                det = create(name, ds)
                self.detectors.append(det)
                self.books[name] = _book(det, ds)
        if any(c.detectors is not None for c in chosen):
            for d in self.detectors:
                self._enabled[d.name] = np.zeros(0, dtype=bool)

    def _configure(self, slot: int, sid: str) -> None:
        """Apply ``[overrides]`` to a new sensor: its threshold and its detectors."""
        asset = self.assets.resolve(sid, self.tags.get(sid))
        eff = inherit.effective(self.settings, sid, asset[0] if asset else None)
        for det in self.detectors:
            if isinstance(det, ThresholdDetector) and eff["threshold"].source != "defaults":
                det.set_limits(slot, eff["threshold"].value, eff["threshold_clear"].value)
            mask = self._enabled.get(det.name)
            if mask is not None:
                if slot >= len(mask):
                    mask = self._enabled[det.name] = grown(
                        mask, capacity_for(slot + 1, len(mask)), False
                    )
                mask[slot] = det.name in eff["detectors"].value

    def view(self) -> PipelineView:
        """Read-only access to the sensor table, health, alerts and counters (for dashboards
        and metrics)."""
        return self._view

    # ---- sensors -------------------------------------------------------------------
    def slot_of(self, sensor_id: str, out: Output, now: float = math.nan) -> int | None:
        """The sensor's slot; a new sensor gets a free one or, with the table full, the slot
        of a sensor silent for over ``evict_after`` at ``now``; None if there is none."""
        slot = self.sensors.get(sensor_id)
        if slot is not None:
            return slot
        cap = self.settings.service.max_sensors
        if len(self.sensor_ids) >= cap:
            return self._evict_for(sensor_id, now, out)
        slot = len(self.sensor_ids)
        self.sensors[sensor_id] = slot
        self.sensor_ids.append(sensor_id)
        self.health.append("ok")
        if slot >= len(self.last_seen):
            self._grow_columns(capacity_for(slot + 1, len(self.last_seen), limit=cap))
        self.seq.grow(slot + 1)
        self.last_active[slot] = now
        self.drift.admit(slot)
        out.new_sensors.append(sensor_id)
        if self.settings.overrides:
            self._configure(slot, sensor_id)
        return slot

    def _admit(
        self, sid: str, topic: str, payload: bytes, received_at: float, out: Output
    ) -> int | None:
        """A slot for a sensor not known yet, or a dead letter saying why there is none."""
        if self._pattern is not None and self._pattern.fullmatch(sid) is None:
            exc = PayloadError("sensor_not_allowed", "sensor id does not match sensor_pattern")
        else:
            slot = self.slot_of(sid, out, received_at)
            if slot is not None:
                return slot
            s = self.settings.service
            exc = PayloadError(
                "sensor_limit",
                f"service.max_sensors = {s.max_sensors} sensors known, "
                f"none silent for service.evict_after = {s.evict_after:g} s",
            )
        self.counters.sensors_rejected += 1  # logged (rate-limited) by the dead-letter sink
        self._reject(topic, payload, exc, received_at, out)
        return None

    def _admit_reading(self, r: Reading, received_at: float, out: Output) -> int | None:
        """:meth:`_admit` for a reading that came without a topic."""
        topic = self.readings_topic.format(r.sensor_id)
        if not valid_sensor_id(r.sensor_id):
            exc = PayloadError("invalid_field", "sensor_id is not a valid sensor id")
            self._reject(topic, encode(r), exc, received_at, out)
            return None
        return self._admit(r.sensor_id, topic, encode(r), received_at, out)

    def _evict_for(self, sid: str, now: float, out: Output) -> int | None:
        """Give ``sid`` the slot of the sensor silent longest, if silent for evict_after."""
        slot = self._evictable(now)
        if slot is None:
            return None
        old = self.sensor_ids[slot]
        self._clear_slot(slot, old, now, out)
        del self.sensors[old]
        self._reading_topics.pop(self.readings_topic.format(old), None)
        self.tags.pop(old, None)
        self.units.pop(old, None)
        self.sensors[sid] = slot
        self.sensor_ids[slot] = sid
        self.counters.sensors_evicted += 1
        out.evicted.append(old)
        out.new_sensors.append(sid)
        return slot

    def _evictable(self, now: float) -> int | None:
        """Pop the candidate silent longest that is still silent; scan for candidates at
        most once per ``EVICT_SCAN_EVERY`` (unless the last scan had more than it kept)."""
        limit = now - self.settings.service.evict_after
        if not limit > -math.inf:  # NaN (no time given) or evict_after = inf
            return None
        cand = self._candidates
        if not cand and (self._scan_more or not 0 <= now - self._scanned < EVICT_SCAN_EVERY):
            self._scan(now, limit)
            cand = self._candidates
        seen, active, pending = self.last_seen, self.last_active, self._pending
        while cand:
            slot = cand.pop()
            if slot in pending:  # heard in this batch
                continue
            heard = float(active[slot])
            if not math.isnan(seen[slot]):
                heard = max(float(seen[slot]), heard)  # NaN (unknown) never counts as silent
            if heard < limit:
                return slot
        return None

    def _scan(self, now: float, limit: float) -> None:
        """One vectorised pass: the slots silent since before ``limit``, the oldest last."""
        self._scanned = now
        n = len(self.sensor_ids)
        active = self.last_active[:n]
        unknown = np.isnan(active)
        if unknown.any():  # restored from a file without activity times: count from now
            active[unknown] = now
        last = np.fmax(self.last_seen[:n], active)
        old = np.flatnonzero(last < limit)
        self._scan_more = len(old) > EVICT_SCAN_MAX
        if self._scan_more:
            old = old[np.argpartition(last[old], EVICT_SCAN_MAX)[:EVICT_SCAN_MAX]]
        self._candidates = old[np.argsort(-last[old], kind="stable")].tolist()

    def _clear_slot(self, slot: int, sid: str, now: float, out: Output) -> None:
        """Reset everything kept for ``slot``; its active alerts are cleared (as events)."""
        idx = np.array([slot], dtype=np.intp)
        for det in self.detectors:
            det.reserve(slot + 1)
            det.reset(idx)
        last = float(np.fmax(self.last_seen[slot], self.last_active[slot]))
        message = f"sensor forgotten: silent for {now - last:.0f}s and the sensor table is full"
        for name, book in self.books.items():
            if slot < len(book.active) and book.active[slot]:
                self.counters.alerts_cleared += 1
                out.alerts.append(cleared_alert(sid, name, bool(book.critical[slot]), now, message))
            book.reset(idx)
        self.assets.forget(slot)
        self.drift.reset(slot)
        if self.shadow is not None:
            self.shadow.forget(slot)
        self.seq.reset(slot)
        self.seq_values[slot] = math.nan
        self.last_value[slot] = math.nan
        self.last_ts[slot] = math.nan
        self.last_seen[slot] = math.nan
        self.interval[slot] = self.settings.detector.interval
        self.last_active[slot] = now
        self.health[slot] = "ok"

    # ---- one batch -----------------------------------------------------------------
    def process(self, batch: Iterable[tuple[str, bytes, float]]) -> Output:
        """Process raw ``(topic, payload, received_at)`` messages in arrival order:
        :meth:`decode` then :meth:`score`."""
        return self.score(self.decode(batch))

    def score_readings(
        self, readings: Sequence[Reading], received_at: float | Sequence[float]
    ) -> Output:
        """Process readings already decoded (a replay, another intake) in arrival order:
        :meth:`decode_readings` then :meth:`score`. ``received_at`` is one time for all of
        them or one per reading."""
        return self.score(self.decode_readings(readings, received_at))

    def decode(self, batch: Iterable[tuple[str, bytes, float]]) -> Decoded:
        """Decode raw messages and place them, without scoring: topics are classified (a
        status is applied), payloads decoded, sensors given slots (the sensor table), seqs
        checked (duplicates, late readings, seq conflicts). Pass the result to :meth:`score`
        before the next batch is decoded."""
        out = Output()
        rounds: list[list[tuple[int, Reading, float]]] = []
        late: list[tuple[int, int, float]] = []
        depth: dict[int, int] = {}  # slot → readings of it in this batch's rounds
        self._open = decoded = Decoded(out, rounds, late)
        self._pending = depth
        self._firsts = {}
        self._indexed = 0
        max_size = self.settings.service.max_payload
        c = self.counters
        cache = self._reading_topics
        check = self.seq.check
        mapped = self.mapping is not None
        sparkplug, sp_prefix = self.sparkplug is not None, self._sp_prefix
        for topic, payload, received_at in batch:
            c.received += 1
            known = cache.get(topic)
            if known is None:
                if mapped and self._decode_mapped(topic, payload, received_at, decoded):
                    continue
                if sparkplug and topic.startswith(sp_prefix):
                    self._decode_sparkplug(topic, payload, received_at, decoded)
                    continue
                known = self._classify(topic, payload, received_at, out)
                if known is None:
                    continue
            sid, slot = known
            try:
                reading = decode_reading(payload, sid, received_at, max_size)
            except PayloadError as exc:
                self._reject(topic, payload, exc, received_at, out)
                continue
            if reading.seq != NO_SEQ:
                verdict = check(slot, reading.seq)
                if verdict is not NEW:
                    self._out_of_order(verdict, slot, reading, received_at, decoded, topic, payload)
                    continue
            r = depth.get(slot, 0)
            depth[slot] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append((slot, reading, received_at))
            out.readings.append(reading)
        if self.units:  # MQTT 5 unit properties: the batch's readings of those sensors
            self._apply_units(out.readings)
        return decoded

    def note_properties(self, topic: str, unit: str | None, asset: str | None) -> None:
        """MQTT 5 user properties of a message on ``topic`` (a sensor's readings topic):
        ``unit`` becomes the sensor's unit (shown with it, carried by its readings from
        then on), ``asset`` puts the sensor in that asset (above a mapping rule's tag and
        ``assets.template``, below ``assets.define``). Called before the message's batch is
        decoded; a message repeating what the sensor has costs two dict lookups."""
        known = self._reading_topics.get(topic)
        sid = known[0] if known is not None else self.readings_topic.sensor_id(topic)
        if sid is None:
            return
        cap = self.settings.service.max_sensors  # bounded whatever ids come
        units = self.units
        if unit is not None and units.get(sid) != unit and (sid in units or len(units) < cap):
            units[sid] = unit[:32]
        if asset is None:
            return
        tags = self.tags.get(sid)
        if tags is not None and tags.get("asset") == asset:
            return
        if tags is None and sid not in self.sensors and len(self.tags) >= 2 * cap:
            return
        self.tags[sid] = {**(tags or {}), "asset": asset}
        slot = self.sensors.get(sid)  # already placed: moved to that asset if it is another
        moved = slot is not None and self.assets.moved(slot, sid, self.tags[sid])
        if moved and slot is not None and self.settings.overrides:
            self._configure(slot, sid)

    def _apply_units(self, readings: list[Reading]) -> None:
        units = self.units
        for i, r in enumerate(readings):
            unit = units.get(r.sensor_id)
            if unit is not None and unit != r.unit:
                readings[i] = msgspec.structs.replace(r, unit=unit)

    def _decode_mapped(
        self, topic: str, payload: bytes, received_at: float, decoded: Decoded
    ) -> bool:
        """A message on a topic of a mapping rule: its readings placed (or dead letters);
        False when no rule applies to the topic."""
        entry = self._mapped_topics.get(topic)
        if entry is None:
            assert self.mapping is not None
            found = self.mapping.match(topic)
            if found is None:
                return False
            if len(self._mapped_topics) >= 2 * self.settings.service.max_sensors:
                self._mapped_topics.clear()  # bounded whatever topics come
            entry = self._mapped_topics[topic] = (*found, {})
        rule, tags, sids = entry
        out = decoded.out
        max_size = self.settings.service.max_payload
        if len(payload) > max_size:
            big = PayloadError("oversized", f"{len(payload)} bytes > {max_size}")
            self._reject(topic, payload, big, received_at, out)
            return True
        if not payload:
            self._reject(topic, payload, PayloadError("empty"), received_at, out)
            return True
        try:
            values, missing = rule.decode(payload, received_at)
        except PayloadError as exc:
            self._reject(topic, payload, exc, received_at, out)
            return True
        if missing:  # the values found are read; what was not is reported
            lack = PayloadError("missing_field", "no value at " + ", ".join(missing))
            self._reject(topic, payload, lack, received_at, out)
        sensors = self.sensors
        for quantity, ts, value, unit, seq in values:
            sid = sids.get(quantity)
            if sid is None:
                sid = rule.sensor_id(tags, quantity)
                if sid is None:
                    bad = PayloadError("invalid_field", f"no valid sensor id for {quantity!r}")
                    self._reject(topic, payload, bad, received_at, out)
                    continue
                if len(sids) < 4096:
                    sids[quantity] = sid
            slot = sensors.get(sid)
            if slot is None:
                slot = self._admit(sid, topic, payload, received_at, out)
                if slot is None:
                    continue
                self.tags[sid] = {**tags, "quantity": quantity} if quantity else tags
                if self.settings.overrides:  # the asset may come from the tags
                    self._configure(slot, sid)
            self._place(
                slot, Reading(sid, ts, value, unit, seq), received_at, decoded, topic, payload
            )
        return True

    def _decode_sparkplug(
        self, topic: str, payload: bytes, received_at: float, decoded: Decoded
    ) -> None:
        """A Sparkplug B message (:mod:`.sparkplug`): births give sensors their slots and tags,
        data their readings, deaths take them offline, a seq gap raises a data-loss alert."""
        assert self.sparkplug is not None
        m = self.sparkplug.handle(topic, payload, received_at)
        out = decoded.out
        if m.error is not None:
            self._reject(topic, payload, m.error, received_at, out)
        if m.rebirth is not None:
            out.commands.append(m.rebirth)
        sensors = self.sensors
        for b in m.born:
            slot = sensors.get(b.sensor)
            if slot is None:
                slot = self._admit(b.sensor, topic, payload, received_at, out)
                if slot is None:
                    continue
            self.tags[b.sensor] = b.tags
            for det in self.detectors:  # the birth's engLow/engHigh (NaN: none)
                det.seed_range(slot, b.low, b.high)
        for sid, ts, value, unit in m.values:
            slot = sensors.get(sid)
            if slot is None:  # evicted since its birth
                slot = self._admit(sid, topic, payload, received_at, out)
                if slot is None:
                    continue
            self._place(slot, Reading(sid, ts, value, unit, NO_SEQ), received_at, decoded)
        for sids, offline in ((m.offline, True), (m.online, False)):
            for sid in sids:
                slot = sensors.get(sid)
                if slot is not None:
                    self._set_offline(slot, sid, offline, received_at, m.why_offline, out)
        if m.loss_started or m.gap_closed:
            self._data_loss(m.gap, m.gap_closed, received_at, out)

    def _data_loss(
        self, gap: tuple[str, int] | None, closed: str, received_at: float, out: Output
    ) -> None:
        """A Sparkplug node's seq gap: a ``data_loss`` alert on the node's id (no slot: the
        node is not a sensor), raised at its first gap and cleared by its next birth."""
        if gap is not None:
            node, lost = gap
            why, value = f"Sparkplug seq gap: {lost} message(s) lost", float(lost)
        else:
            node, why, value = closed, "Sparkplug node born again", None
        out.alerts.append(
            self._event(node, DATA_LOSS, "warning", gap is not None, value, received_at, why)
        )

    def _event(
        self,
        sid: str,
        detector: str,
        severity: Severity,
        raised: bool,
        value: float | None,
        ts: float,
        message: str,
    ) -> Alert:
        """An alert raised or cleared by an event (a status, a death, a seq gap), counted."""
        if raised:
            self.counters.alerts_raised += 1
        else:
            self.counters.alerts_cleared += 1
        state: AlertState = "raised" if raised else "cleared"
        return Alert(
            sensor_id=sid,
            detector=detector,
            severity=severity,
            state=state,
            value=value,
            score=1.0 if raised else 0.0,
            threshold=None,
            expected_low=None,
            expected_high=None,
            reading_ts=None,
            alert_ts=ts,
            message=message,
            id=alert_id(sid, detector, state, NO_SEQ, ts),
        )

    def _place(
        self,
        slot: int,
        reading: Reading,
        received_at: float,
        decoded: Decoded,
        topic: str | None = None,
        payload: bytes | None = None,
    ) -> None:
        """One decoded reading checked by seq and put in its round (or set aside)."""
        if reading.seq != NO_SEQ:
            verdict = self.seq.check(slot, reading.seq)
            if verdict is not NEW:
                self._out_of_order(verdict, slot, reading, received_at, decoded, topic, payload)
                return
        depth = self._pending
        r = depth.get(slot, 0)
        depth[slot] = r + 1
        rounds = decoded.rounds
        if r == len(rounds):
            rounds.append([])
        rounds[r].append((slot, reading, received_at))
        decoded.out.readings.append(reading)

    def decode_readings(
        self, readings: Sequence[Reading], received_at: float | Sequence[float]
    ) -> Decoded:
        """:meth:`decode` for readings already decoded: each is checked (a valid sensor id,
        a finite value and time, a seq in range), given its sensor's slot and its seq
        checked, as if it had come in on its sensor's readings topic."""
        recv: Iterable[float]
        if isinstance(received_at, int | float):
            recv = repeat(float(received_at), len(readings))
        elif len(received_at) != len(readings):
            raise ValueError(f"{len(received_at)} receive times for {len(readings)} readings")
        else:
            recv = received_at
        out = Output()
        rounds: list[list[tuple[int, Reading, float]]] = []
        late: list[tuple[int, int, float]] = []
        depth: dict[int, int] = {}
        self._open = decoded = Decoded(out, rounds, late)
        self._pending = depth
        self._firsts = {}
        self._indexed = 0
        c = self.counters
        sensors = self.sensors
        isfinite = math.isfinite
        for reading, at in zip(readings, recv, strict=True):
            c.received += 1
            sid = reading.sensor_id
            slot = sensors.get(sid)
            if slot is None:
                slot = self._admit_reading(reading, at, out)
                if slot is None:
                    continue
            seq = reading.seq
            if not (isfinite(reading.value) and abs(reading.ts - at) < MAX_TS_SKEW_S):
                self._reject_reading(reading, _invalid(reading), at, out)
                continue
            if seq != NO_SEQ and not 0 <= seq < 2**62:
                exc = PayloadError("invalid_field", f"seq out of range: {seq}")
                self._reject_reading(reading, exc, at, out)
                continue
            self._place(slot, reading, at, decoded)
        return decoded

    def score(self, decoded: Decoded) -> Output:
        """Score a decoded batch round by round: detectors, alert books, health. Every
        :class:`Decoded` is scored once, in the order decoded, before the next decode."""
        if decoded is not self._open:
            raise RuntimeError("score the batch decoded last, once")
        self._open = None
        out = decoded.out
        rounds = decoded.rounds
        gate = self.gate
        for rnd in rounds:
            scored = rnd if gate is None else gate(rnd)  # gates: held sensors are not scored
            if scored:
                self._score(scored, out)
        if decoded.late:
            self._record_late(decoded.late)
        self.counters.processed += decoded.scored
        return out

    def _out_of_order(
        self,
        verdict: str,
        slot: int,
        reading: Reading,
        received_at: float,
        decoded: Decoded,
        topic: str | None = None,
        payload: bytes | None = None,
    ) -> None:
        """A reading whose seq is not the next of its sensor: a duplicate (or a seq conflict),
        stale (dropped) or late (kept, not scored)."""
        c = self.counters
        out = decoded.out
        if verdict is DUPLICATE:
            if not self._conflict(slot, reading, received_at, out, topic, payload):
                c.duplicates += 1
        elif verdict is STALE:
            c.stale += 1
        else:
            c.late += 1
            out.readings.append(reading)
            decoded.late.append((slot, reading.seq, reading.value))
            self.last_active[slot] = received_at
            self._pending.setdefault(slot, 0)  # heard in this batch: not to be evicted

    def _conflict(
        self,
        slot: int,
        r: Reading,
        received_at: float,
        out: Output,
        topic: str | None,
        payload: bytes | None,
    ) -> bool:
        """A repeated seq: a dead letter if its value differs from the first one's. The first
        value is this batch's (not recorded yet) or in the slot's ring if the seq is among the
        last SEQ_VALUES; an older one cannot be checked (a plain duplicate)."""
        first = None
        if slot in self._pending:  # the sensor has readings in this batch: the first may be one
            firsts = self._firsts
            readings = out.readings
            for x in readings[self._indexed :]:  # each reading indexed at most once a batch
                if x.seq != NO_SEQ:
                    firsts.setdefault((x.sensor_id, x.seq), x.value)
            self._indexed = len(readings)
            first = firsts.get((r.sensor_id, r.seq))
        if first is None:
            if self.seq.top[slot] - r.seq >= SEQ_VALUES:
                return False
            first = float(self.seq_values[slot, r.seq & _RING])
        if first == r.value or math.isnan(first):  # the same value, or none recorded (NaN)
            return False
        self.counters.seq_conflicts += 1
        detail = f"seq {r.seq}: first value {first!r}, now {r.value!r}"
        exc = PayloadError("seq_conflict", detail)
        if topic is None or payload is None:
            self._reject_reading(r, exc, received_at, out)
        else:
            self._reject(topic, payload, exc, received_at, out)
        return True

    def _record_late(self, late: list[tuple[int, int, float]]) -> None:
        """Record the values of this batch's late readings, once its new ones are recorded:
        only those among their sensor's last SEQ_VALUES seqs (else a newer one's place)."""
        top = self.seq.top
        ring = self.seq_values
        for slot, seq, value in late:
            if top[slot] - seq < SEQ_VALUES:
                ring[slot, seq & _RING] = value

    def _grow_columns(self, cap: int) -> None:
        """Every per-slot column (and the 2-D ``seq_values`` ring) to ``cap`` slots."""
        self.last_value = grown(self.last_value, cap, math.nan)
        self.last_ts = grown(self.last_ts, cap, math.nan)
        self.last_seen = grown(self.last_seen, cap, math.nan)
        self.interval = grown(self.interval, cap, self.settings.detector.interval)
        self.last_active = grown(self.last_active, cap, math.nan)
        self.seq_values = grown(self.seq_values, cap, math.nan)

    def _classify(
        self, topic: str, payload: bytes, received_at: float, out: Output
    ) -> tuple[str, int] | None:
        """A topic not seen before: a new sensor's readings (cached), a status, or junk."""
        sid = self.readings_topic.sensor_id(topic)
        if sid is None:
            sid = self.status_topic.sensor_id(topic)
            if sid is not None:
                self._status(sid, payload, received_at, out)
            else:
                self._reject(topic, payload, PayloadError("unexpected_topic"), received_at, out)
            return None
        slot = self.sensors.get(sid)
        if slot is None:
            slot = self._admit(sid, topic, payload, received_at, out)
            if slot is None:
                return None
        known = self._reading_topics[topic] = (sid, slot)  # bounded by max_sensors
        return known

    def _score(self, rnd: list[tuple[int, Reading, float]], out: Output) -> None:
        n = len(rnd)
        slots = np.fromiter(map(_SLOT, rnd), dtype=np.intp, count=n)
        values = np.fromiter((r.value for _, r, _ in rnd), dtype=np.float64, count=n)
        ts = np.fromiter((r.ts for _, r, _ in rnd), dtype=np.float64, count=n)
        recv = np.fromiter(map(_RECEIVED, rnd), dtype=np.float64, count=n)
        seqs = np.fromiter((r.seq for _, r, _ in rnd), dtype=np.int64, count=n)
        has_seq = seqs != NO_SEQ
        if has_seq.all():
            self.seq_values[slots, seqs & _RING] = values
        else:
            self.seq_values[slots[has_seq], seqs[has_seq] & _RING] = values[has_seq]
        self._arrived(slots, recv)
        touched: set[int] = set()
        top = self.detect(rnd, slots, values, ts, out, touched)
        if top is not None:  # model health: the round's top scores
            self.drift.update(slots, top, recv)
        if self.shadow is not None:  # a candidate configuration scores the same readings
            self.shadow.score(rnd, slots, values, ts)
        self.last_value[slots] = values
        self.last_ts[slots] = ts
        asset_alerts = self.assets.observe(slots, values, ts, self._identity)
        if asset_alerts:
            out.alerts += asset_alerts
        self._update_health(touched, out)

    def detect(
        self,
        rnd: Round,
        slots: IntArray,
        values: FloatArray,
        ts: FloatArray,
        out: Output,
        touched: set[int],
    ) -> FloatArray | None:
        """Every detector scores one round, its alert book turns scores into alerts (in
        ``out``; their slots added to ``touched``); returns each reading's highest score
        (None without detectors)."""
        enabled = self._enabled
        top: FloatArray | None = None  # the highest score of each reading (drift)
        for det in self.detectors:
            scores = det.update(slots, values, ts)
            if enabled:
                mask = enabled[det.name]
                on = np.zeros(len(slots), dtype=bool)
                inside = slots < len(mask)
                on[inside] = mask[slots[inside]]
                scores = scores._replace(score=np.where(on, scores.score, 0.0))
            top = scores.score if top is None else np.maximum(top, scores.score)
            book = self.books[det.name]
            tr = book.step(slots, scores.score)
            for k, i in enumerate(tr.raised.tolist()):
                slot, reading, _ = rnd[i]
                sev = "critical" if tr.critical[k] else "warning"
                out.alerts.append(self._alert(reading, det, "raised", sev, scores, i, slot))
                touched.add(slot)
            for i in tr.cleared.tolist():
                slot, reading, _ = rnd[i]
                sev = "critical" if book.critical[slot] else "warning"
                out.alerts.append(self._alert(reading, det, "cleared", sev, scores, i, slot))
                touched.add(slot)
        return top

    def _identity(self, slot: int) -> tuple[str, dict[str, str] | None]:
        """A slot's sensor id and its tags (for the assets)."""
        sid = self.sensor_ids[slot]
        return sid, self.tags.get(sid)

    def _arrived(self, slots: IntArray, recv: FloatArray) -> None:
        """Learn each sensor's usual interval (EWMA of arrival gaps) and note the arrival."""
        gap = recv - self.last_seen[slots]  # NaN for a first reading: no update
        usual = self.interval[slots]
        ok = (gap > 0) & (gap < 60 * usual)
        self.interval[slots] = np.where(ok, usual + 0.05 * (gap - usual), usual)
        self.last_seen[slots] = recv

    def _alert(
        self, r: Reading, det: Detector, state: str, sev: str, scores: Any, i: int, slot: int
    ) -> Alert:
        lo = float(scores.low[i])
        hi = float(scores.high[i])
        threshold = (
            det.threshold_of(slot)
            if isinstance(det, ThresholdDetector)
            else getattr(det, "threshold", None)
        )
        if state == "raised":
            self.counters.alerts_raised += 1
        else:
            self.counters.alerts_cleared += 1
        return Alert(
            sensor_id=r.sensor_id,
            detector=det.name,
            severity=sev,  # type: ignore[arg-type]
            state=state,  # type: ignore[arg-type]
            value=r.value,
            score=round(float(scores.score[i]), 6),
            threshold=float(threshold) if isinstance(threshold, int | float) else None,
            expected_low=lo if math.isfinite(lo) else None,
            expected_high=hi if math.isfinite(hi) else None,
            reading_ts=r.ts,
            alert_ts=r.ts,
            id=alert_id(r.sensor_id, det.name, state, r.seq, r.ts),
        )

    # ---- status, silence, health ----------------------------------------------------
    def _status(self, sid: str, payload: bytes, received_at: float, out: Output) -> None:
        self.counters.status += 1
        text = payload.strip().lower()
        if text not in (b"online", b"offline"):
            self._reject(
                self.status_topic.format(sid), payload, PayloadError("bad_status"), received_at, out
            )
            return
        slot = self.sensors.get(sid)
        if slot is None:
            slot = self._admit(sid, self.status_topic.format(sid), payload, received_at, out)
            if slot is None:
                return
        self.last_active[slot] = received_at
        offline = text == b"offline"
        self._set_offline(slot, sid, offline, received_at, "sensor offline (Last Will)", out)

    def _set_offline(
        self, slot: int, sid: str, offline: bool, received_at: float, why: str, out: Output
    ) -> None:
        """The sensor's offline alert raised (``why``) or cleared, its health updated."""
        book = self.books[OFFLINE]
        if book.set_state(slot, offline, critical=offline):
            message = why if offline else "sensor back online"
            alert = self._event(sid, OFFLINE, "critical", offline, None, received_at, message)
            out.alerts.append(alert)
        self._update_health({slot}, out)

    def check_silence(self, now: float) -> Output:
        """Raise/clear silence alerts: no reading for ``silence_factor`` × the usual interval."""
        out = Output()
        n = len(self.sensor_ids)
        if not n:
            return out
        seen = self.last_seen[:n]
        limit = self.settings.detector.silence_factor * self.interval[:n]
        offline = self.books[OFFLINE].active
        off = np.zeros(n, dtype=bool)
        off[: min(n, len(offline))] = offline[:n]
        silent = (now - seen > limit) & ~off  # NaN (never seen) is not silent
        slots = np.arange(n, dtype=np.intp)
        book = self.books[SILENCE]
        tr = book.step(slots, silent.astype(np.float64))
        for i in tr.raised.tolist():
            self.counters.alerts_raised += 1
            out.alerts.append(self._silence_alert(i, "raised", now, limit[i]))
        for i in tr.cleared.tolist():
            self.counters.alerts_cleared += 1
            out.alerts.append(self._silence_alert(i, "cleared", now, limit[i]))
        self._update_health(set(tr.raised.tolist()) | set(tr.cleared.tolist()), out)
        return out

    def _silence_alert(self, slot: int, state: str, now: float, limit: float) -> Alert:
        last = float(self.last_seen[slot])
        last_ts = float(self.last_ts[slot])
        sid = self.sensor_ids[slot]
        return Alert(
            sensor_id=sid,
            detector=SILENCE,
            severity="warning",
            state=state,  # type: ignore[arg-type]
            value=None,
            score=1.0 if state == "raised" else 0.0,
            threshold=round(float(limit), 3),
            expected_low=None,
            expected_high=None,
            reading_ts=None if math.isnan(last_ts) else last_ts,
            alert_ts=now,
            message=f"no reading for {now - last:.1f}s",
            id=alert_id(sid, SILENCE, state, NO_SEQ, now if math.isnan(last_ts) else last_ts),
        )

    def _update_health(self, slots: set[int], out: Output) -> None:
        for slot in slots:
            new = self.health_of(slot)
            if new != self.health[slot]:
                self.health[slot] = new
                out.health.append((self.sensor_ids[slot], new))

    def health_of(self, slot: int) -> HealthState:
        """The sensor's health from its active alerts, the one place it is derived:
        ``offline`` (its Last Will, whatever else is active), ``anomalous`` (a detector's
        alert, silent or not), ``silent`` (only the silence alert), else ``ok``."""
        active = [name for name, b in self.books.items() if slot < len(b.active) and b.active[slot]]
        if not active:
            return "ok"
        if OFFLINE in active:
            return "offline"
        return "silent" if active == [SILENCE] else "anomalous"

    def _reject(
        self, topic: str, payload: bytes, exc: PayloadError, received_at: float, out: Output
    ) -> None:
        c = self.counters
        c.dead_letters += 1
        c.dead_by_reason[exc.reason] = c.dead_by_reason.get(exc.reason, 0) + 1
        out.dead.append(dead_letter(topic, payload, exc, received_at))

    def _reject_reading(
        self, r: Reading, exc: PayloadError, received_at: float, out: Output
    ) -> None:
        """A dead letter for a reading that came without a topic and payload: its sensor's
        readings topic, the reading as JSON."""
        self._reject(self.readings_topic.format(r.sensor_id), encode(r), exc, received_at, out)

    # ---- saved state ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A copy of the per-sensor state: plain data only (see :mod:`mqtt_anomaly.statefile`),
        cheap enough to take on the event loop every delivery round."""
        n = len(self.sensor_ids)
        return {
            "version": 1,
            "sensor_ids": list(self.sensor_ids),
            "seq_top": list(self.seq.top),
            "seq_mask": list(self.seq.mask),  # 1,024-bit ints
            "seq_values": self.seq_values[:n].copy(),  # (n, SEQ_VALUES) float64
            "activity": np.fmax(self.last_seen[:n], self.last_active[:n]),  # for eviction
            "interval": self.interval[:n].tolist(),
            "health": list(self.health),
            "detectors": {d.name: d.state_dict() for d in self.detectors},
            "books": {name: b.state_dict() for name, b in self.books.items()},
            "assets": self.assets.state_dict(),
            "drift": self.drift.state_dict(n),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> list[str]:
        """Restore :meth:`state_dict` output into this pipeline, which must not have seen a
        sensor yet; returns the names of detectors whose state did not fit (they relearn).

        All or nothing: state that is not a pipeline state of this kind (unknown version,
        missing keys, wrong types or lengths, more sensors than ``service.max_sensors``)
        raises :class:`~mqtt_anomaly.errors.StateFileError` (a ValueError) and changes nothing.
        """
        if self.sensor_ids:
            raise StateFileError("saved state can only be loaded into a new pipeline")
        if not isinstance(state, Mapping):
            raise StateFileError("saved state is not a dict")
        version = state.get("version")
        if type(version) is not int or version != 1:
            raise StateFileError(f"unknown state version {version!r}")
        ids = _saved_list(state, "sensor_ids", str)
        n = len(ids)
        if len(set(ids)) != n:
            raise StateFileError("saved state: sensor_ids are not unique")
        if n > self.settings.service.max_sensors:
            raise StateFileError(
                f"saved state has {n} sensors, service.max_sensors is "
                f"{self.settings.service.max_sensors}"
            )
        seq_top = _saved_list(state, "seq_top", int, n)
        seq_mask = _saved_list(state, "seq_mask", int, n)
        if any(m < 0 or m > _MASK for m in seq_mask) or any(t < -1 for t in seq_top):
            raise StateFileError("saved state: seq_top or seq_mask out of range")
        interval = np.asarray(_saved_list(state, "interval", (float, int), n), dtype=np.float64)
        if not np.all(np.isfinite(interval) & (interval > 0)):
            raise StateFileError("saved state: interval not finite and positive")
        health = _saved_list(state, "health", str, n)
        if not set(health) <= set(HEALTH_STATES):
            raise StateFileError("saved state: unknown health")
        detectors = _saved_dict(state, "detectors")
        books = _saved_dict(state, "books")
        book_states = {name: _book_state(books[name], name) for name in self.books if name in books}
        values = _saved_array(state, "seq_values", (n, SEQ_VALUES))
        activity = _saved_array(state, "activity", (n,))
        # checked: from here on nothing raises
        out = Output()
        for sid in ids:
            self.slot_of(sid, out)
        self.seq.top = seq_top
        self.seq.mask = seq_mask
        self.interval[:n] = interval
        if values is not None:  # else no seq values to compare yet
            self.seq_values[:n] = values
        if activity is not None:  # else activity counts from the next message
            self.last_active[:n] = activity
        self._candidates, self._scanned = [], -math.inf
        self.health = health
        skipped = []
        for det in self.detectors:
            saved = detectors.get(det.name)
            try:
                if not isinstance(saved, Mapping):
                    raise ValueError("no saved state")
                det.load_state_dict(saved)  # all or nothing, ValueError
            except ValueError:
                skipped.append(det.name)
        for name, book in self.books.items():
            if name in book_states and name not in skipped:
                book.load_state_dict(book_states[name])
        assets = state.get("assets")
        if isinstance(assets, Mapping):
            try:
                self.assets.load_state_dict(assets, self.sensors)  # all or nothing
            except (ValueError, KeyError, TypeError):
                skipped.append(ASSET_DETECTOR)
        drift = state.get("drift")
        if drift is not None:  # state saved before drift was kept: it starts learning
            try:
                self.drift.load_state_dict(drift, n)  # all or nothing
            except ValueError:
                skipped.append(DRIFT)
        return skipped


def _book(det: Detector, ds: DetectorSettings) -> AlertBook:
    """The alert book of one detector: its levels, the configured debounce and clear run."""
    return AlertBook(
        det.name,
        raise_level=det.raise_level,
        clear_level=det.clear_level,
        critical_level=det.critical_level,
        debounce=ds.debounce,
        clear_after=ds.clear_after,
    )


def _invalid(r: Reading) -> PayloadError:
    """Why a reading that came decoded is refused: its value or its time (NaN, inf or more
    than ``MAX_TS_SKEW_S`` from its receive time)."""
    if not math.isfinite(r.value):
        return PayloadError("non_finite", repr(r.value))
    return PayloadError("bad_timestamp", repr(r.ts))


def _saved_list(
    state: Mapping[str, Any], key: str, kind: type | tuple[type, ...], n: int | None = None
) -> list[Any]:
    value = state.get(key)
    if type(value) is not list:
        raise StateFileError(f"saved state: {key} is not a list")
    if n is not None and len(value) != n:
        raise StateFileError(f"saved state: {key} has {len(value)} entries for {n} sensors")
    if value and not all(isinstance(x, kind) and type(x) is not bool for x in value):
        raise StateFileError(f"saved state: {key} holds something else")
    return value


def _saved_array(
    state: Mapping[str, Any], key: str, shape: tuple[int, ...]
) -> NDArray[np.float64] | None:
    """An optional float array of the saved state (None when absent), checked for its shape."""
    value = state.get(key)
    if value is None:
        return None
    if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype.kind not in "fiu":
        raise StateFileError(f"saved state: {key} is not a numeric array of shape {shape}")
    return value.astype(np.float64, copy=False)


def _saved_dict(state: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = state.get(key)
    if not isinstance(value, Mapping):
        raise StateFileError(f"saved state: {key} is not a dict")
    return value


def _book_state(saved: Any, name: str) -> dict[str, NDArray[Any]]:
    """An alert book's saved arrays, checked: 1-D, equally long, of numbers or booleans."""
    if not isinstance(saved, Mapping):
        raise StateFileError(f"saved state: alert book {name} is not a dict")
    out = {}
    for field_ in ("active", "critical", "above", "below"):
        a = saved.get(field_)
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "biu":
            raise StateFileError(f"saved state: alert book {name}.{field_} is not a 1-D array")
        out[field_] = a
    if len({len(a) for a in out.values()}) != 1:
        raise StateFileError(f"saved state: alert book {name} arrays differ in length")
    return out

"""Feed recorded readings through the service's own :class:`~mqtt_anomaly.pipeline.Pipeline`.

The readings go in as typed readings through :meth:`Pipeline.score_readings
<mqtt_anomaly.pipeline.Pipeline.score_readings>`, the pipeline's entry point after decoding,
so the sensor table, ``(sensor, seq)`` dedup, the vectorised detector rounds and every
detector's alert book are the service's own code (only the JSON decoding of a payload is not
run: the readings were decoded when they were stored). Only the clock differs: a reading
"arrives" at its own ``ts``,
and the silence check the service runs every ``min(1 s, detector.interval)`` of wall time runs
at those instants of the readings' time.

Checking silence after every such tick would cut the readings into tiny batches; instead a
batch is cut only at the ticks where a check can change something: a sensor whose gap covers
the tick by more than its silence limit (a raise), or a silent sensor heard again (a clear).
The limit used to find those ticks is a lower bound of the pipeline's own (the learned
interval can only move towards the gaps seen), so no tick that matters is skipped; a tick that
turns out quiet costs one vectorised check. The alerts are then exactly those of a check at
every tick.

Nothing is published and nothing is written: the alerts go to a callback.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from ..config import Settings
from ..detectors.base import FloatArray, IntArray
from ..messages import Alert, Reading
from ..pipeline import SILENCE, Output, Pipeline

AlertSink = Callable[[Alert], None]
_WINDOW: Final = 4096  # readings planned at a time (at least 4 per known sensor)


@dataclass(frozen=True, slots=True)
class Columns:
    """A batch of readings column by column, in time order (each sensor's in its own order)."""

    sensor_ids: Sequence[str]
    ts: FloatArray
    values: Sequence[float]
    seqs: Sequence[int]

    def __len__(self) -> int:
        return len(self.sensor_ids)


@dataclass(slots=True)
class ReplayStats:
    """What a replay fed and what came out."""

    readings: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf
    raised: Counter[tuple[str, str]] = field(default_factory=Counter)  # (detector, severity)
    cleared: Counter[str] = field(default_factory=Counter)
    silence_checks: int = 0
    seconds: float = 0.0  # spent re-scoring: readings, pipeline, silence checks


class Replayer:
    """Re-scores batches of readings with ``settings``; alerts go to ``on_alert`` in time order."""

    def __init__(self, settings: Settings, on_alert: AlertSink | None = None) -> None:
        self.pipeline = Pipeline(settings)
        self.on_alert = on_alert
        self.stats = ReplayStats()
        ds = settings.detector
        self.period = min(1.0, ds.interval)  # the service's silence-check period
        self._factor = ds.silence_factor
        self._interval = ds.interval
        self._checked = -math.inf  # the last silence check

    # ---- input ---------------------------------------------------------------------------
    def feed(self, batch: Columns) -> None:
        """Process ``batch``, checking silence at every tick where it can matter."""
        n = len(batch)
        if not n:
            return
        started = time.perf_counter()
        ts = np.asarray(batch.ts, dtype=np.float64)
        st = self.stats
        st.readings += n
        st.first_ts = min(st.first_ts, float(ts.min()))
        st.last_ts = max(st.last_ts, float(ts.max()))
        keys = self._keys(batch.sensor_ids)
        start = 0
        while start < n:
            # plan over a window: a cut costs a pass over what is planned, not the whole batch
            end = min(n, start + max(_WINDOW, 4 * len(self.pipeline.sensor_ids)))
            rest = ts[start:end]
            tick = self._next_check(keys[start:end], rest, float(rest.max()), inclusive=False)
            if tick is None:
                self._process(batch, ts, start, end)
                start = end
                continue
            later = np.flatnonzero(rest > tick)
            stop = start + int(later[0]) if len(later) else end
            self._process(batch, ts, start, stop)
            self._check(tick)
            start = stop
        st.seconds += time.perf_counter() - started

    def finish(self) -> None:
        """The silence checks due up to the last reading's time (sensors that went quiet)."""
        started = time.perf_counter()
        empty_keys = np.zeros(0, dtype=np.intp)
        empty_ts = np.zeros(0)
        while self.stats.readings:
            tick = self._next_check(empty_keys, empty_ts, self.stats.last_ts, inclusive=True)
            if tick is None:
                break
            self._check(tick)
        self.stats.seconds += time.perf_counter() - started

    # ---- the pipeline --------------------------------------------------------------------
    def _process(self, batch: Columns, ts: FloatArray, start: int, stop: int) -> None:
        if start >= stop:
            return
        stamps = ts[start:stop].tolist()
        ids, values, seqs = batch.sensor_ids, batch.values, batch.seqs
        readings = [
            Reading(ids[i], t, float(values[i]), "C", int(seqs[i]))
            for i, t in enumerate(stamps, start)
        ]
        self._emit(self.pipeline.score_readings(readings, stamps))

    def _check(self, now: float) -> None:
        self._checked = now
        self.stats.silence_checks += 1
        self._emit(self.pipeline.check_silence(now))

    def _emit(self, out: Output) -> None:
        if not out.alerts:
            return
        st = self.stats
        # a batch's alerts come round by round; give them in time order
        for alert in sorted(out.alerts, key=lambda a: a.alert_ts):
            if alert.state == "raised":
                st.raised[alert.detector, alert.severity] += 1
            else:
                st.cleared[alert.detector] += 1
            if self.on_alert is not None:
                self.on_alert(alert)

    # ---- when silence must be checked ------------------------------------------------------
    def _keys(self, sensor_ids: Sequence[str]) -> IntArray:
        """Each reading's sensor slot; a sensor not seen yet gets the slot the pipeline will
        give it (slots are handed out in order of first appearance)."""
        known = self.pipeline.sensors
        fresh: dict[str, int] = {}
        base = len(self.pipeline.sensor_ids)
        keys = np.empty(len(sensor_ids), dtype=np.intp)
        for i, sid in enumerate(sensor_ids):
            slot = known.get(sid)
            if slot is None:
                slot = fresh.get(sid)
                if slot is None:
                    slot = fresh[sid] = base + len(fresh)
            keys[i] = slot
        return keys

    def _next_check(
        self, keys: IntArray, ts: FloatArray, horizon: float, *, inclusive: bool
    ) -> float | None:
        """The first tick after the last check where a silence check may raise or clear an
        alert, given the readings still to process (``keys``/``ts``); None when there is none
        before ``horizon`` (or at it, when ``inclusive``)."""
        pl = self.pipeline
        known = len(pl.sensor_ids)
        m = max(known, int(keys.max()) + 1 if len(keys) else 0)
        if not m:
            return None
        seen = np.full(m, math.nan)
        seen[:known] = pl.last_seen[:known]
        usual = np.full(m, self._interval)
        usual[:known] = pl.interval[:known]
        active = np.zeros(m, dtype=bool)
        book = pl.books[SILENCE].active[:m]
        active[: len(book)] = book
        period, checked = self.period, self._checked
        ticks: list[float] = []

        fresh = np.where(active & (seen > checked), seen, math.nan)  # heard since the check
        after = seen.copy()  # when each sensor was last heard once these readings are in
        floor = usual
        if len(keys):
            order = np.argsort(keys, kind="stable")
            k, t = keys[order], ts[order]
            first = np.ones(len(k), dtype=bool)
            np.not_equal(k[1:], k[:-1], out=first[1:])
            last = np.ones(len(k), dtype=bool)
            last[:-1] = first[1:]
            prev = np.empty_like(t)
            prev[1:] = t[:-1]
            prev[first] = seen[k[first]]
            gap = t - prev
            # the learned interval moves towards the gaps: never below the smallest of them
            smallest = np.minimum.reduceat(np.where(gap > 0, gap, math.inf), np.flatnonzero(first))
            floor = usual.copy()
            floor[k[first]] = np.minimum(floor[k[first]], smallest)
            # A gap covering a tick by more than the limit: silent at that tick. Up to a
            # sensor's first reading here its interval is the pipeline's own (it changes only
            # when a reading comes), so that limit is exact, the later ones a lower bound.
            limit = self._factor * np.where(first, usual[k], floor[k])
            due = (np.floor((prev + limit) / period) + 1.0) * period
            hit = (due < t) & (due > checked) & ~active[k]
            if hit.any():
                ticks.append(float(due[hit].min()))
            after[k[last]] = t[last]
            kf, tf = k[first], t[first]
            wake = active[kf] & np.isnan(fresh[kf])
            fresh[kf[wake]] = tf[wake]
        # quiet until the horizon
        due = (np.floor((after + self._factor * floor) / period) + 1.0) * period
        end = (due <= horizon) if inclusive else (due < horizon)
        hit = end & (due > checked) & ~active
        if hit.any():
            ticks.append(float(due[hit].min()))
        # a silent sensor heard again: cleared at the next tick
        due = np.ceil(fresh / period) * period
        end = (due <= horizon) if inclusive else (due < horizon)
        hit = end & (due > checked)
        if hit.any():
            ticks.append(float(due[hit].min()))
        return min(ticks) if ticks else None

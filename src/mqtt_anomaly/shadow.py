"""Shadow scoring: a candidate detector configuration beside the live one, on the same readings.

With ``[shadow] enabled = true`` the candidate (:func:`candidate_settings`: the live
``[detector]`` with the keys of ``[shadow.detector]`` over it, the live ``[overrides]``) scores
every round the live pipeline scores, after its gates: decode, dedup and the sensor table are
shared, only the detectors and alert books are the candidate's (:class:`ShadowScorer`, the
pipeline's :class:`~.pipeline.ShadowTap`). Its alerts go to the shadow topic and to the store
marked as shadow only, never to the operator alert topic, routes, receivers, the console,
health or the dashboard's alerts (the service hands them to :class:`ShadowRun`, not to its
sinks).

:class:`Agreement` compares the two: per sensor and detector, the raised alerts of both, of the
live configuration only and of the candidate only, two alerts agreeing when their readings'
seqs are at most ``[shadow] tolerance`` apart (readings without a seq: their times, in
seconds).

Shadow off costs one ``is None`` test per round.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
from pydantic import ValidationError

from .config import DetectorSettings, Settings
from .detectors.base import FloatArray, IntArray
from .errors import ConfigError
from .messages import Alert, encode
from .pipeline import Output, Pipeline, Round, _book_state
from .topics import TopicTemplate

__all__ = ["Agreement", "ShadowRun", "ShadowScorer", "candidate_settings", "position"]

KEPT = 1000  # raised alerts kept per sensor and detector and side for the report
EXAMPLES = 3  # examples per sensor, detector and kind


def candidate_settings(settings: Settings) -> Settings:
    """The live settings with the candidate's ``[detector]``: ``[shadow.detector]`` over the
    live section (``params`` merged per detector). :class:`ConfigError` naming the key."""
    live = settings.detector.model_dump()
    extra = dict(settings.shadow.detector)
    params = {k: dict(v) for k, v in live.pop("params").items()}
    for name, p in dict(extra.pop("params", {}) or {}).items():
        if not isinstance(p, dict):
            raise ConfigError(f"shadow.detector.params.{name}: not a table")
        params[name] = {**params.get(name, {}), **p}
    try:
        ds = DetectorSettings.model_validate({**live, **extra, "params": params})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"shadow.detector.{key}: {msg.removeprefix('Value error, ')}") from None
    return settings.model_copy(update={"detector": ds})


class ShadowScorer:
    """The candidate's detectors and alert books over the live pipeline's slots.

    Built on a probe :class:`~.pipeline.Pipeline` of the candidate settings (which checks
    them: unknown detectors, bad parameters raise here); its tags are the live pipeline's, so
    ``[overrides]`` choose the same way."""

    def __init__(
        self, live: Pipeline, candidate: Settings, model: Mapping[str, Any] | None = None
    ) -> None:
        self.settings = candidate
        try:
            self.probe = Pipeline(candidate)
        except ConfigError as exc:  # name the section the candidate's detectors come from
            text = str(exc)
            raise ConfigError(f"shadow.{text}" if text.startswith("detector.") else text) from exc
        self.probe.tags = live.tags
        self.live = live
        self.configured = np.zeros(0, dtype=bool)  # slots set up ([overrides], model state)
        # a model's state (``[shadow] model``): per detector that fits it, its arrays, and the
        # row of each of its sensors; a slot takes its sensor's row when it is first scored
        self._rows: dict[str, int] = {}
        self._model: dict[str, dict[str, Any]] = {}
        if model is not None:
            self._take_model(model)
        self._setup = bool(candidate.overrides) or bool(self._model)
        self.out = Output()  # alerts not taken yet
        self.seconds = 0.0  # CPU time spent scoring (perf_counter)
        self.rounds = 0
        self.readings = 0

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.probe.detectors]

    def _take_model(self, model: Mapping[str, Any]) -> None:
        ids, saved = model.get("sensor_ids"), model.get("detectors")
        if not isinstance(ids, list) or not isinstance(saved, Mapping):
            return
        self._rows = {str(sid): i for i, sid in enumerate(ids)}
        for det in self.probe.detectors:
            state = saved.get(det.name)
            if not isinstance(state, Mapping) or not det.fields():
                continue
            try:
                det.load_state_dict(state)  # checks that it fits this detector
            except ValueError:
                continue
            self._model[det.name] = {k: a.copy() for k, a in det.state.items()}
            det.state = {k: np.empty(0, dtype=f.dtype) for k, f in det.fields().items()}
            det.capacity = 0

    @property
    def from_model(self) -> list[str]:
        """The detectors that start from a model's state."""
        return list(self._model)

    def score(self, rnd: Round, slots: IntArray, values: FloatArray, ts: FloatArray) -> None:
        started = time.perf_counter()
        if self._setup:
            self._configure(slots)
        self.probe.detect(rnd, slots, values, ts, self.out, set())
        self.seconds += time.perf_counter() - started
        self.rounds += 1
        self.readings += len(slots)

    def _configure(self, slots: IntArray) -> None:
        top = int(slots.max()) + 1 if len(slots) else 0
        if top > len(self.configured):
            grown = np.zeros(max(top, 2 * len(self.configured)), dtype=bool)
            grown[: len(self.configured)] = self.configured
            self.configured = grown
        new = slots[~self.configured[slots]]
        if not len(new):
            return
        ids = self.live.sensor_ids
        overrides = bool(self.settings.overrides)
        dets = {d.name: d for d in self.probe.detectors}
        for slot in new.tolist():
            sid = ids[slot]
            if overrides:
                self.probe._configure(slot, sid)
            row = self._rows.get(sid)
            if row is None:
                continue
            for name, arrays in self._model.items():
                det = dets[name]
                det.reserve(slot + 1)
                for k, a in arrays.items():
                    if row < len(a):
                        det.state[k][slot] = a[row]
        self.configured[new] = True

    def forget(self, slot: int) -> None:
        idx = np.array([slot], dtype=np.intp)
        for det in self.probe.detectors:
            det.reserve(slot + 1)
            det.reset(idx)
        for book in self.probe.books.values():
            book.reset(idx)
        if slot < len(self.configured):
            self.configured[slot] = False

    def state_dict(self) -> dict[str, Any]:
        """The candidate's learned state (its detectors and alert books, by the live slots)."""
        return {
            "detectors": {d.name: d.state_dict() for d in self.probe.detectors},
            "books": {n: b.state_dict() for n, b in self.probe.books.items() if n in self.names},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> list[str]:
        """Restore :meth:`state_dict` (saved with the live pipeline's, same slots); returns
        the detectors whose state did not fit (they learn again)."""
        dets = state.get("detectors")
        books = state.get("books")
        if not isinstance(dets, Mapping) or not isinstance(books, Mapping):
            return self.names
        skipped = []
        for det in self.probe.detectors:
            saved = dets.get(det.name)
            try:
                if not isinstance(saved, Mapping):
                    raise ValueError("no saved state")
                det.load_state_dict(saved)
                book = _book_state(books[det.name], det.name)
            except (ValueError, KeyError):  # StateFileError is a ValueError
                skipped.append(det.name)
                continue
            self.probe.books[det.name].load_state_dict(book)
        n = len(self.live.sensor_ids)  # restored slots are set up already
        self.configured = np.ones(n, dtype=bool)
        return skipped

    def take(self) -> list[Alert]:
        """The alerts raised and cleared since the last call."""
        alerts, self.out = self.out.alerts, Output()
        return alerts


def position(a: Alert) -> float | None:
    """Where an alert sits in its sensor's stream: the seq of its reading (from its id), or
    the reading's time when it had none; None for an alert of no reading."""
    head, _, tail = a.id.rpartition(":")
    if head and "@" in tail:
        seq = tail.split("@", 1)[0]
        if seq.isdigit():
            return float(seq)
    return a.reading_ts


@dataclass(slots=True)
class _Pair:
    live: deque[float] = field(default_factory=lambda: deque(maxlen=KEPT))
    shadow: deque[float] = field(default_factory=lambda: deque(maxlen=KEPT))


class Agreement:
    """Raised alerts of the live and the candidate configuration, per sensor and detector,
    and how they match (:meth:`report`)."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.pairs: dict[tuple[str, str], _Pair] = {}

    def observe(self, alerts: Iterable[Alert], side: str, detectors: set[str]) -> None:
        for a in alerts:
            if a.state != "raised" or a.asset_id or a.detector not in detectors:
                continue
            pos = position(a)
            if pos is None:
                continue
            pair = self.pairs.get((a.sensor_id, a.detector))
            if pair is None:
                pair = self.pairs[(a.sensor_id, a.detector)] = _Pair()
            (pair.live if side == "live" else pair.shadow).append(pos)

    def report(self, sensor: str | None = None) -> dict[str, Any]:
        """Counts overall, by detector and by sensor and detector, with examples (seqs)."""
        tol = self.tolerance
        rows = []
        totals = {"both": 0, "live_only": 0, "shadow_only": 0}
        by_detector: dict[str, dict[str, int]] = {}
        for (sid, det), pair in sorted(self.pairs.items()):
            if sensor is not None and sid != sensor:
                continue
            live, shadow = sorted(pair.live), sorted(pair.shadow)
            both: list[list[float]] = []
            live_only: list[float] = []
            shadow_only: list[float] = []
            i = j = 0
            while i < len(live) and j < len(shadow):
                if abs(live[i] - shadow[j]) <= tol:
                    both.append([live[i], shadow[j]])
                    i, j = i + 1, j + 1
                elif live[i] < shadow[j]:
                    live_only.append(live[i])
                    i += 1
                else:
                    shadow_only.append(shadow[j])
                    j += 1
            live_only += live[i:]
            shadow_only += shadow[j:]
            counts = {
                "both": len(both),
                "live_only": len(live_only),
                "shadow_only": len(shadow_only),
            }
            d = by_detector.setdefault(det, dict.fromkeys(totals, 0))
            for k, v in counts.items():
                totals[k] += v
                d[k] += v
            examples = {
                "both": both[:EXAMPLES],
                "live_only": live_only[:EXAMPLES],
                "shadow_only": shadow_only[:EXAMPLES],
            }
            rows.append({"sensor_id": sid, "detector": det, **counts, "examples": examples})
        return {"totals": totals, "by_detector": by_detector, "sensors": rows}


class ShadowRun:
    """The shadow of one service: the scorer on its pipeline, the agreement, and where the
    candidate's alerts go (``publish(topic, payload)``, ``store(alert)``), nowhere else."""

    def __init__(
        self,
        pipeline: Pipeline,
        settings: Settings,
        *,
        publish: Callable[[str, bytes], None],
        store: Callable[[Alert], None] | None = None,
        model: tuple[Settings, Mapping[str, Any]] | None = None,
    ) -> None:
        """``model``: the candidate is a model (``[shadow] model``): its settings (the live
        ones with its sections) and its state."""
        s = settings.shadow
        self.label = s.model if s.model is not None and s.label == "candidate" else s.label
        self.model_version = s.model
        if model is None:
            self.scorer = ShadowScorer(pipeline, candidate_settings(settings))
        else:
            self.scorer = ShadowScorer(pipeline, model[0], model[1])
        self.agreement = Agreement(float(s.tolerance))
        self.topic = TopicTemplate(s.topic)
        self.publish = publish
        self.store = store
        self.pipeline = pipeline
        self.alerts = 0  # shadow alert events
        self.dropped = 0  # beyond max_rate: counted in the agreement, not published or stored
        self.max_rate = s.max_rate
        self.clock = time.monotonic
        self._allowance = s.max_rate
        self._last = self.clock()
        self.started = time.time()

    def attach(self) -> None:
        """Score from the next round on."""
        self.pipeline.shadow = self.scorer

    def detach(self) -> None:
        if self.pipeline.shadow is self.scorer:
            self.pipeline.shadow = None

    def after(self, out: Output) -> None:
        """After a batch: the candidate's alerts out, both sides into the agreement."""
        live_names = {d.name for d in self.pipeline.detectors}
        shadow_names = set(self.scorer.names)
        names = live_names | shadow_names
        if out.alerts:
            self.agreement.observe(out.alerts, "live", names & live_names)
        alerts = self.scorer.take()
        if not alerts:
            return
        self.alerts += len(alerts)
        self.agreement.observe(alerts, "shadow", names & shadow_names)
        now = self.clock()
        rate = self.max_rate
        self._allowance = min(rate, self._allowance + (now - self._last) * rate)
        self._last = now
        for a in alerts:
            if self._allowance < 1.0:  # a noisy candidate: the rest counted, not sent
                self.dropped += 1
                continue
            self._allowance -= 1.0
            marked = msgspec.structs.replace(a, shadow=self.label)
            self.publish(self.topic.format(a.sensor_id), encode(marked))
            if self.store is not None:
                self.store(marked)

    def report(self, sensor: str | None = None) -> dict[str, Any]:
        sc = self.scorer
        per = sc.seconds / sc.readings * 1e6 if sc.readings else 0.0
        return {
            "enabled": True,
            "label": self.label,
            "tolerance": self.agreement.tolerance,
            "detectors": {
                "live": [d.name for d in self.pipeline.detectors],
                "shadow": sc.names,
            },
            "model": self.model_version,
            "from_model": self.scorer.from_model,
            "shadow_alerts": self.alerts,
            "shadow_alerts_dropped": self.dropped,
            "cost": {
                "rounds": sc.rounds,
                "readings": sc.readings,
                "seconds": round(sc.seconds, 6),
                "us_per_reading": round(per, 3),
            },
            **self.agreement.report(sensor),
        }

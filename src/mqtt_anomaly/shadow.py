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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
from pydantic import ValidationError

from .config import DetectorSettings, Settings
from .detectors.base import FloatArray, IntArray
from .errors import ConfigError
from .messages import Alert, encode
from .pipeline import Output, Pipeline, Round
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

    def __init__(self, live: Pipeline, candidate: Settings) -> None:
        self.settings = candidate
        try:
            self.probe = Pipeline(candidate)
        except ConfigError as exc:  # name the section the candidate's detectors come from
            text = str(exc)
            raise ConfigError(f"shadow.{text}" if text.startswith("detector.") else text) from exc
        self.probe.tags = live.tags
        self.live = live
        self.configured = np.zeros(0, dtype=bool)  # slots [overrides] were applied to
        self.out = Output()  # alerts not taken yet
        self.seconds = 0.0  # CPU time spent scoring (perf_counter)
        self.rounds = 0
        self.readings = 0

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.probe.detectors]

    def score(self, rnd: Round, slots: IntArray, values: FloatArray, ts: FloatArray) -> None:
        started = time.perf_counter()
        if self.settings.overrides:
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
        ids = self.live.sensor_ids
        for slot in new.tolist():
            self.probe._configure(slot, ids[slot])
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
    ) -> None:
        s = settings.shadow
        self.label = s.label
        self.scorer = ShadowScorer(pipeline, candidate_settings(settings))
        self.agreement = Agreement(float(s.tolerance))
        self.topic = TopicTemplate(s.topic)
        self.publish = publish
        self.store = store
        self.pipeline = pipeline
        self.alerts = 0  # shadow alert events
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
        for a in alerts:
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
            "shadow_alerts": self.alerts,
            "cost": {
                "rounds": sc.rounds,
                "readings": sc.readings,
                "seconds": round(sc.seconds, 6),
                "us_per_reading": round(per, 3),
            },
            **self.agreement.report(sensor),
        }

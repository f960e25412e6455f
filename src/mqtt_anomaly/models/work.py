"""Training and evaluation of models: the work behind ``models train`` and ``models evaluate``.

**Training** feeds readings in time order through the service's own pipeline
(:class:`~mqtt_anomaly.replay.engine.Replayer`: dedup, rounds, every detector's ``update``,
alert books, silence) with the detector configuration of the settings, and keeps what the
pipeline learned (:func:`.format.model_state`), the configuration, and where the readings
came from (source, time range, sensors, assets, count, SHA-256 of the readings as read).

**Evaluation** replays a labelled period through a model (its configuration, starting from its
state) and scores the alerts it raises against the labels (:mod:`.data`):

- *fault intervals* (the simulator's labels): as ``evaluate sim`` does
  (:func:`mqtt_anomaly.evaluate.sim.score_alerts`: an alert matches a fault of its sensor
  when it falls within ``[start, end + grace]``; precision over alerts, recall over faults);
- *labelled points* (operator feedback, CSV rows): a point is **flagged** when the model had
  an alert of its sensor (a CSV row: of any sensor) active at some time in
  ``[ts, ts + grace]`` — raised at or before ``ts + grace`` and not cleared before ``ts``.
  A flagged anomalous point is a true positive, a flagged normal one a false positive, an
  anomalous one not flagged a false negative. Readings nobody labelled count for nothing.

Precision is 1.0 when nothing was flagged (nothing was wrong), recall 1.0 when nothing was
anomalous, F1 their harmonic mean (0 when both are 0).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..detectors.river_adapter import RiverDetector
from ..messages import Alert
from ..pipeline import OFFLINE, SILENCE
from ..replay.engine import Columns, Replayer
from .data import Labels, Point
from .format import DataHash, LoadedModel, model_config, model_state

Progress = Callable[[int], None]
"""Called with the number of readings fed so far."""


@dataclass
class Trained:
    """What :func:`train` learned, ready for :meth:`.registry.Registry.create`."""

    config: dict[str, Any]
    training: dict[str, Any]
    state: dict[str, Any]


def train(
    settings: Settings,
    batches: Iterator[Columns],
    *,
    source: str,
    since: float | None,
    until: float | None,
    sensors: Sequence[str] = (),
    assets: Sequence[str] = (),
    progress: Progress | None = None,
) -> Trained:
    """Feed ``batches`` through a new pipeline with ``settings``; what it learned."""
    replayer = Replayer(settings)
    digest = DataHash()
    for batch in batches:
        digest.update(batch.sensor_ids, batch.ts.tolist(), batch.values, batch.seqs)
        replayer.feed(batch)
        if progress is not None:
            progress(replayer.stats.readings)
    replayer.finish()
    st = replayer.stats
    pipeline = replayer.pipeline
    training = {
        "source": source,
        "since": since,
        "until": until,
        "first_ts": st.first_ts if st.readings else None,
        "last_ts": st.last_ts if st.readings else None,
        "readings": st.readings,
        "sensors": list(pipeline.sensor_ids),
        "selected_sensors": sorted(sensors),
        "selected_assets": sorted(assets),
        "assets": sorted(a.id for a in pipeline.assets.assets),
        "data_sha256": digest.hexdigest(),
    }
    state = model_state(pipeline.state_dict())
    for det in pipeline.detectors:  # River models only pickle: not carried, they relearn
        if isinstance(det, RiverDetector):
            del state["detectors"][det.name]
    return Trained(model_config(settings), training, state)


# ---- evaluation -----------------------------------------------------------------------------
@dataclass
class Score:
    """One model's figures on one set of labels."""

    version: str | None  # None: the configured detectors, untrained
    precision: float
    recall: float
    f1: float
    alerts: int
    true_positives: int
    false_positives: int
    false_negatives: int
    readings: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "alerts": self.alerts,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "readings": self.readings,
            **self.extra,
        }


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def replay_alerts(
    settings: Settings,
    model: LoadedModel | None,
    batches: Iterator[Columns],
    progress: Progress | None = None,
) -> tuple[list[Alert], int]:
    """The alerts ``model`` (None: the configured detectors, fresh) raises and clears over
    ``batches``, in time order, and the readings fed."""
    alerts: list[Alert] = []
    if model is None:
        replayer = Replayer(settings, alerts.append)
    else:
        replayer = Replayer(model.settings(settings), alerts.append)
        replayer.pipeline = model.pipeline(settings)
    for batch in batches:
        replayer.feed(batch)
        if progress is not None:
            progress(replayer.stats.readings)
    replayer.finish()
    return alerts, replayer.stats.readings


def _when(a: Alert) -> float:
    if a.detector in (OFFLINE, SILENCE) or a.reading_ts is None:
        return a.alert_ts
    return a.reading_ts


def flagged_intervals(alerts: Sequence[Alert]) -> dict[str, list[tuple[float, float]]]:
    """Per sensor, when an alert of it was active: ``(raised, cleared or inf)``, sorted."""
    open_: dict[tuple[str, str], float] = {}
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for a in alerts:
        key = (a.sensor_id, a.detector)
        if a.state == "raised":
            open_.setdefault(key, _when(a))
        elif key in open_:
            spans[a.sensor_id].append((open_.pop(key), _when(a)))
    for (sid, _), start in open_.items():
        spans[sid].append((start, math.inf))
    for v in spans.values():
        v.sort()
    return spans


def _hit(spans: list[tuple[float, float]], lo: float, hi: float) -> bool:
    """Whether an interval of ``spans`` (sorted by start) meets ``[lo, hi]``."""
    end = bisect.bisect_right(spans, (hi, math.inf))
    return any(s[1] >= lo for s in spans[:end])


def score_points(
    points: Sequence[Point], alerts: Sequence[Alert], grace: float
) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of ``alerts`` on ``points``."""
    spans = flagged_intervals(alerts)
    every = sorted(s for v in spans.values() for s in v)
    tp = fp = fn = 0
    for p in points:
        mine = every if p.sensor_id is None else spans.get(p.sensor_id, [])
        flagged = _hit(mine, p.ts, p.ts + grace)
        if flagged and p.anomalous:
            tp += 1
        elif flagged:
            fp += 1
        elif p.anomalous:
            fn += 1
    return tp, fp, fn


def score(
    version: str | None,
    labels: Labels,
    alerts: list[Alert],
    readings: int,
    grace: float,
    since: float | None = None,
    until: float | None = None,
) -> Score:
    """``alerts`` scored on the labels of ``labels`` from ``since`` to ``until`` (the period
    replayed; see the module)."""
    lo = -math.inf if since is None else since
    hi = math.inf if until is None else until
    raised = sum(1 for a in alerts if a.state == "raised")
    if labels.faults:
        from ..evaluate.sim import score_alerts

        r = score_alerts(list(labels.faults), alerts, grace=grace, since=lo, until=hi)
        return Score(
            version,
            r.precision,
            r.recall,
            r.f1,
            raised,
            r.alerts - r.false_alarms,
            r.false_alarms,
            r.faults - r.detected,
            readings,
            {"faults": r.faults, "detected": r.detected},
        )
    points = [p for p in labels.points if lo <= p.ts <= hi]
    tp, fp, fn = score_points(points, alerts, grace)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return Score(
        version,
        precision,
        recall,
        _f1(precision, recall),
        raised,
        tp,
        fp,
        fn,
        readings,
        {"points": len(points)},
    )

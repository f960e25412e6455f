"""Row scorers on labelled rows: one report per series, micro-averaged totals over several.

A *series* is one asset's rows (a CSV export, a simulated asset). Each chosen
:mod:`scorer <.scorers>` learns the first ``train_rows`` rows (commissioning: learned, never
scored) and flags the rest; only those are counted. Per scorer and series:

- point counts ``tp``, ``fp``, ``fn``, ``tn`` (rows), precision, recall and F1, the
  **false-alarm rate** ``fp / (fp + tn)`` (normal rows flagged) and the **missed-alarm rate**
  ``fn / (fn + tp)`` (anomalous rows not flagged);
- event counts: an *event* is a run of labelled rows, an *alarm* a run of flagged rows; event
  recall is the share of events holding a flagged row, event precision the share of alarms
  touching an event (:func:`~.runner.classification_metrics`).

Totals add the counts of every series (micro-averaging) and compute the rates from the sums,
so a long file weighs by its rows, not one vote per file. Every report has the trivial
``always`` scorer (a flag on every row) on the same rows: a detector whose F1 is not above it
has not learned anything the labels reward.

>>> import numpy as np
>>> labels = np.array([0, 0, 0, 0, 1, 1, 0, 0], dtype=bool)
>>> c = Counts.of(np.array([0, 0, 1, 0, 0, 1, 0, 0], dtype=bool), labels)
>>> (c.tp, c.fp, c.fn, c.tn), c.point()["false_alarm_rate"], c.point()["missed_alarm_rate"]
((1, 1, 1, 5), 0.1667, 0.5)
>>> (c + c).point()["f1"], Counts.of(np.ones(8, dtype=bool), labels).point()["f1"]
(0.5, 0.4)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import DetectorSettings
from ..detectors.base import FloatArray
from ..errors import ConfigError
from .nab import Corpus, ProfileScore, Series, score_all, windows_from_labels
from .runner import classification_metrics, prf, rounded, score_dict
from .scorers import ALWAYS, BoolArray, create_scorer


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass(frozen=True)
class Counts:
    """Point and event counts of one scorer on some rows; ``+`` adds them (micro-average)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    events: int = 0
    detected_events: int = 0
    alarms: int = 0
    true_alarms: int = 0

    @classmethod
    def of(cls, alarms: BoolArray, labels: BoolArray) -> Counts:
        m = classification_metrics(alarms, labels)
        p, e = m["point"], m["event"]
        tn = int(np.count_nonzero(~alarms & ~labels))
        return cls(
            int(p["tp"]),
            int(p["fp"]),
            int(p["fn"]),
            tn,
            int(e["events"]),
            int(e["detected_events"]),
            int(e["alarms"]),
            int(e["true_alarms"]),
        )

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[int, ...]:
        return (
            self.tp,
            self.fp,
            self.fn,
            self.tn,
            self.events,
            self.detected_events,
            self.alarms,
            self.true_alarms,
        )

    def point(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            **prf(self.tp, self.tp + self.fp, self.tp + self.fn),
            "false_alarm_rate": _rate(self.fp, self.fp + self.tn),
            "missed_alarm_rate": _rate(self.fn, self.fn + self.tp),
        }

    def event(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "detected_events": self.detected_events,
            "alarms": self.alarms,
            "true_alarms": self.true_alarms,
            **prf(self.true_alarms, self.alarms, self.events, self.detected_events),
        }

    def as_dict(self) -> dict[str, Any]:
        return {"point": self.point(), "event": self.event()}


@dataclass(frozen=True)
class ScorerResult:
    """One scorer on one series: counts, speed, and NAB scores when it has a score scale."""

    scorer: str
    counts: Counts
    seconds: float
    nab: dict[str, dict[str, ProfileScore]] | None = None
    alarms: BoolArray | None = field(default=None, repr=False, compare=False)  # keep_alarms

    def as_dict(self, rows: int, columns: int) -> dict[str, Any]:
        cells = rows * columns
        out: dict[str, Any] = {
            "detector": self.scorer,
            **self.counts.as_dict(),
            "seconds": round(self.seconds, 4),
            "points_per_second": rounded(cells / self.seconds, 1) if self.seconds else None,
        }
        if self.nab is not None:
            out["nab"] = {k: {p: score_dict(s) for p, s in v.items()} for k, v in self.nab.items()}
        return out


@dataclass(frozen=True)
class SeriesReport:
    """Every scorer on one series."""

    name: str
    columns: tuple[str, ...]
    rows: int  # in the series
    train_rows: int  # learned, not scored
    labelled_rows: int  # among the scored rows
    results: list[ScorerResult]

    @property
    def scored_rows(self) -> int:
        return self.rows - self.train_rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "columns": list(self.columns),
            "rows": self.rows,
            "train_rows": self.train_rows,
            "scored_rows": self.scored_rows,
            "labelled_rows": self.labelled_rows,
            "results": [r.as_dict(self.scored_rows, len(self.columns)) for r in self.results],
        }


@dataclass(frozen=True)
class Totals:
    """Counts added over several series, per scorer (micro-averaged)."""

    series: int
    scored_rows: int
    labelled_rows: int
    counts: dict[str, Counts] = field(default_factory=dict)

    @classmethod
    def of(cls, reports: Sequence[SeriesReport]) -> Totals:
        counts: dict[str, Counts] = {}
        for rep in reports:
            for r in rep.results:
                counts[r.scorer] = counts.get(r.scorer, Counts()) + r.counts
        return cls(
            len(reports),
            sum(r.scored_rows for r in reports),
            sum(r.labelled_rows for r in reports),
            counts,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.series,
            "scored_rows": self.scored_rows,
            "labelled_rows": self.labelled_rows,
            "results": [{"detector": k, **c.as_dict()} for k, c in self.counts.items()],
        }


def with_always(names: Sequence[str]) -> list[str]:
    """``names`` without repeats, ``always`` last."""
    chosen = [n for n in dict.fromkeys(names) if n != ALWAYS]
    return [*chosen, ALWAYS]


def _nab(
    name: str, epoch: FloatArray, scores: FloatArray, labels: BoolArray, level: float
) -> dict[str, dict[str, ProfileScore]] | None:
    """NAB scores of a row score (windows from the labels); None without a labelled row."""
    if not labels.any():
        return None
    stamps = (epoch * 1e6).astype(np.int64).astype("datetime64[us]")
    corpus = Corpus([Series(name, stamps, scores, windows_from_labels(labels))])
    return {
        "optimised": score_all(corpus, {name: scores}),
        "at_alert_level": score_all(corpus, {name: scores}, level),
    }


def evaluate_series(
    name: str,
    columns: Sequence[str],
    values: FloatArray,
    epoch: FloatArray,
    labels: BoolArray,
    scorers: Sequence[str],
    *,
    train_rows: int = 0,
    settings: DetectorSettings | None = None,
    nab: bool = False,
    keep_alarms: bool = False,
) -> SeriesReport:
    """Run every scorer (and ``always``) on one series; see the module docstring. ``nab``:
    NAB scores too, for scorers with a score scale; ``keep_alarms``: each result keeps its
    flags on the scored rows."""
    rows = len(labels)
    if train_rows >= rows:
        raise ConfigError(f"{name}: --train-rows {train_rows} leaves none of its {rows} rows")
    n = train_rows
    scored = labels[n:]
    results = []
    for scorer_name in with_always(scorers):
        scorer = create_scorer(scorer_name, settings)
        start = time.perf_counter()
        scorer.train(values[:n], epoch[:n])
        out = scorer.score(values[n:], epoch[n:])
        seconds = time.perf_counter() - start
        report_nab = None
        if nab and out.scores is not None and scorer_name != ALWAYS:
            report_nab = _nab(name, epoch[n:], out.scores, scored, out.level)
        counts = Counts.of(out.alarms, scored)
        kept = out.alarms if keep_alarms else None
        results.append(ScorerResult(scorer_name, counts, seconds, report_nab, kept))
    return SeriesReport(name, tuple(columns), rows, n, int(scored.sum()), results)

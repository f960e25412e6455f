"""Run the service's detectors over the NAB corpus or a labelled CSV, and score them.

Detectors are built with :func:`mqtt_anomaly.detectors.create` and fed exactly as the live
service feeds them: many sensors per :meth:`~mqtt_anomaly.detectors.base.Detector.update` call,
one slot each. Series are fed in lockstep (row ``i`` of every series in one call), timestamps as
epoch seconds. A missing (NaN) value is not fed; its row has no score.

>>> import numpy as np
>>> from mqtt_anomaly.detectors import create
>>> values = [np.ones(5), np.arange(3.0)]
>>> scores, _ = feed(create("stuck"), values, [np.arange(5.0), np.arange(3.0)])
>>> [len(s) for s in scores], float(scores[0][-1]) > 0.0, float(scores[1].max())
([5, 3], True, 0.0)
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DetectorSettings
from ..detectors import create
from ..detectors.base import Detector, FloatArray, IntArray
from ..errors import ConfigError
from .nab import Corpus, ProfileScore, score_all

Progress = Callable[[int, int], None]
"""Called with (rows fed, rows in all) as a run advances."""


def feed(
    detector: Detector,
    values: Sequence[FloatArray],
    ts: Sequence[FloatArray],
    progress: Progress | None = None,
) -> tuple[list[FloatArray], float]:
    """Feed series ``f`` into slot ``f`` in lockstep; per-series scores and seconds spent."""
    lengths = [len(v) for v in values]
    rows = max(lengths, default=0)
    vals = np.full((rows, len(values)), np.nan)
    stamps = np.zeros((rows, len(values)))
    for f, (v, t) in enumerate(zip(values, ts, strict=True)):
        if len(t) != len(v):
            raise ValueError(f"series {f}: {len(v)} values but {len(t)} timestamps")
        vals[: len(v), f] = v
        stamps[: len(v), f] = t
    out = np.full_like(vals, np.nan)
    present = ~np.isnan(vals)
    full = present.all(axis=1)
    all_slots = np.arange(len(values), dtype=np.intp)
    step = max(1, rows // 200)
    start = time.perf_counter()
    for i in range(rows):
        if full[i]:
            out[i] = detector.update(all_slots, vals[i], stamps[i]).score
        else:
            m = present[i]
            if m.any():
                out[i, m] = detector.update(all_slots[m], vals[i, m], stamps[i, m]).score
        if progress is not None and (i % step == step - 1 or i == rows - 1):
            progress(i + 1, rows)
    seconds = time.perf_counter() - start
    return [out[:n, f].copy() for f, n in enumerate(lengths)], seconds


@dataclass(frozen=True, eq=False)
class Run:
    """A detector's scores for every series, and how fast it produced them."""

    detector: str
    scores: dict[str, FloatArray]
    points: int
    seconds: float
    alert_level: float

    @property
    def points_per_second(self) -> float:
        return self.points / self.seconds if self.seconds > 0 else float("inf")


def run_nab(
    corpus: Corpus,
    detector: str,
    settings: DetectorSettings | None = None,
    progress: Progress | None = None,
) -> Run:
    """Score every file of ``corpus`` with a fresh ``detector``, all files in lockstep."""
    det = create(detector, settings)
    values = [s.values for s in corpus.series]
    outs, seconds = feed(det, values, [s.epoch_seconds() for s in corpus.series], progress)
    scores = {s.name: np.nan_to_num(o, nan=0.0) for s, o in zip(corpus.series, outs, strict=True)}
    points = int(sum(np.count_nonzero(~np.isnan(v)) for v in values))
    return Run(detector, scores, points, seconds, det.raise_level)


def rounded(x: float, digits: int) -> float | None:
    """``x`` rounded for JSON, None when it is not finite (a score without windows)."""
    return round(x, digits) if np.isfinite(x) else None


@dataclass(frozen=True)
class NabReport:
    """One detector on NAB: optimised thresholds per profile, and at its alert level."""

    detector: str
    points: int
    seconds: float
    optimised: dict[str, ProfileScore]
    at_alert: dict[str, ProfileScore]

    @property
    def points_per_second(self) -> float:
        return self.points / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "points": self.points,
            "seconds": round(self.seconds, 4),
            "points_per_second": rounded(self.points_per_second, 1),
            "profiles": {
                p: {**score_dict(s), "at_alert_level": score_dict(self.at_alert[p])}
                for p, s in self.optimised.items()
            },
        }


def score_dict(ps: ProfileScore) -> dict[str, Any]:
    return {"threshold": ps.threshold, "raw": round(ps.raw, 6), "score": rounded(ps.score, 4)}


def report_nab(corpus: Corpus, run: Run) -> NabReport:
    """Score a run: NAB's optimised threshold per profile, and the detector's own alert level."""
    return NabReport(
        run.detector,
        run.points,
        run.seconds,
        score_all(corpus, run.scores),
        score_all(corpus, run.scores, run.alert_level),
    )


def write_results(corpus: Corpus, run: Run, results_dir: Path) -> int:
    """Write NAB's results layout ``<det>/<category>/<det>_<file>.csv``; returns files written.

    Columns ``timestamp,value,anomaly_score,label`` (label 1 on rows inside a window).
    """
    for s in corpus.series:
        category, _, filename = s.name.rpartition("/")
        path = results_dir / run.detector / category / f"{run.detector}_{filename}"
        path.parent.mkdir(parents=True, exist_ok=True)
        stamps = np.char.replace(np.datetime_as_string(s.timestamps, unit="s"), "T", " ")
        label = (s.window_ids() >= 0).astype(int)
        lines = [
            f"{t},{v!r},{a!r},{lab}"
            for t, v, a, lab in zip(
                stamps.tolist(),
                s.values.tolist(),
                run.scores[s.name].tolist(),
                label.tolist(),
                strict=True,
            )
        ]
        path.write_text("timestamp,value,anomaly_score,label\n" + "\n".join(lines) + "\n")
    return len(corpus.series)


# -- a labelled CSV --------------------------------------------------------------------------

_TRUE = {"true", "yes", "anomaly"}
_FALSE = {"", "false", "no", "normal"}
DELIMITERS = (";", ",", "\t", "|")
TIMESTAMP_NAMES = ("timestamp", "datetime", "time", "date", "ts")
LABEL_NAMES = ("anomaly", "label", "is_anomaly", "labels")


@dataclass(frozen=True, eq=False)
class LabelledCsv:
    """A CSV read for evaluation: one value column per slot, and 0/1 row labels."""

    name: str
    columns: tuple[str, ...]
    values: FloatArray  # rows x columns, NaN where a cell is empty
    epoch: FloatArray
    labels: np.ndarray[Any, np.dtype[np.bool_]]
    label_column: str = "anomaly"
    delimiter: str = ","


def sniff_delimiter(header: str) -> str:
    """The delimiter of a CSV from its header line: the most frequent of ``; , TAB |``
    (``;`` wins a tie, as in European exports whose numbers may use decimal commas).

    >>> sniff_delimiter("datetime;Accelerometer1RMS;Current;anomaly;changepoint")
    ';'
    >>> sniff_delimiter("timestamp,value,label"), sniff_delimiter("value")
    (',', ',')
    """
    counts = [header.count(d) for d in DELIMITERS]
    best = max(range(len(DELIMITERS)), key=lambda i: counts[i])
    return DELIMITERS[best] if counts[best] else ","


class _Cells:
    """Parses the cells of one file; error messages name the file, line and column."""

    def __init__(self, path: Path, delimiter: str) -> None:
        self.path = path
        self.decimal_comma = delimiter != ","

    def number(self, line: int, col: str, cell: str) -> float:
        text = cell.strip()
        if not text:
            return float("nan")
        try:
            return float(text)
        except ValueError:
            pass
        if self.decimal_comma and "," in text:
            try:
                return float(text.replace(".", "").replace(",", "."))  # 1.234,5 and 3,25
            except ValueError:
                pass
        raise ConfigError(f"{self.path}:{line}: column {col!r}: {cell!r} is not a number")

    def label(self, line: int, col: str, cell: str) -> bool:
        word = cell.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        value = self.number(line, col, cell)
        return bool(value != 0.0 and not math.isnan(value))


def _epoch(path: Path, col: str, cells: list[str]) -> FloatArray:
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    try:
        stamps = np.array(
            [c.strip().replace(" ", "T").removesuffix("Z") for c in cells], dtype="datetime64[us]"
        )
    except ValueError as exc:
        raise ConfigError(
            f"{path}: column {col!r} holds neither epoch seconds nor ISO 8601 times "
            "(pass --timestamp-column to choose another)"
        ) from exc
    return stamps.astype(np.int64).astype(np.float64) / 1e6


def _find(header: list[str], names: Sequence[str]) -> str | None:
    """The first column whose name, ignoring case, is one of ``names``."""
    lower = {h.lower(): h for h in reversed(header)}
    return next((lower[n] for n in names if n in lower), None)


def read_labelled_csv(
    path: Path,
    label_column: str | None = None,
    value_columns: Sequence[str] | None = None,
    timestamp_column: str | None = None,
    exclude_columns: Sequence[str] = (),
    *,
    require_label: bool = True,
) -> LabelledCsv:
    """Read ``path``; value columns default to every column but the label, the timestamp and
    ``exclude_columns``. Without ``require_label``, a CSV with no label column reads with
    every row labelled normal (training a model needs no labels).

    The delimiter is found from the header (:func:`sniff_delimiter`); with ``;`` or a tab,
    decimal commas (``3,25``) are read too. The label column defaults to the first of
    ``anomaly``, ``label``, ``is_anomaly``, ``labels`` (any case); the timestamp column to the
    first of ``timestamp``, ``datetime``, ``time``, ``date``, ``ts``. It may hold epoch seconds or
    ISO date-times; without one, row numbers stand in as seconds.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc
    delimiter = sniff_delimiter(text.split("\n", 1)[0])
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    if len(rows) < 2:
        raise ConfigError(f"{path}: needs a header and at least one row")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    columns = ", ".join(header)
    if label_column is None:
        label_column = _find(header, LABEL_NAMES)
        if label_column is None and not require_label:
            label_column = ""
        elif label_column is None:
            raise ConfigError(f"{path}: which column is the label? pass --label-column ({columns})")
    if timestamp_column is None:
        timestamp_column = _find(header, TIMESTAMP_NAMES)
    named = [*([label_column] if label_column else []), *exclude_columns]
    for col in [*named, *([timestamp_column] if timestamp_column else [])]:
        if col not in header:
            raise ConfigError(f"{path}: no column {col!r} (columns: {columns})")
    skip = {label_column, timestamp_column, "", *exclude_columns}  # "": a trailing delimiter
    cols = list(value_columns or [c for c in header if c not in skip])
    for col in cols:
        if col not in header:
            raise ConfigError(f"{path}: no column {col!r} (columns: {columns})")
    if not cols:
        raise ConfigError(f"{path}: no value column to score")
    at = {c: header.index(c) for c in reversed(header)}
    for n, r in enumerate(body):
        if len(r) < len(header):
            raise ConfigError(f"{path}:{n + 2}: {len(r)} cells for {len(header)} columns")
    cells = _Cells(path, delimiter)
    try:
        values = np.array(
            [[cells.number(n + 2, c, r[at[c]]) for c in cols] for n, r in enumerate(body)],
            dtype=np.float64,
        ).reshape(len(body), len(cols))
    except ConfigError as exc:
        if value_columns:
            raise
        raise ConfigError(f"{exc} (--exclude-column leaves a column out)") from exc
    labels = (
        np.array(
            [cells.label(n + 2, label_column, r[at[label_column]]) for n, r in enumerate(body)],
            dtype=bool,
        )
        if label_column
        else np.zeros(len(body), dtype=bool)
    )
    epoch = (
        _epoch(path, timestamp_column, [r[at[timestamp_column]] for r in body])
        if timestamp_column
        else np.arange(len(body), dtype=np.float64)
    )
    return LabelledCsv(path.name, tuple(cols), values, epoch, labels, label_column, delimiter)


def _runs(mask: np.ndarray[Any, np.dtype[np.bool_]]) -> tuple[IntArray, IntArray]:
    """First and last row of every run of True."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1


def _touched(mask: np.ndarray[Any, np.dtype[np.bool_]], first: IntArray, last: IntArray) -> int:
    """How many of the runs ``first..last`` hold at least one True row of ``mask``."""
    c = np.concatenate(([0], np.cumsum(mask)))
    return int(np.count_nonzero(c[last + 1] - c[first] > 0))


def prf(tp: int, n_pred: int, n_true: int, hits: int | None = None) -> dict[str, float | int]:
    p = tp / n_pred if n_pred else 0.0
    r = (tp if hits is None else hits) / n_true if n_true else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4)}


def classification_metrics(
    detected: np.ndarray[Any, np.dtype[np.bool_]], labels: np.ndarray[Any, np.dtype[np.bool_]]
) -> dict[str, dict[str, float | int]]:
    """Point-wise and event-wise precision, recall and F1.

    Point-wise counts rows. Event-wise: an *event* is a run of labelled rows and an *alarm* a
    run of detected rows; recall is the share of events holding a detection, precision the
    share of alarms touching an event.

    >>> lab = np.array([0, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    >>> det = np.array([0, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    >>> m = classification_metrics(det, lab)
    >>> m["point"]["precision"], m["point"]["recall"], m["event"]["recall"]
    (0.5, 0.3333, 0.5)
    """
    tp = int(np.count_nonzero(detected & labels))
    point = {
        "tp": tp,
        "fp": int(np.count_nonzero(detected & ~labels)),
        "fn": int(np.count_nonzero(~detected & labels)),
        **prf(tp, int(detected.sum()), int(labels.sum())),
    }
    events, alarms = _runs(labels), _runs(detected)
    found, true_alarms = _touched(detected, *events), _touched(labels, *alarms)
    event = {
        "events": len(events[0]),
        "detected_events": found,
        "alarms": len(alarms[0]),
        "true_alarms": true_alarms,
        **prf(true_alarms, len(alarms[0]), len(events[0]), found),
    }
    return {"point": point, "event": event}

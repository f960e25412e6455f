"""The Numenta Anomaly Benchmark (NAB v1.1) scorer.

A detector's anomaly scores are turned into detections with one threshold (``score >= t``).
Rows in the first 15 % of a file (at most 750) are a probationary period and are not scored.
Every row gets a weight from a scaled sigmoid of its position:

- inside an anomaly window ``[s, e]`` of width ``w``: ``tp * A(-(e - i + 1) / w) / A(-1)``, so
  the earliest detection earns most; a window is worth the best weight among its detected rows,
  or ``-fn`` when it is missed;
- outside every window: ``-fp`` before the first window, else ``fp * A((i - e') / (w' - 1))``
  relative to the most recent window ``e'``/``w'``; every detected row outside counts.

The raw corpus score is normalised so that the null detector (no detections, ``-fn * W``) scores
0 and a perfect one (``tp * W``) scores 100. :func:`sweep` tries every distinct score as the
threshold (plus the sentinel 1.1, no detections) in one vectorised pass; :func:`optimise` keeps
the best, the higher threshold on ties.

>>> import numpy as np
>>> ts = np.arange(100).astype("datetime64[s]")
>>> series = Series("demo.csv", ts, np.zeros(100), (Window.rows(40, 49),))
>>> corpus = Corpus([series])
>>> scores = np.zeros(100)
>>> scores[40] = 0.9  # first row of the window: a perfect detection
>>> round(score_at(corpus, {"demo.csv": scores}, "standard", 0.5).score, 6)
100.0
>>> round(optimise(corpus, {"demo.csv": scores}, "standard").threshold, 6)
0.9
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import ConfigError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
TimeArray = NDArray[np.datetime64]

PROBATION_FRACTION = 0.15
PROBATION_CAP = PROBATION_FRACTION * 5000  # 750 rows
WINDOW_FRACTION = 0.10
SENTINEL = 1.1  # the "no detections" threshold of the sweep


@dataclass(frozen=True)
class Profile:
    """A NAB cost matrix (``tnWeight`` exists in NAB's file but is never used)."""

    name: str
    tp: float
    fp: float
    fn: float


DEFAULT_PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}
PROFILE_NAMES = tuple(DEFAULT_PROFILES)


@dataclass(frozen=True)
class Window:
    """Rows ``start..end`` of an anomaly window; ``right``/``width`` give a row's position.

    ``right`` is the first row holding the end timestamp and ``width`` counts rows between the
    first occurrences of the two timestamps: NAB's own reckoning, which only differs from
    ``end``/``end - start + 1`` in files whose timestamps repeat.
    """

    start: int
    end: int
    right: int
    width: int

    @classmethod
    def rows(cls, start: int, end: int) -> Window:
        """A window over rows ``start..end`` inclusive."""
        return cls(start, end, end, end - start + 1)


def probation_length(n: int) -> int:
    """Rows not scored at the start of an ``n``-row file: 15 %, at most 750.

    >>> probation_length(4032), probation_length(10320)
    (604, 750)
    """
    return int(min(np.floor(PROBATION_FRACTION * n), PROBATION_CAP))


def scaled_sigmoid(y: ArrayLike) -> FloatArray:
    """NAB's ``A(y) = 2 * sigmoid(-5y) - 1`` (and -1 beyond ``y > 3``).

    >>> scaled_sigmoid([-1.0, 0.0, 1.0, 4.0]).round(5).tolist()
    [0.98661, 0.0, -0.98661, -1.0]
    """
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        a = 2.0 * (1.0 / (1.0 + np.exp(5.0 * y))) - 1.0
    return np.asarray(np.where(y > 3.0, -1.0, a), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Series:
    """One data file: timestamps, values and its anomaly windows (in row order)."""

    name: str
    timestamps: TimeArray
    values: FloatArray
    windows: tuple[Window, ...]

    def __len__(self) -> int:
        return len(self.values)

    @property
    def probation(self) -> int:
        return probation_length(len(self))

    def epoch_seconds(self) -> FloatArray:
        """Timestamps as float seconds since the epoch."""
        us = self.timestamps.astype("datetime64[us]").astype(np.int64)
        return us.astype(np.float64) / 1e6

    def window_ids(self) -> IntArray:
        """Per row: the index of the window holding it, or -1."""
        ids = np.full(len(self), -1, dtype=np.intp)
        for j, win in enumerate(self.windows):
            ids[win.start : win.end + 1] = j
        return ids

    def weights(self, profile: Profile) -> FloatArray:
        """Every row's value if it were detected (NAB's per-row sweep score)."""
        n = len(self)
        out = np.full(n, -profile.fp)
        if not self.windows:
            return out
        i = np.arange(n)
        ends = np.array([w.end for w in self.windows])
        rights = np.array([w.right for w in self.windows])
        widths = np.array([w.width for w in self.windows], dtype=np.float64)
        recent = np.searchsorted(ends, i, side="left") - 1  # last window ended before row i
        after = recent >= 0
        k = recent[after]
        with np.errstate(divide="ignore"):
            y = (i[after] - ends[k]) / (widths[k] - 1.0)
        out[after] = profile.fp * scaled_sigmoid(y)
        ids = self.window_ids()
        inside = ids >= 0
        j = ids[inside]
        y = -(rights[j] - i[inside] + 1) / widths[j]
        out[inside] = profile.tp * scaled_sigmoid(y) / scaled_sigmoid(-1.0)
        return out


class Corpus:
    """Series to score together, with the cost profiles; see :func:`load_corpus`."""

    def __init__(
        self,
        series: Iterable[Series],
        profiles: Mapping[str, Profile] | None = None,
        root: Path | None = None,
    ) -> None:
        self.series = tuple(series)
        self.profiles = dict(profiles or DEFAULT_PROFILES)
        self.root = root
        self.by_name = {s.name: s for s in self.series}
        self._pools: dict[str, tuple[FloatArray, IntArray]] = {}

    @property
    def rows(self) -> int:
        return sum(len(s) for s in self.series)

    @property
    def n_windows(self) -> int:
        return sum(len(s.windows) for s in self.series)

    def profile(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError as exc:
            raise ConfigError(f"unknown NAB profile {name!r}") from exc

    def pool(self, profile: str) -> tuple[FloatArray, IntArray]:
        """Post-probation weights and corpus-wide window ids (-1 outside), file after file."""
        if profile not in self._pools:
            prof = self.profile(profile)
            weights, ids, offset = [], [], 0
            for s in self.series:
                w = s.window_ids()
                weights.append(s.weights(prof)[s.probation :])
                ids.append(np.where(w >= 0, w + offset, -1)[s.probation :])
                offset += len(s.windows)
            self._pools[profile] = (_concat(weights), _concat(ids).astype(np.intp))
        return self._pools[profile]


def _concat(parts: Sequence[NDArray[Any]]) -> NDArray[Any]:
    return np.concatenate(parts) if parts else np.empty(0)


@dataclass(frozen=True)
class ProfileScore:
    """One detector under one profile: threshold, raw corpus score, normalised NAB score."""

    profile: str
    threshold: float
    raw: float
    score: float


def normalise(raw: float, profile: Profile, n_windows: int) -> float:
    """NAB score: 0 for the null detector, 100 for a perfect one (NaN without windows)."""
    null, perfect = -profile.fn * n_windows, profile.tp * n_windows
    return float("nan") if perfect == null else 100.0 * (raw - null) / (perfect - null)


def _pooled_scores(corpus: Corpus, scores: Mapping[str, ArrayLike]) -> FloatArray:
    """Scores in pool order; a file with no scores is taken as never detecting (score -1)."""
    unknown = sorted(set(scores) - set(corpus.by_name))
    if unknown:
        raise ValueError(f"scores for files not in the corpus: {', '.join(unknown)}")
    parts = []
    for s in corpus.series:
        if s.name not in scores:
            parts.append(np.full(len(s) - s.probation, -1.0))
            continue
        a = np.asarray(scores[s.name], dtype=np.float64)
        if a.shape != (len(s),):
            raise ValueError(f"{s.name}: {a.shape[0] if a.ndim else 0} scores for {len(s)} rows")
        if not np.all((a >= 0.0) & (a <= 1.0)):
            raise ValueError(f"{s.name}: anomaly scores must be in [0, 1]")
        parts.append(a[s.probation :])
    return _concat(parts).astype(np.float64)


def score_at(
    corpus: Corpus, scores: Mapping[str, ArrayLike], profile: str, threshold: float
) -> ProfileScore:
    """Score the detections ``score >= threshold`` (files missing from ``scores`` detect nothing,
    so their windows count as missed)."""
    prof = corpus.profile(profile)
    weights, ids = corpus.pool(profile)
    s = _pooled_scores(corpus, scores)
    detected = (s >= threshold) & (s >= 0.0)  # negative: a file without scores
    best = np.full(corpus.n_windows, -prof.fn)
    hit = detected & (ids >= 0)
    np.maximum.at(best, ids[hit], weights[hit])
    raw = float(weights[detected & (ids < 0)].sum() + best.sum())
    return ProfileScore(profile, threshold, raw, normalise(raw, prof, corpus.n_windows))


@dataclass(frozen=True)
class Sweep:
    """Raw corpus score at every candidate threshold, thresholds descending from 1.1."""

    thresholds: FloatArray
    raw: FloatArray


def sweep(corpus: Corpus, scores: Mapping[str, ArrayLike], profile: str) -> Sweep:
    """The exact threshold sweep: every distinct score, one pass over the sorted rows."""
    prof = corpus.profile(profile)
    weights, ids = corpus.pool(profile)
    s = _pooled_scores(corpus, scores)
    keep = s >= 0.0  # drop files without scores
    s, weights, ids = s[keep], weights[keep], ids[keep]
    order = np.argsort(-s, kind="stable")
    s, weights, ids = s[order], weights[order], ids[order]
    delta = np.where(ids < 0, weights, 0.0)  # a false positive adds its own (negative) value
    in_win = np.flatnonzero(ids >= 0)
    in_win = in_win[np.argsort(ids[in_win], kind="stable")]  # grouped by window, score order
    starts = np.flatnonzero(np.diff(ids[in_win])) + 1
    for rows in np.split(in_win, starts) if len(in_win) else []:
        best = np.maximum.accumulate(np.maximum(weights[rows], -prof.fn))
        delta[rows] = np.diff(best, prepend=-prof.fn)  # a window keeps its running best
    base = -prof.fn * corpus.n_windows
    total = base + np.cumsum(delta)
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True)) if len(s) else np.empty(0, np.intp)
    return Sweep(np.append(SENTINEL, s[last]), np.append(base, total[last]))


def optimise(corpus: Corpus, scores: Mapping[str, ArrayLike], profile: str) -> ProfileScore:
    """The threshold with the best raw score (the higher one on ties)."""
    sw = sweep(corpus, scores, profile)
    k = int(np.argmax(sw.raw))
    raw, prof = float(sw.raw[k]), corpus.profile(profile)
    score = normalise(raw, prof, corpus.n_windows)
    return ProfileScore(profile, float(sw.thresholds[k]), raw, score)


def score_all(
    corpus: Corpus,
    scores: Mapping[str, ArrayLike],
    thresholds: Mapping[str, float] | float | None = None,
) -> dict[str, ProfileScore]:
    """Every profile: at the given threshold(s), or optimised when ``thresholds`` is None."""
    out = {}
    for name in corpus.profiles:
        if thresholds is None:
            out[name] = optimise(corpus, scores, name)
        else:
            t = thresholds if isinstance(thresholds, float | int) else thresholds[name]
            out[name] = score_at(corpus, scores, name, float(t))
    return out


def windows_from_labels(labels: ArrayLike) -> tuple[Window, ...]:
    """Windows built from 0/1 row labels the way NAB builds its own.

    Each run of labelled rows is one anomaly, placed at its first row. With ``k`` anomalies in
    ``n`` rows every window spans ``int(0.1 * n / k)`` rows centred on its anomaly (clipped to
    the file); a first window starting inside probation is dropped; overlapping windows merge.

    >>> lab = np.zeros(1000, dtype=bool)
    >>> lab[[500, 501, 800]] = True
    >>> [(w.start, w.end) for w in windows_from_labels(lab)]
    [(475, 525), (775, 825)]
    """
    lab = np.asarray(labels).astype(bool)
    n = len(lab)
    onsets = np.flatnonzero(lab & ~np.concatenate(([False], lab[:-1])))
    if not len(onsets):
        return ()
    half = int(WINDOW_FRACTION * n / len(onsets)) // 2
    spans = [(max(int(a) - half, 0), min(int(a) + half, n - 1)) for a in onsets]
    if spans[0][0] < probation_length(n):
        spans = spans[1:]
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return tuple(Window.rows(s, e) for s, e in merged)


# -- loading -------------------------------------------------------------------------------


def _read_data_file(path: Path) -> tuple[TimeArray, FloatArray]:
    try:
        lines = path.read_text().splitlines()
        if not lines or [c.strip() for c in lines[0].split(",")][:2] != ["timestamp", "value"]:
            raise ValueError('the header is not "timestamp,value"')
        cells = [line.split(",", 2) for line in lines[1:] if line.strip()]
        ts = np.array([c[0].strip() for c in cells], dtype="datetime64[us]")
        values = np.array([c[1] for c in cells], dtype=np.float64)
    except (OSError, ValueError, IndexError) as exc:
        raise ConfigError(f"{path}: not a NAB data file ({exc})") from exc
    return ts, values


def _locate(name: str, ts: TimeArray, limits: Sequence[Sequence[str]]) -> tuple[Window, ...]:
    """Window rows by exact timestamp match, entered and left in file order (as NAB does)."""
    out, pos = [], 0
    for pair in limits:
        try:
            start, end = (np.datetime64(str(t).strip().replace(" ", "T"), "us") for t in pair)
        except ValueError as exc:
            raise ConfigError(f"{name}: bad window {pair!r} ({exc})") from exc
        first_s, first_e = np.flatnonzero(ts == start), np.flatnonzero(ts == end)
        entry = first_s[first_s >= pos]
        if not len(entry):
            raise ConfigError(f"{name}: window start {pair[0]} is not a row timestamp")
        exit_ = first_e[first_e >= entry[0]]
        if not len(exit_):
            raise ConfigError(f"{name}: window end {pair[1]} is not a row timestamp")
        right = int(first_e[0])
        out.append(Window(int(entry[0]), int(exit_[0]), right, right - int(first_s[0]) + 1))
        pos = int(exit_[0]) + 1
    return tuple(out)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc


def load_profiles(path: Path) -> dict[str, Profile]:
    """Profiles from NAB's ``config/profiles.json``."""
    doc = _read_json(path)
    try:
        return {
            name: Profile(
                name,
                float(p["CostMatrix"]["tpWeight"]),
                float(p["CostMatrix"]["fpWeight"]),
                float(p["CostMatrix"]["fnWeight"]),
            )
            for name, p in doc.items()
        }
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a NAB profiles file ({exc})") from exc


def load_corpus(root: Path | str, windows_file: Path | str | None = None) -> Corpus:
    """Load a NAB corpus: ``data/<category>/<file>.csv`` and ``labels/combined_windows.json``.

    The windows file names the files to score (every one must exist). ``config/profiles.json``
    is used when present, else the three standard profiles.
    """
    root = Path(root)
    wfile = Path(windows_file) if windows_file else root / "labels" / "combined_windows.json"
    if not (root / "data").is_dir() or not (windows_file or wfile.is_file()):
        raise ConfigError(
            f"{root}: not a NAB corpus (expected data/ and labels/combined_windows.json)"
        )
    if not wfile.is_file():
        raise ConfigError(f"{wfile}: no such windows file")
    windows = _read_json(wfile)
    if not isinstance(windows, dict) or not all(isinstance(v, list) for v in windows.values()):
        raise ConfigError(f"{wfile}: not a NAB windows file")
    series = []
    for name, limits in windows.items():
        path = root / "data" / name
        if not path.is_file():
            raise ConfigError(f"{root}: data file {name} (listed in {wfile.name}) is missing")
        ts, values = _read_data_file(path)
        series.append(Series(name, ts, values, _locate(name, ts, limits)))
    pfile = root / "config" / "profiles.json"
    return Corpus(series, load_profiles(pfile) if pfile.is_file() else None, root)


def load_results(results_dir: Path | str, detector: str, corpus: Corpus) -> dict[str, FloatArray]:
    """Scores from NAB's results layout ``<det>/<category>/<det>_<file>.csv``.

    Files without a results file are left out, so :func:`score_at` counts them as detecting
    nothing (NAB itself skips them and so over-scores).
    """
    out = {}
    for s in corpus.series:
        category, _, filename = s.name.rpartition("/")
        path = Path(results_dir) / detector / category / f"{detector}_{filename}"
        if not path.is_file():
            continue
        try:
            with path.open(newline="") as fh:
                rows = list(csv.reader(fh))
            col = rows[0].index("anomaly_score")
            out[s.name] = np.array([r[col] for r in rows[1:] if r], dtype=np.float64)
        except (OSError, IndexError, ValueError) as exc:
            raise ConfigError(f"{path}: not a NAB results file ({exc})") from exc
    return out


def load_score_table(path: Path | str) -> dict[str, FloatArray]:
    """Per-file scores from a ``file,timestamp,anomaly_score`` CSV (``.gz`` allowed)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc
    lines = text.splitlines()
    # plain split is several times faster than the csv module; quoted files take the slow road
    rows = [ln.split(",") for ln in lines] if '"' not in text else list(csv.reader(lines))
    header = rows[0] if rows else []
    try:
        fi, si = header.index("file"), header.index("anomaly_score")
        grouped: dict[str, list[str]] = {}
        for name, group in itertools.groupby(rows[1:], key=lambda r: r[fi]):
            grouped.setdefault(name, []).extend(r[si] for r in group)
        return {k: np.array(v, dtype=np.float64) for k, v in grouped.items()}
    except (IndexError, ValueError) as exc:
        raise ConfigError(f"{path}: not a file,timestamp,anomaly_score table ({exc})") from exc

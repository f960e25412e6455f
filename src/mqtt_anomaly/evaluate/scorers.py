"""Row scorers: detectors that judge whole rows (one asset, several sensors) for evaluation.

A :class:`RowScorer` learns from the first rows of a series (commissioning: ``train``), then
scores the rest row by row, causally (a row's verdict uses only that row and the rows before
it), and returns one alarm flag per row. ``evaluate csv`` and ``evaluate sim --assets`` run
every chosen scorer on the same rows.

Built-ins:

- each registered univariate detector by its name (``zscore``, ``stuck``, ...), one slot per
  column: a row alarms when any of its columns scores at or above the detector's alert level;
- ``default``: the configured detector set (``detector.detectors``) together, a row alarms
  when any detector alarms on any column. A fixed ``threshold`` is a temperature limit that
  means nothing for a pressure or a voltage, so in a row scorer (alone or in a set) it is
  adapted per column: each column's limit is its highest commissioning value plus a tenth of
  its commissioning range (the configured ``detector.threshold`` without commissioning rows);
- ``always``: the trivial detector that alarms on every row, the floor every report shows.

Multivariate detectors plug in with :func:`register_multivariate`. When the optional module
``mqtt_anomaly.mvdetectors.offline`` is importable, its detectors are registered on first use:
it names them in ``NAMES``, an ``available()`` function or ``METHODS`` and scores them with
``score_rows(name, train, rows, **params) -> (scores, alarms, contributions)`` (scores in
[0, 1], alarming from 0.5). Without commissioning rows they are left out of the scorers run
by default (:func:`default_scorers`); without the module their names are simply absent.

>>> import numpy as np
>>> rows = np.column_stack([np.sin(np.arange(400) / 9.0), np.cos(np.arange(400) / 9.0)])
>>> rows[300, 1] = 40.0
>>> scorer = create_scorer("zscore")
>>> scorer.train(rows[:200], np.arange(200.0))
>>> alarms = scorer.score(rows[200:], np.arange(200.0, 400.0)).alarms
>>> alarms.shape, bool(alarms[100]), int(alarms.sum()) < 10
((200,), True, True)
>>> bool(create_scorer("always").score(rows, np.arange(400.0)).alarms.all())
True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..config import DetectorSettings
from ..detectors import available, create, registry
from ..detectors.base import Detector, FloatArray
from ..errors import ConfigError
from .runner import feed

BoolArray = np.ndarray[Any, np.dtype[np.bool_]]

ALWAYS = "always"
DEFAULT = "default"
OFFLINE_MODULE = "mqtt_anomaly.mvdetectors.offline"
THRESHOLD_MARGIN = 0.1  # of the commissioning range, above its highest value


@dataclass(frozen=True, eq=False)
class RowScores:
    """A scorer's verdict on each scored row; ``scores`` (the row's highest detector score,
    alarming at ``level``) only when the scorer has one such scale, else None."""

    alarms: BoolArray
    scores: FloatArray | None = None
    level: float = 0.5


class RowScorer(Protocol):
    """Learns normal rows, then flags rows causally (see the module docstring)."""

    def train(self, rows: FloatArray, ts: FloatArray) -> None:
        """Learn from commissioning rows ``(n, columns)`` at epoch seconds ``ts``."""

    def score(self, rows: FloatArray, ts: FloatArray) -> RowScores:
        """Score the rows after commissioning, in order; NaN cells are missing values."""


ScorerFactory = Callable[..., RowScorer]
"""Builds a fresh scorer; called with the keyword parameters of ``[detector.params.NAME]``."""


# -- univariate detectors, one slot per column ------------------------------------------------
def _columns(rows: FloatArray) -> list[FloatArray]:
    return [rows[:, c] for c in range(rows.shape[1])]


class _Columns:
    """Univariate detectors fed one column per slot; a row alarms when any detector alarms on
    any column. ``threshold`` becomes per-column limits (see the module docstring)."""

    def __init__(self, detectors: Sequence[str], settings: DetectorSettings) -> None:
        self.settings = settings
        self.threshold = "threshold" in detectors
        names = [d for d in detectors if d != "threshold"]
        self.detectors: list[Detector] = [create(d, settings) for d in names]
        self.limits: FloatArray | None = None

    def _feed(self, rows: FloatArray, ts: FloatArray) -> list[FloatArray]:
        """Each detector's row score: its highest column score (NaN: no column present)."""
        cols = _columns(rows)
        stamps = [ts] * len(cols)
        out = []
        for det in self.detectors:
            scores, _ = feed(det, cols, stamps)
            stacked = np.column_stack(scores) if scores else np.full((len(rows), 0), np.nan)
            out.append(_row_max(stacked))
        return out

    def train(self, rows: FloatArray, ts: FloatArray) -> None:
        if len(rows):
            self._feed(rows, ts)
            if self.threshold:
                with np.errstate(all="ignore"):
                    hi, lo = np.nanmax(rows, axis=0), np.nanmin(rows, axis=0)
                self.limits = hi + THRESHOLD_MARGIN * (hi - lo)

    def score(self, rows: FloatArray, ts: FloatArray) -> RowScores:
        per = self._feed(rows, ts)
        alarms = np.zeros(len(rows), dtype=bool)
        for det, s in zip(self.detectors, per, strict=True):
            alarms |= np.nan_to_num(s, nan=0.0) >= det.raise_level
        if self.threshold:
            limit = self.limits if self.limits is not None else self.settings.threshold
            with np.errstate(invalid="ignore"):
                alarms |= (rows >= limit).any(axis=1)
        if len(self.detectors) == 1 and not self.threshold:
            level = self.detectors[0].raise_level
            return RowScores(alarms, np.nan_to_num(per[0], nan=0.0), level)
        return RowScores(alarms)


def _row_max(stacked: FloatArray) -> FloatArray:
    out = np.full(len(stacked), np.nan)
    present = ~np.isnan(stacked).all(axis=1) if stacked.shape[1] else np.zeros(len(out), bool)
    if present.any():
        out[present] = np.nanmax(stacked[present], axis=1)
    return out


class _Always:
    """Alarms on every row."""

    def train(self, rows: FloatArray, ts: FloatArray) -> None:
        pass

    def score(self, rows: FloatArray, ts: FloatArray) -> RowScores:
        return RowScores(np.ones(len(rows), dtype=bool), np.ones(len(rows)))


# -- multivariate ---------------------------------------------------------------------------
_multivariate: dict[str, ScorerFactory] = {}
_offline_checked = False


def register_multivariate(name: str, factory: ScorerFactory) -> None:
    """Make ``name`` a row scorer built by ``factory(**params)``; a taken name is an error."""
    key = name.strip().lower()
    if key in _multivariate or key in (ALWAYS, DEFAULT) or key in available():
        raise ConfigError(f"row scorer {name!r} is already registered")
    _multivariate[key] = factory


class _Offline:
    """A detector of the optional offline module: trained and scored in one call."""

    def __init__(self, module: Any, name: str, params: Mapping[str, Any]) -> None:
        self.module, self.name, self.params = module, name, dict(params)
        self.train_rows: FloatArray | None = None

    def train(self, rows: FloatArray, ts: FloatArray) -> None:
        self.train_rows = rows

    def score(self, rows: FloatArray, ts: FloatArray) -> RowScores:
        train = self.train_rows if self.train_rows is not None else rows[:0]
        try:
            scores, alarms, _ = self.module.score_rows(self.name, train, rows, **self.params)
        except (TypeError, ValueError) as exc:  # bad parameters, too few commissioning rows
            raise ConfigError(f"{self.name}: {exc}") from exc
        values = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
        scale = bool(np.all((values >= 0.0) & (values <= 1.0)))  # [0, 1]: NAB can score it
        return RowScores(np.asarray(alarms, dtype=bool), values if scale else None)


def _offline_names(module: Any) -> list[str]:
    """The module's detectors: ``NAMES``, ``available()`` or ``METHODS``, the first it has."""
    names = getattr(module, "NAMES", None)
    if names is None and callable(getattr(module, "available", None)):
        names = module.available()
    if names is None:
        names = getattr(module, "METHODS", None)
    return [str(n) for n in names or ()]


def _load_offline() -> None:
    """Register the optional module's detectors once (see the module docstring)."""
    global _offline_checked  # noqa: PLW0603 - looked up once per process
    if _offline_checked:
        return
    _offline_checked = True
    try:
        module = importlib.import_module(OFFLINE_MODULE)
    except ImportError:
        return
    for name in _offline_names(module):
        if name.lower() not in _multivariate:

            def factory(module: Any = module, name: str = name, **params: Any) -> RowScorer:
                return _Offline(module, name, params)

            register_multivariate(name, factory)


def multivariate() -> list[str]:
    """The registered multivariate scorers, in registration order."""
    _load_offline()
    return list(_multivariate)


def scorer_names() -> list[str]:
    """Every scorer: ``default``, the univariate detectors, the multivariate ones, ``always``."""
    return [DEFAULT, *available(), *multivariate(), ALWAYS]


def default_scorers(train_rows: int) -> list[str]:
    """The scorers run when none is chosen: all of them, but the multivariate ones only with
    commissioning rows to learn from (``train_rows`` > 0)."""
    names = scorer_names()
    return names if train_rows > 0 else [n for n in names if n not in _multivariate]


def create_scorer(name: str, settings: DetectorSettings | None = None) -> RowScorer:
    """A fresh scorer ``name`` (a one-line :class:`ConfigError` naming the choices otherwise)."""
    settings = settings or DetectorSettings()
    key = name.strip().lower()
    if key == ALWAYS:
        return _Always()
    if key == DEFAULT:
        return _Columns(settings.detectors, settings)
    if key in multivariate():
        return _multivariate[key](**settings.params.get(key, {}))
    if key in available():
        return _Columns([key], settings)
    if key in registry.current().broken:  # a plug-in that fails to import says why
        registry.get(key)
    raise ConfigError(f"unknown detector {name!r} (one of: {', '.join(scorer_names())})")

"""Readings and labels for ``models train`` and ``models evaluate`` (the commands layer).

Readings come as :class:`~mqtt_anomaly.replay.engine.Columns` batches in time order from a
history store, a Kafka topic of readings (both through :mod:`mqtt_anomaly.replay.sources`) or
a CSV (one value column per sensor, named by the column; :func:`csv_batches`), optionally
restricted to some sensors or assets (:class:`Selection`).

Labels (:func:`read_labels`, ``--labels SPEC``):

- ``feedback`` or ``feedback:STORE_URL``: operator feedback of the store (the configured
  one, or that URL). An alert marked ``confirmed`` labels the reading that raised it
  anomalous, one marked ``false_alarm`` labels it normal: one :class:`Point` each, at the
  alert's sensor and reading time (an alert without a reading: its alert time).
- ``sim:PATH`` or ``PATH.jsonl``: the simulator's labels file (``simulate --labels-file``),
  one :class:`~mqtt_anomaly.simulate.Label` per injected fault, scored as ``evaluate sim``
  scores them (:func:`mqtt_anomaly.evaluate.sim.score_alerts`).
- ``csv:PATH``: a labelled CSV (``evaluate csv``'s format): every row is a :class:`Point`
  of every sensor at once (``sensor_id`` None); the readings come from the same file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..assets import AssetBook
from ..config import Settings
from ..errors import ConfigError
from ..messages import NO_SEQ
from ..replay.engine import Columns

if TYPE_CHECKING:
    from ..evaluate.runner import LabelledCsv
    from ..simulate import Label
    from ..store.base import Store

__all__ = ["Labels", "Point", "Selection", "csv_batches", "open_history", "read_labels"]


@dataclass(frozen=True, slots=True)
class Point:
    """One labelled reading: ``sensor_id`` (None: every sensor at that time) at ``ts``."""

    sensor_id: str | None
    ts: float
    anomalous: bool


@dataclass(frozen=True)
class Labels:
    """What ``--labels`` named: points (feedback, CSV rows) or fault intervals (simulator)."""

    spec: str
    points: tuple[Point, ...] = ()
    faults: tuple[Label, ...] = ()
    csv: LabelledCsv | None = None
    """The labelled CSV, whose readings are replayed (``csv:PATH``)."""

    @property
    def span(self) -> tuple[float, float] | None:
        """The first and last labelled time (None: no labels)."""
        times = [p.ts for p in self.points] + [t for f in self.faults for t in (f.start, f.end)]
        return (min(times), max(times)) if times else None


class Selection:
    """``--sensor`` / ``--asset``: which readings to keep (everything when both are empty)."""

    def __init__(self, settings: Settings, sensors: Sequence[str], assets: Sequence[str]) -> None:
        self.sensors = frozenset(sensors)
        self.assets = frozenset(assets)
        self._book = AssetBook(settings.assets) if assets else None
        self._keep: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.sensors or self.assets)

    def keeps(self, sensor_id: str) -> bool:
        keep = self._keep.get(sensor_id)
        if keep is None:
            keep = sensor_id in self.sensors
            if not keep and self._book is not None:
                found = self._book.resolve(sensor_id, None)
                keep = found is not None and found[0] in self.assets
            self._keep[sensor_id] = keep
        return keep

    def filter(self, batches: Iterator[Columns]) -> Iterator[Columns]:
        if not self:
            yield from batches
            return
        for b in batches:
            idx = [i for i, sid in enumerate(b.sensor_ids) if self.keeps(sid)]
            if idx:
                yield Columns(
                    [b.sensor_ids[i] for i in idx],
                    b.ts[idx],
                    [b.values[i] for i in idx],
                    [b.seqs[i] for i in idx],
                )


def csv_batches(
    data: LabelledCsv, *, since: float | None, until: float | None, chunk: int = 20_000
) -> Iterator[Columns]:
    """The CSV's readings row by row (each value column a sensor named by the column; an
    empty cell is no reading), in time order, without seq."""
    order = np.argsort(data.epoch, kind="stable")
    sids: list[str] = []
    ts: list[float] = []
    values: list[float] = []
    for row in order.tolist():
        t = float(data.epoch[row])
        if (since is not None and t < since) or (until is not None and t > until):
            continue
        for col, name in enumerate(data.columns):
            v = float(data.values[row, col])
            if not math.isnan(v):
                sids.append(name)
                ts.append(t)
                values.append(v)
        if len(sids) >= chunk:
            yield Columns(sids, np.array(ts), values, [NO_SEQ] * len(sids))
            sids, ts, values = [], [], []
    if sids:
        yield Columns(sids, np.array(ts), values, [NO_SEQ] * len(sids))


def shown_spec(spec: str) -> str:
    """``spec`` as it may be printed and written down: a store URL's password masked."""
    from ..replay.command import _safe_url

    kind, sep, rest = spec.partition(":")
    return f"{kind}:{_safe_url(rest)}" if kind == "feedback" and sep and rest else spec


def read_labels(spec: str, settings: Settings) -> Labels:
    """The labels ``--labels SPEC`` names (see the module); ConfigError for a bad spec."""
    kind, _, rest = spec.partition(":")
    if kind == "feedback":
        url = rest or settings.store.url
        if not url.startswith(("sqlite:", "postgresql:", "postgres:")):
            raise ConfigError(
                f"--labels {spec}: feedback needs a history store (sqlite:///PATH or "
                f"postgresql://...), not {url.split('://', 1)[0]}://"
            )
        return _feedback_labels(spec, url, settings)
    if kind == "sim" or (not rest and spec.endswith(".jsonl")):
        from ..simulate import read_labels as read_sim

        path = Path(rest if kind == "sim" else spec)
        try:
            faults = read_sim(path)
        except OSError as exc:
            raise ConfigError(f"--labels {spec}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"--labels {spec}: not a simulator labels file ({exc})") from exc
        return Labels(shown_spec(spec), faults=tuple(faults))
    if kind == "csv":
        from ..evaluate.runner import read_labelled_csv

        data = read_labelled_csv(Path(rest))
        points = tuple(
            Point(None, float(t), bool(a)) for t, a in zip(data.epoch, data.labels, strict=True)
        )
        return Labels(shown_spec(spec), points=points, csv=data)
    raise ConfigError(
        f"--labels {spec!r}: expected feedback[:STORE_URL], sim:PATH (or PATH.jsonl) or csv:PATH"
    )


def open_history(url: str, settings: Settings) -> Store:
    """A store to read from, retention off (reading must not expire any of it); a SQLite
    file that does not exist is an error."""
    from ..replay.sources import open_replay_store

    store_settings = settings.store.model_copy(update={"retention_days": 1e9})
    return open_replay_store(url, settings.model_copy(update={"store": store_settings}))


def _feedback_labels(spec: str, url: str, settings: Settings) -> Labels:
    from ..store.feedback import FeedbackStore

    with open_history(url, settings) as store:
        if not isinstance(store, FeedbackStore):
            raise ConfigError(f"--labels {shown_spec(spec)}: the store keeps no feedback")
        rows = store.feedback(limit=1_000_000)
    points = tuple(
        Point(f.sensor_id, f.reading_ts if f.reading_ts is not None else f.alert_ts, f.anomalous)
        for f in rows
    )
    return Labels(shown_spec(spec), points=points)

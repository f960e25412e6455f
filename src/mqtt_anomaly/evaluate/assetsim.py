"""``evaluate sim --assets N``: row scorers on simulated machines, against the asset labels.

The machines of :mod:`~mqtt_anomaly.simulate.assets` run for ``duration`` simulated seconds
without a broker, as fast as the model goes (:func:`~mqtt_anomaly.simulate.plant.generate`):
the same values ``simulate --assets`` publishes and writes to CSV, from the same seed. Each
asset is one series for :func:`~.rows.evaluate_series`: its first ``warmup`` seconds (the
commissioning run, fault-free, taking the machine through its speed range) are learned and not
scored; every later reading is a row, labelled anomalous while the asset has a fault. Each
scorer sees only one asset at a time (univariate ones one slot per sensor: a row is flagged
when any sensor is), fresh per asset.

Reported per scorer: point and event precision, recall and F1 with the false- and missed-alarm
rates, micro-averaged over the assets, and per fault kind how many faults got at least one
flag within their span. The labelled share of rows (what ``always`` scores) is the chance
level: a scorer whose point precision is no higher flags fault rows no more often than
normal ones.

>>> r = run_asset_evaluation("pump", 1, duration=1200.0, seed=2, scorers=["zscore"])
>>> [k for k in r.totals.counts], r.series[0].train_rows, r.series[0].scored_rows
(['zscore', 'always'], 600, 600)
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DetectorSettings
from ..errors import ConfigError
from ..simulate.assets import DEFAULT_WARMUP, AssetModel, default_rates
from ..simulate.plant import AssetRun, generate
from .rows import SeriesReport, Totals, evaluate_series


@dataclass(frozen=True)
class KindRecall:
    """How many faults of one kind a scorer flagged at least once within their span, and the
    median delay from a fault's first reading to its first flag (s; None: none flagged)."""

    kind: str
    faults: int
    detected: dict[str, int]  # scorer -> faults flagged
    delay_p50: dict[str, float | None]


@dataclass(frozen=True)
class AssetSimReport:
    """Every scorer on every simulated asset, the totals and the recall per fault kind."""

    kind: str
    settings: dict[str, Any]
    series: list[SeriesReport]
    totals: Totals
    by_kind: list[KindRecall]

    def as_dict(self) -> dict[str, Any]:
        return {
            "asset_kind": self.kind,
            "settings": self.settings,
            "assets": [s.as_dict() for s in self.series],
            "total": self.totals.as_dict(),
            "by_fault_kind": [
                {
                    "kind": k.kind,
                    "faults": k.faults,
                    "detected": k.detected,
                    "delay_p50": k.delay_p50,
                }
                for k in self.by_kind
            ],
        }


def _by_kind(run: AssetRun, series: Sequence[SeriesReport], train: int) -> list[KindRecall]:
    faults: dict[str, int] = {}
    delays: dict[str, dict[str, list[float]]] = {}
    for fault in run.faults:
        if fault.start_k < train or fault.end_k is None:
            continue
        faults[fault.kind] = faults.get(fault.kind, 0) + 1
        per = delays.setdefault(fault.kind, {})
        for r in series[fault.asset].results:
            assert r.alarms is not None
            flags = np.flatnonzero(r.alarms[fault.start_k - train : fault.end_k - train + 1])
            found = per.setdefault(r.scorer, [])
            if flags.size:
                t = run.t[:, fault.asset]
                found.append(float(t[fault.start_k + flags[0]] - t[fault.start_k]))
    return [
        KindRecall(
            k,
            faults[k],
            {name: len(d) for name, d in delays[k].items()},
            {name: statistics.median(d) if d else None for name, d in delays[k].items()},
        )
        for k in run.fault_names
        if k in faults
    ]


def run_asset_evaluation(
    kind: str,
    assets: int,
    *,
    duration: float,
    interval: float = 1.0,
    seed: int = 1,
    rate_scale: float = 1.0,
    warmup: float = DEFAULT_WARMUP,
    scorers: Sequence[str],
    settings: DetectorSettings | None = None,
) -> AssetSimReport:
    """Simulate ``assets`` machines of ``kind`` and score them (see the module docstring);
    ``rate_scale`` multiplies the default fault rates (per kind of fault, per asset-hour)."""
    if duration <= warmup:
        raise ConfigError(f"--duration {duration:g} s must be longer than the warmup {warmup:g} s")
    if rate_scale < 0:
        raise ConfigError("--rate-scale must be >= 0")
    rates = {k: v * rate_scale for k, v in default_rates(kind).items()}
    model = AssetModel(kind, assets, interval=interval, seed=seed, rates=rates, warmup=warmup)
    run = generate(model, round(duration / interval))
    train = min(round(warmup / interval), len(run.t))
    series = [
        evaluate_series(
            asset,
            run.sensors,
            run.values[:, i, :],
            run.t[:, i],
            run.labels[:, i],
            scorers,
            train_rows=train,
            settings=settings,
            keep_alarms=True,
        )
        for i, asset in enumerate(run.ids)
    ]
    return AssetSimReport(
        model.kind.name,
        {
            "assets": assets,
            "duration": duration,
            "interval": interval,
            "warmup": warmup,
            "seed": seed,
            "rate_scale": rate_scale,
            "faults": len(run.faults),
        },
        series,
        Totals.of(series),
        _by_kind(run, series, train),
    )

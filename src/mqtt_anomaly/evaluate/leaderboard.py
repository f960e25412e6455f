"""The NAB leaderboard: our detectors beside published results, best standard score first.

Published rows are NAB v1.1 scoreboard figures (normalised scores, thresholds optimised on the
corpus as NAB does); ours are scored the same way by :mod:`.nab`.

>>> rows = build([])
>>> [r.name for r in rows[:2]], rows[0].scores["standard"]
(['ARTime', 'Numenta HTM'], 74.9)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.table import Table

from .nab import PROFILE_NAMES
from .runner import NabReport, rounded

SHORT = {"standard": "std", "reward_low_FP_rate": "low FP", "reward_low_FN_rate": "low FN"}


@dataclass(frozen=True)
class Entry:
    """One leaderboard row; thresholds and throughput only for detectors we ran."""

    name: str
    scores: dict[str, float]
    thresholds: dict[str, float] | None = None
    points_per_second: float | None = None
    alert_level_scores: dict[str, float] | None = None

    @property
    def published(self) -> bool:
        return self.thresholds is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "published": self.published,
            "scores": {p: rounded(s, 2) for p, s in self.scores.items()},
            "thresholds": self.thresholds,
            "points_per_second": (
                None if self.points_per_second is None else rounded(self.points_per_second, 1)
            ),
            "scores_at_alert_level": (
                None
                if self.alert_level_scores is None
                else {p: rounded(s, 2) for p, s in self.alert_level_scores.items()}
            ),
        }


def _published(name: str, standard: float, low_fp: float, low_fn: float) -> Entry:
    return Entry(name, dict(zip(PROFILE_NAMES, (standard, low_fp, low_fn), strict=True)))


PUBLISHED: tuple[Entry, ...] = (
    _published("ARTime", 74.9, 65.1, 80.4),
    _published("Numenta HTM", 70.1, 63.1, 74.3),
    _published("CAD OSE", 69.9, 67.0, 73.2),
    _published("Random Cut Forest", 51.7, 38.4, 59.7),
    _published("windowed Gaussian", 39.6, 20.9, 47.4),
)


def entry(report: NabReport) -> Entry:
    """A leaderboard row for one of our runs."""
    return Entry(
        report.detector,
        {p: s.score for p, s in report.optimised.items()},
        {p: s.threshold for p, s in report.optimised.items()},
        report.points_per_second,
        {p: s.score for p, s in report.at_alert.items()},
    )


def build(reports: Iterable[NabReport], published: bool = True) -> list[Entry]:
    """Our rows and (optionally) the published ones, sorted by standard score, best first."""
    rows = [entry(r) for r in reports] + (list(PUBLISHED) if published else [])

    def key(e: Entry) -> float:
        std = e.scores.get("standard", math.nan)
        return -std if math.isfinite(std) else math.inf

    return sorted(rows, key=key)


def render(rows: Iterable[Entry]) -> Table:
    """A rich table: score per profile, our optimised thresholds, alert-level score, points/s."""
    table = Table(
        title="NAB v1.1 (0 = null detector, 100 = perfect)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
    )
    for head in ("detector", *(SHORT[p] for p in PROFILE_NAMES), "thresholds", "std@alert"):
        table.add_column(head, justify="left" if head == "detector" else "right", no_wrap=True)
    table.add_column("points/s", justify="right", no_wrap=True)
    for e in rows:
        cells = [f"{e.scores[p]:.1f}" for p in PROFILE_NAMES]
        ths, alert = e.thresholds, e.alert_level_scores
        cells.append(
            "published" if ths is None else "/".join(f"{ths[p]:.3g}" for p in PROFILE_NAMES)
        )
        cells.append("" if alert is None else f"{alert['standard']:.1f}")
        cells.append("" if e.points_per_second is None else f"{e.points_per_second:,.0f}")
        table.add_row(e.name, *cells, style="dim" if e.published else None)
    return table


def as_json(rows: Iterable[Entry]) -> list[dict[str, Any]]:
    """The rows as plain data, for ``--json``."""
    return [e.as_dict() for e in rows]

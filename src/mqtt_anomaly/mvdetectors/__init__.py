"""Multivariate detectors of assets (groups of sensors scored together).

:class:`~.spc.AssetDetector` scores many assets per call, one row of ``k`` sensors per asset,
with PCA statistical process control (Hotelling T² and SPE/Q, robust scaling) and a MEWMA,
a commissioning phase, k-of-n alarm hysteresis (:mod:`.hysteresis`) and per-sensor
contributions. :func:`~.offline.score_rows` runs it on one asset's rows for evaluation.
"""

from __future__ import annotations

from .offline import score_rows
from .spc import COMMISSIONING, METHODS, MONITORING, PHASES, AssetDetector, AssetScores

__all__ = [
    "COMMISSIONING",
    "METHODS",
    "MONITORING",
    "PHASES",
    "AssetDetector",
    "AssetScores",
    "score_rows",
]

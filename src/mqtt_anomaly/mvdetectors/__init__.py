"""Multivariate detectors of assets (groups of sensors scored together).

:class:`~.regress.RegressDetector` (``regress``, the default: each sensor regressed on the
others, residuals with a slowly tracked bias) and :class:`~.spc.AssetDetector` (PCA
statistical process control, Hotelling T² and SPE/Q, and a MEWMA) score many assets per call,
one row of ``k`` sensors per asset, with a commissioning phase, k-of-n alarm hysteresis
(:mod:`.hysteresis`) and per-sensor contributions. :func:`~.offline.score_rows` runs one on
one asset's rows for evaluation.
"""

from __future__ import annotations

from .offline import score_rows
from .regress import RegressDetector
from .spc import COMMISSIONING, METHODS, MONITORING, PHASES, AssetDetector, AssetScores

__all__ = [
    "COMMISSIONING",
    "METHODS",
    "MONITORING",
    "PHASES",
    "AssetDetector",
    "AssetScores",
    "RegressDetector",
    "score_rows",
]

"""Per-slot arrays that grow by doubling, so adding slots one at a time costs amortised O(1).

:func:`capacity_for` is the new size for ``n`` slots (at least double the current one, at
least ``minimum``, at most ``limit``); :func:`grown` copies an array into a larger one whose
new rows hold ``fill``. Detectors (:meth:`Detector.reserve <.base.Detector.reserve>`) and the
alert books use them.

>>> import numpy as np
>>> capacity_for(1, 0), capacity_for(17, 16), capacity_for(100, 16), capacity_for(17, 16, limit=20)
(16, 32, 100, 20)
>>> grown(np.array([1.0, 2.0]), 4, np.nan).tolist()
[1.0, 2.0, nan, nan]
>>> grown(np.zeros((0,)), 2, -1, shape=(3,)).tolist()
[[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]]
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

T = TypeVar("T", bound=np.generic)


def capacity_for(n: int, current: int, *, minimum: int = 16, limit: int | None = None) -> int:
    """The capacity to grow to for ``n`` slots from ``current``: ``max(n, 2 * current,
    minimum)``, capped at ``limit`` (but never below ``n``)."""
    cap = max(n, 2 * current, minimum)
    return cap if limit is None else max(n, min(cap, limit))


def grown(
    arr: NDArray[T], cap: int, fill: Any, *, shape: tuple[int, ...] | None = None
) -> NDArray[T]:
    """A new array of ``cap`` rows (of ``shape``, by default ``arr``'s own rows) and ``arr``'s
    dtype: ``arr``'s rows first, then rows of ``fill``."""
    row = arr.shape[1:] if shape is None else shape
    new = np.full((cap, *row), fill, dtype=arr.dtype)
    if len(arr):
        new[: len(arr)] = arr
    return new

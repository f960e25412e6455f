from __future__ import annotations

import numpy as np
import pytest

from mqtt_anomaly.alerting import AlertBook

S = np.array([0], dtype=np.intp)


def run(book: AlertBook, scores: list[float]) -> list[str]:
    events = []
    for x in scores:
        tr = book.step(S, np.array([x]))
        events.append("R" if len(tr.raised) else "C" if len(tr.cleared) else ".")
    return events


def test_debounce_needs_consecutive_scores() -> None:
    book = AlertBook("d", debounce=3, clear_after=1)
    assert run(book, [0.6, 0.6, 0.1, 0.6, 0.6, 0.6, 0.6]) == [".", ".", ".", ".", ".", "R", "."]


def test_hysteresis_between_clear_and_raise_level() -> None:
    book = AlertBook("d", raise_level=0.5, clear_level=0.3, debounce=1, clear_after=1)
    # wobbling between the levels neither clears nor re-raises
    assert run(book, [0.6, 0.45, 0.55, 0.35, 0.49, 0.2, 0.4, 0.5]) == [
        "R",
        ".",
        ".",
        ".",
        ".",
        "C",
        ".",
        "R",
    ]


def test_clear_after_consecutive_low_scores() -> None:
    book = AlertBook("d", debounce=1, clear_after=3)
    assert run(book, [0.9, 0.1, 0.1, 0.6, 0.1, 0.1, 0.1]) == ["R", ".", ".", ".", ".", ".", "C"]


def test_one_active_alert_per_slot_and_severity() -> None:
    book = AlertBook("d", critical_level=0.9, debounce=1, clear_after=1)
    slots = np.array([0, 1, 2], dtype=np.intp)
    tr = book.step(slots, np.array([0.95, 0.6, 0.1]))
    assert tr.raised.tolist() == [0, 1]
    assert tr.critical.tolist() == [True, False]
    tr = book.step(slots, np.array([0.99, 0.99, 0.1]))
    assert tr.raised.tolist() == []  # already active
    assert book.critical[:2].tolist() == [True, False]  # severity fixed at raise time


def test_nan_score_neither_raises_nor_clears() -> None:
    book = AlertBook("d", debounce=1, clear_after=1)
    assert run(book, [np.nan, 0.9, np.nan, 0.1]) == [".", "R", ".", "C"]


def test_levels_validated() -> None:
    with pytest.raises(ValueError):
        AlertBook("d", raise_level=0.3, clear_level=0.5)


def test_growing_keeps_state_and_doubles() -> None:
    book = AlertBook("d", debounce=1, clear_after=2)
    book.step(np.array([3], dtype=np.intp), np.array([0.9]))
    assert len(book.active) == 16  # the first slots come 16 at a time
    book.step(np.array([3], dtype=np.intp), np.array([0.1]))  # one low score of two
    book.step(np.array([16], dtype=np.intp), np.array([0.2]))
    assert len(book.active) == 32  # doubled, not one more
    for name, dtype in (("active", bool), ("critical", bool), ("above", np.int32)):
        assert getattr(book, name).dtype == dtype
    assert book.active.tolist() == [i == 3 for i in range(32)]
    assert book.below[3] == 1  # the run of low scores survived the growth
    tr = book.step(np.array([3, 16], dtype=np.intp), np.array([0.1, 0.1]))
    assert tr.cleared.tolist() == [0]
    book.reserve(100)
    assert len(book.active) == 100  # beyond double: exactly what was asked

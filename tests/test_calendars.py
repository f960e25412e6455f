"""Calendars: the seasonal detector in the plant's local time (DST-safe) with holidays as
declared days."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from mqtt_anomaly.config import DetectorSettings, load_settings
from mqtt_anomaly.detectors import create
from mqtt_anomaly.detectors.seasonal import SeasonalDetector
from mqtt_anomaly.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")
DST = datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN).timestamp()  # clocks went 02:00 → 03:00


def _shift_pattern(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plant that runs 08:00-16:00 on the wall clock in Berlin, every day."""
    hours = np.array([datetime.fromtimestamp(x, BERLIN).hour for x in t])
    running = (hours >= 8) & (hours < 16)
    return np.where(running, 30.0, 10.0) + rng.normal(0, 0.2, len(t))


@pytest.mark.parametrize(("zone", "alerts_after_dst"), [("Europe/Berlin", False), ("UTC", True)])
def test_a_daylight_saving_change_does_not_alert_in_local_time(
    zone: str, alerts_after_dst: bool
) -> None:
    t = np.arange(DST - 21 * 86400, DST + 7 * 86400, 600.0)
    x = _shift_pattern(t, np.random.default_rng(3))
    det = create("seasonal", DetectorSettings(detectors=("seasonal",), timezone=zone))
    scores = det.score_series(x, t)
    before = scores[(t > DST - 14 * 86400) & (t < DST)]
    after = scores[t >= DST]
    assert before.max() < 0.5  # learned: quiet in either zone
    assert bool(after.max() >= 0.5) is alerts_after_dst


def _weekly(t: np.ndarray, off_days: set[date], rng: np.random.Generator) -> np.ndarray:
    """Runs Monday to Friday (30), off at weekends and on ``off_days`` (10)."""
    days = [datetime.fromtimestamp(x, BERLIN).date() for x in t]
    on = np.array([d.weekday() < 5 and d not in off_days for d in days])
    return np.where(on, 30.0, 10.0) + rng.normal(0, 0.2, len(t))


@pytest.mark.parametrize("declared", [True, False])
def test_holidays_are_scored_as_the_declared_day(declared: bool) -> None:
    may_day = date(2026, 5, 1)  # a Friday: the plant is off
    start = datetime(2026, 3, 30, tzinfo=BERLIN).timestamp()  # a Monday, after the DST change
    end = datetime(2026, 5, 4, tzinfo=BERLIN).timestamp()
    t = np.arange(start, end, 900.0)
    x = _weekly(t, {may_day}, np.random.default_rng(5))
    settings = DetectorSettings(
        detectors=("seasonal",),
        timezone="Europe/Berlin",
        holidays=(may_day,) if declared else (),
        holiday_as="sun",
        params={"seasonal": {"period": 604800.0, "bins": 168, "min_std": 0.5}},
    )
    scores = create("seasonal", settings).score_series(x, t)
    on_the_day = np.array([datetime.fromtimestamp(v, BERLIN).date() == may_day for v in t])
    assert scores[~on_the_day][-14 * 96 :].max() < 0.5  # the rest of the last two weeks
    assert bool(scores[on_the_day].max() >= 0.5) is (not declared)


def test_default_calendar_keeps_the_saved_parameters() -> None:
    """A state saved before calendars existed still fits the default detector."""
    assert set(SeasonalDetector().params()) == {
        "period", "bins", "alpha", "z_alert", "min_count", "clip", "min_std", "rel_std",
    }  # fmt: skip
    local = create(
        "seasonal", DetectorSettings(timezone="Europe/Berlin", holidays=(date(2026, 12, 25),))
    )
    assert local.params()["timezone"] == "Europe/Berlin"
    assert local.params()["holidays"] == "2026-12-25"
    state = SeasonalDetector().state_dict()
    with pytest.raises(ValueError, match="saved state is for"):
        local.load_state_dict(state)  # another calendar: relearn


def test_bad_calendar_settings_name_the_key() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^detector\.timezone: unknown time zone .Nowhere/Else.$",
    ):
        load_settings(None, {"detector": {"timezone": "Nowhere/Else"}})
    with pytest.raises(ConfigError, match=r"^detector\.holidays\.0: "):
        load_settings(None, {"detector": {"holidays": ["2026-13-01"]}})

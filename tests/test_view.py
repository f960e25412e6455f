"""The pipeline's read-only view (dashboards, metrics) and the detectors' expected bands."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.detectors import create
from mqtt_anomaly.pipeline import Pipeline

T0 = 1_800_000_000.0


def payload(value: float, seq: int) -> bytes:
    return f'{{"ts": {T0 + seq}, "value": {value}, "seq": {seq}}}'.encode()


def feed(pipe: Pipeline, sid: str, values: list[float], start: int = 0) -> None:
    topic = f"factory/{sid}/temperature"
    pipe.process([(topic, payload(v, start + i), T0 + start + i) for i, v in enumerate(values)])


@pytest.mark.parametrize("name", ["zscore", "robust"])
def test_expected_band_is_the_band_the_next_reading_is_scored_against(name: str) -> None:
    det = create(name)
    rng = np.random.default_rng(3)
    slots = np.arange(8, dtype=np.intp)
    for i in range(40):  # slot k has seen 5k readings: some warmed up, some not
        live = slots[slots * 5 > i]
        det.update(live, 20 + rng.normal(0, 1, len(live)), np.full(len(live), float(i)))
    asked = np.array([0, 3, 7, 20], dtype=np.intp)  # 20: beyond the detector's arrays
    low, high = det.expected_band(asked)
    scores = det.update(asked[:3], np.array([21.0, 19.0, 40.0]), np.full(3, 40.0))
    np.testing.assert_array_equal(low[:3], scores.low)
    np.testing.assert_array_equal(high[:3], scores.high)
    assert np.isnan(low[0]) and np.isfinite(low[2])  # slot 0 never warmed up, slot 7 did
    assert math.isnan(low[3]) and math.isnan(high[3])
    assert len(det.state["n"]) <= 20  # asking grew nothing


def test_bands_of_detectors_without_one_and_of_the_threshold() -> None:
    slots = np.arange(3, dtype=np.intp)
    low, high = create("stuck").expected_band(slots)
    assert np.isnan(low).all() and np.isnan(high).all()
    low, high = create("threshold").expected_band(slots)
    assert np.isnan(low).all() and (high == 90.0).all()


def test_view_band_is_the_narrowest_of_the_detectors() -> None:
    pipe = Pipeline(load_settings())
    view = pipe.view()
    feed(pipe, "S1", [25.0 + 0.1 * (i % 3) for i in range(10)])
    s1 = view.slot("S1")
    assert s1 is not None
    band = view.expected_band(s1)  # z-score not warmed up: only the threshold bounds
    assert (band.low, band.high, band.threshold) == (None, 90.0, 90.0)
    feed(pipe, "S1", [25.0 + 0.1 * (i % 3) for i in range(40)], start=10)
    zscore = pipe.detectors[1]
    z_low, z_high = zscore.expected_band(np.array([s1], dtype=np.intp))
    band = view.expected_band(s1)
    assert band.low == float(z_low[0]) and band.high == float(z_high[0]) < 90.0
    feed(pipe, "HOT", [84.0 + 5 * (i % 2) for i in range(40)])  # z-score band reaches past 90
    hot = view.slot("HOT")
    assert hot is not None
    assert view.expected_band(hot).high == 90.0


def test_view_rows_health_alerts_and_counters() -> None:
    pipe = Pipeline(load_settings())
    view = pipe.view()
    for sid in ("A", "B", "C", "D"):
        feed(pipe, sid, [25.0] * 20)
    feed(pipe, "B", [98.2], start=20)  # threshold alert: anomalous
    pipe.process([("factory/C/status", b"offline", T0 + 21)])
    pipe.process([(f"factory/{s}/temperature", payload(25.0, 20), T0 + 20) for s in "AC"])
    pipe.check_silence(T0 + 30)  # D has been quiet for 11 s: silent; A and C too
    assert len(view) == 4 and view.sensor_ids() == ("A", "B", "C", "D")
    assert view.healths() == ("silent", "anomalous", "offline", "silent")
    assert view.health_counts() == {"ok": 0, "anomalous": 1, "offline": 1, "silent": 2}
    b = view.sensor(1)
    assert (b.sensor_id, b.health, b.last_value, b.last_ts) == ("B", "anomalous", 98.2, T0 + 20)
    assert b.interval == pytest.approx(1.0) and b.last_seen == T0 + 20
    assert set(b.active_alerts) == {"threshold", "silence"}  # quiet and anomalous
    assert view.active_alerts(2) == ("offline",)
    active = {(a.sensor_id, a.detector, a.severity) for a in view.all_active_alerts()}
    assert ("C", "offline", "critical") in active and ("D", "silence", "warning") in active
    assert ("B", "threshold", "critical") in active and ("C", "silence", "warning") not in active
    assert view.sensors_active(T0 + 22) == 4  # heard within 5 x their 1 s interval
    assert view.sensors_active(T0 + 24.5) == 3  # D's last reading came at T0 + 19
    assert view.sensors_active(T0 + 30) == 0
    assert "B" in view and "Z" not in view and view.slot("Z") is None
    assert "silence" in view.detectors() and "offline" in view.detectors()

    values = view.last_values()
    np.testing.assert_array_equal(values, [25.0, 98.2, 25.0, 25.0])
    with pytest.raises(ValueError):
        values[0] = 1.0  # read-only
    assert pipe.last_value[0] == 25.0
    assert view.last_seen()[3] == T0 + 19 and len(view.intervals()) == 4

    counters = view.counters()
    counters.dead_by_reason["x"] = 1
    counters.processed = 0
    assert pipe.counters.dead_by_reason == {} and pipe.counters.processed == 83

"""Multivariate asset detectors: commissioning, scoring, contributions, missing sensors,
alarm hysteresis, adaptation, saved state, and the doctests."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from mqtt_anomaly import statefile
from mqtt_anomaly.mvdetectors import (
    COMMISSIONING,
    MONITORING,
    AssetDetector,
    hysteresis,
    model,
    offline,
    score_rows,
)

K = 6


def machine(n: int, seed: int, *, break_at: int | None = None) -> NDArray[np.float64]:
    """Rows of a machine whose six sensors follow two hidden causes (speed, load); from
    ``break_at`` on, sensor 2 reads as at a speed 0.2 higher, every sensor still in range."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) + rng.uniform(0, 1000)
    speed = 1.0 + 0.4 * np.sin(t / 23.0) * np.cos(t / 71.0)
    load = 1.0 + 0.3 * np.sin(t / 50.0)
    x = np.column_stack(
        [
            10 * speed,
            5 * speed + 2 * load,
            3 * speed,
            4 * load,
            2 * speed - load,
            20 + speed + load,
        ]
    ) + rng.normal(0, 0.05, (n, K))
    if break_at is not None:
        x[break_at:, 2] += 0.6
    return x


@pytest.mark.parametrize("module", [hysteresis, model, offline])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("method", ["pca", "mewma", "pca_mewma"])
def test_relation_break_raises_and_normal_rows_do_not(method: str) -> None:
    x = machine(1400, seed=1, break_at=1000)
    _, alarms, contributions = score_rows(method, x[:400], x[400:])
    normal, broken = alarms[:600], alarms[620:]
    assert normal.mean() < 0.02
    assert broken.mean() > 0.95
    # sensor 2 is the one whose relation broke: the largest share, in most alarmed rows
    assert (contributions[620:].argmax(axis=1) == 2).mean() > 0.8
    np.testing.assert_allclose(contributions[620:].sum(axis=1), 1.0)


def test_commissioning_raises_nothing_then_monitors() -> None:
    det = AssetDetector(K, commission_rows=300)
    x = machine(400, seed=2)
    x[100:150] += 50.0  # wild rows while learning: not scored, not raised
    slot = np.zeros(1, dtype=np.intp)
    for i in range(300):
        out = det.update(slot, x[i : i + 1])
        assert np.isnan(out.score[0]) and not out.alarm[0]
        assert out.phase[0] == COMMISSIONING
        assert len(out.commissioned) == (1 if i == 299 else 0)
    assert det.phase_of(slot)[0] == MONITORING
    assert not np.isnan(det.update(slot, x[300:301]).score[0])
    det.recommission(slot)
    assert det.phase_of(slot)[0] == COMMISSIONING
    assert np.isnan(det.update(slot, x[301:302]).score[0])


def test_commissioning_by_duration() -> None:
    det = AssetDetector(K, commission_rows=50, commission_seconds=200.0)
    x = machine(300, seed=3)
    slot = np.zeros(1, dtype=np.intp)
    for i in range(200):
        det.update(slot, x[i : i + 1], np.array([float(i)]))
    assert det.phase_of(slot)[0] == COMMISSIONING  # 50 rows, but 199 s
    det.update(slot, x[200:201], np.array([200.0]))
    assert det.phase_of(slot)[0] == MONITORING


def test_long_commissioning_keeps_rows_within_the_buffer() -> None:
    det = AssetDetector(K, commission_rows=1000, buffer=128)
    x = machine(1000, seed=4)
    slot = np.zeros(1, dtype=np.intp)
    for i in range(999):
        det.update(slot, x[i : i + 1])
        assert len(det.rows[0]) <= 128
    kept = det.rows[0]
    assert len(kept) >= 64
    # thinned evenly over the whole commissioning: the last kept row is a recent one
    assert np.isin(kept[-1], x[900:999]).all()
    det.update(slot, x[999:1000])
    assert det.phase_of(slot)[0] == MONITORING and 0 not in det.rows


def test_missing_sensor_is_missing_not_zero() -> None:
    x = machine(900, seed=5)
    gone = x[400:].copy()
    gone[:, 3] = np.nan
    _, alarms, contributions = score_rows("pca_mewma", x[:400], gone)
    assert alarms.mean() < 0.02
    assert (contributions[:, 3] == 0).all()
    zero = x[400:].copy()
    zero[:, 3] = 0.0
    _, alarms_zero, _ = score_rows("pca_mewma", x[:400], zero)
    assert alarms_zero.mean() > 0.95


def test_assets_in_one_call_score_as_each_alone() -> None:
    rows = [machine(700, seed=s, break_at=600 if s % 2 else None) for s in range(4)]
    together = AssetDetector(K)
    alone = [AssetDetector(K) for _ in rows]
    slots = np.arange(4, dtype=np.intp)
    one = np.zeros(1, dtype=np.intp)
    for i in range(700):
        batch = np.stack([r[i] for r in rows])
        out = together.update(slots, batch)
        for j, det in enumerate(alone):
            single = det.update(one, rows[j][i : i + 1])
            np.testing.assert_allclose(out.score[j], single.score[0], equal_nan=True)
            assert out.alarm[j] == single.alarm[0]
    assert together.alarms.active[[1, 3]].all() and not together.alarms.active[[0, 2]].any()


def test_adaptation_follows_slow_drift_and_freezes_during_an_alarm() -> None:
    det = AssetDetector(K, commission_rows=400)
    x = machine(3000, seed=6)
    slot = np.zeros(1, dtype=np.intp)
    for i in range(400):
        det.update(slot, x[i : i + 1])
    before = det.state["center"][0].copy()
    drift = x[400:].copy()
    drift[:, 5] += np.linspace(0, 1.0, len(drift))  # sensor 5 drifts slowly (20 noise sd)
    alarms = [bool(det.update(slot, drift[i : i + 1]).alarm[0]) for i in range(len(drift))]
    assert np.mean(alarms) < 0.02
    assert det.state["center"][0][5] - before[5] > 0.5
    # a fault: everything that moved stays put while the alarm is active
    frozen = det.state["center"][0].copy(), det.state["cov"][0].copy()
    fault = machine(200, seed=7)
    fault[:, 2] += 3.0
    out = [det.update(slot, fault[i : i + 1]) for i in range(200)]
    assert all(o.alarm[0] for o in out[10:])
    np.testing.assert_array_equal(det.state["center"][0], frozen[0])
    np.testing.assert_array_equal(det.state["cov"][0], frozen[1])


def test_state_survives_a_state_file(tmp_path: Path) -> None:
    x = machine(900, seed=8, break_at=800)
    a = AssetDetector(K)
    slots = np.array([0, 3], dtype=np.intp)
    for i in range(600):
        a.update(slots, np.stack([x[i], x[i] * 1.01]))
    b = AssetDetector(K)
    statefile.dump(tmp_path / "s.mqas", {"asset": a.state_dict()})
    b.load_state_dict(statefile.load(tmp_path / "s.mqas")["asset"])
    for i in range(600, 900):
        batch = np.stack([x[i], x[i] * 1.01])
        oa, ob = a.update(slots, batch), b.update(slots, batch)
        np.testing.assert_array_equal(oa.score, ob.score)
        np.testing.assert_array_equal(oa.alarm, ob.alarm)
    # mid-commissioning state (the kept rows) round-trips too
    c = AssetDetector(K)
    for i in range(100):
        c.update(slots[:1], x[i : i + 1])
    d = AssetDetector(K)
    statefile.dump(tmp_path / "c.mqas", {"asset": c.state_dict()})
    d.load_state_dict(statefile.load(tmp_path / "c.mqas")["asset"])
    np.testing.assert_array_equal(d.rows[0], c.rows[0])


def test_state_of_another_configuration_is_refused() -> None:
    a = AssetDetector(K)
    a.update(np.zeros(1, dtype=np.intp), machine(1, seed=9))
    with pytest.raises(ValueError, match="saved state is for"):
        AssetDetector(K, lam=0.2).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="saved state is for"):
        AssetDetector(K + 1).load_state_dict(a.state_dict())


def test_state_per_asset_within_budget() -> None:
    det = AssetDetector(8)
    assert det.bytes_per_asset() <= 2048
    det.reserve(600)
    det.update(np.arange(1000, dtype=np.intp), np.ones((1000, 8)))
    assert det.capacity == 1200  # grown by doubling, saved as far as used
    saved = det.state_dict()
    total = sum(a.nbytes for a in saved["arrays"].values())
    total += sum(a.nbytes for a in saved["alarms"].values())
    assert total / 1000 == det.bytes_per_asset()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "nope"}, "method must be one of"),
        ({"commission_rows": 3}, "commission_rows"),
        ({"alarm_k": 6, "alarm_n": 5}, "alarm"),
        ({"quantile": 1.5}, "quantile"),
    ],
)
def test_bad_parameters_are_one_line_errors(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AssetDetector(K, **params)  # type: ignore[arg-type]


def test_score_rows_checks_its_input() -> None:
    x = machine(500, seed=10)
    with pytest.raises(ValueError, match="unknown multivariate detector"):
        score_rows("nope", x[:400], x[400:])
    with pytest.raises(ValueError, match="equal width"):
        score_rows("pca", x[:400], x[400:, :3])

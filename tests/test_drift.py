"""Drift and model health (``drift.py``) through the pipeline: a sensor whose readings change
character is flagged stale, a steady one is not; the books survive a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mqtt_anomaly import statefile
from mqtt_anomaly.config import Settings, load_settings
from mqtt_anomaly.drift import BINS, DriftBook, Reference
from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.messages import Reading
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.web.metrics import METRIC_NAMES

from .helpers import eventually
from .mosquitto import Mosquitto
from .test_web import Served, feed, scrape, web_settings

T0 = 1.7e9
DRIFT = {"warmup": 50, "min_readings": 300, "window": 200}
KINDS = ("steady", "square", "spiky")


def value(kind: str, k: int, rng: np.random.Generator, shift_at: int) -> float:
    """``steady``: noise around 20 throughout; from ``shift_at`` on, ``square`` alternates
    between two levels (another shape, same mean and spread) and ``spiky`` has a large
    spike in 5 % of its readings."""
    v = 20.0 + rng.normal(0, 0.5)
    if k >= shift_at and kind == "square":
        v = 20.0 + (0.5 if k % 2 else -0.5) + rng.normal(0, 0.05)
    elif k >= shift_at and kind == "spiky" and rng.random() < 0.05:
        v += 6.0 * rng.choice([-1.0, 1.0])
    return float(v)


def run(pl: Pipeline, start: int, stop: int, shift_at: int, seed: int = 3) -> None:
    rng = np.random.default_rng(seed + start)
    for k in range(start, stop):
        readings = [
            Reading(kind, T0 + k, value(kind, k, rng, shift_at), "C", k + 1) for kind in KINDS
        ]
        pl.score_readings(readings, T0 + k)


def pipeline(**drift: object) -> Pipeline:
    return Pipeline(load_settings(None, {"drift": {**DRIFT, **drift}}))


def health(pl: Pipeline, now: float) -> dict[str, tuple[bool, list[str], float]]:
    r = pl.drift.report(now, len(pl.sensor_ids))
    return {
        sid: (bool(r.stale[slot]), r.reasons(slot), float(r.drift[slot]))
        for sid, slot in pl.sensors.items()
    }


def test_a_sensor_whose_scores_shift_is_stale_a_steady_one_is_not() -> None:
    pl = pipeline()
    run(pl, 0, 1000, shift_at=1000)  # all steady: commissioned, none stale
    before = health(pl, T0 + 1000)
    assert {sid: h[0] for sid, h in before.items()} == dict.fromkeys(KINDS, False)
    assert all(h[2] < 0.1 for h in before.values())
    r = pl.drift.report(T0 + 1000, 3)
    assert r.commissioned.all()
    assert np.allclose(r.age, 1000 - 349)  # frozen at the 350th reading (warmup + min_readings)
    assert np.allclose(r.learning_age, 1000)
    run(pl, 1000, 2000, shift_at=1000)
    after = health(pl, T0 + 2000)
    assert after["steady"][0] is False and after["steady"][2] < 0.1
    assert after["square"][0] is True and "drift" in after["square"][1]
    assert after["square"][2] > 1.0
    assert after["spiky"][0] is True and "alerts" in after["spiky"][1]
    r = pl.drift.report(T0 + 2000, 3)
    spiky = pl.sensors["spiky"]
    assert r.alert_rate[spiky] > 0.02 > r.reference_alert_rate[spiky]


def test_a_sensor_still_learning_is_never_stale_and_max_age_makes_stale() -> None:
    pl = pipeline(max_age=500)
    run(pl, 0, 200, shift_at=0)  # shifted from the start: that is its reference
    r = pl.drift.report(T0 + 200, 3)
    assert not r.commissioned.any() and not r.stale.any() and np.isnan(r.drift).all()
    run(pl, 200, 800, shift_at=0)
    r = pl.drift.report(T0 + 800, 3)
    assert not r.stale_drift.any()  # the same all along
    assert not r.stale_age.any()  # commissioned 450 s ago
    r = pl.drift.report(T0 + 900, 3)
    assert r.stale_age.all() and r.reasons(0) == ["age"]


def test_drift_state_survives_a_restart_and_old_state_still_loads(tmp_path: Path) -> None:
    pl = pipeline()
    run(pl, 0, 1400, shift_at=1000)
    path = tmp_path / "state.bin"
    statefile.dump(path, pl.state_dict(), sync=False)
    restored = pipeline()
    assert restored.load_state_dict(statefile.load(path)) == []
    a, b = pl.drift.report(T0 + 1400, 3), restored.drift.report(T0 + 1400, 3)
    assert np.allclose(a.drift, b.drift) and (a.stale == b.stale).all()
    assert b.stale[restored.sensors["square"]]
    assert restored.drift.learning == 0
    run(restored, 1400, 1500, shift_at=1000)  # goes on from there
    run(pl, 1400, 1500, shift_at=1000)
    a, b = pl.drift.report(T0 + 1500, 3), restored.drift.report(T0 + 1500, 3)
    assert np.allclose(a.drift, b.drift)
    # state saved before drift was kept: loads, every sensor learns its reference again
    old = pl.state_dict()
    del old["drift"]
    fresh = pipeline()
    assert fresh.load_state_dict(old) == []
    assert fresh.drift.learning == 3
    assert fresh.drift.report(T0 + 1500, 3).learning == 3
    # drift state of other bins: refused, the rest loads, drift learns again
    other = pl.state_dict()
    other["drift"]["edges"] = [0.5]
    again = pipeline()
    assert again.load_state_dict(other) == ["drift"]
    assert again.drift.learning == 3


def test_evicted_slot_learns_again_and_a_reference_seeds_a_slot() -> None:
    pl = Pipeline(
        load_settings(None, {"drift": DRIFT, "service": {"max_sensors": 3, "evict_after": 10}})
    )
    run(pl, 0, 400, shift_at=400)
    assert pl.drift.learning == 0
    ref = pl.drift.reference(pl.sensors["steady"])
    assert ref is not None and sum(ref.counts) == 300 and len(ref.counts) == BINS
    assert Reference.from_json(ref.as_json()) == ref
    late = T0 + 1000
    pl.score_readings([Reading("newcomer", late, 20.0, "C", 1)], late)  # evicts one
    slot = pl.sensors["newcomer"]
    assert pl.drift.learning == 1 and pl.drift.reference(slot) is None
    pl.drift.seed(slot, ref)  # a model loaded for it brings its reference
    assert pl.drift.learning == 0 and pl.drift.reference(slot) == ref
    for bad in ({**ref.as_json(), "edges": [1]}, {**ref.as_json(), "counts": [-1] * BINS}):
        with pytest.raises(ValueError, match="drift reference"):
            Reference.from_json(bad)


def test_weights_are_rebased_far_into_a_sensor_s_life() -> None:
    book = DriftBook(load_settings(None, {"drift": {**DRIFT, "window": 100}}).drift)
    book.admit(0)
    slots = np.zeros(1, dtype=np.intp)
    rng = np.random.default_rng(0)
    for t in range(80_000):  # 800 windows: exp(t / window) would overflow long before (e^88)
        book.update(slots, rng.uniform(0, 0.05, 1), np.array([T0 + t]))
    assert book.t0 > T0
    r = book.report(T0 + 80_000, 1)
    assert np.isfinite(book.recent[0]).all() and r.drift[0] < 0.25 and not r.stale[0]


@pytest.mark.parametrize(
    ("key", "bad", "message"),
    [
        ("window", 0, "drift.window: Input should be greater than or equal to 1"),
        ("min_readings", 10, "drift.min_readings: Input should be greater than or equal to 50"),
        ("threshold", -1, "drift.threshold: Input should be greater than 0"),
        ("max_age", "soon", "drift.max_age: Input should be a valid number"),
        ("typo", 1, "drift.typo: unknown setting"),
    ],
)
def test_drift_settings_are_checked(key: str, bad: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"drift": {key: bad}})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ---- REST, metrics -------------------------------------------------------------------------
WEB_DRIFT = {"warmup": 40, "min_readings": 100, "window": 100_000}  # no decay within a test


def web_drift_settings(broker: Mosquitto, tmp_path: Path) -> Settings:
    base = web_settings(broker, tmp_path).model_dump()
    return load_settings(None, {**base, "drift": WEB_DRIFT})


def fleet_values(seed: int = 5) -> dict[str, list[float]]:
    """Two sensors, the same for 140 readings (warm-up and reference); then ``W-square``
    alternates between two levels while ``W-steady`` goes on as before."""
    rng = np.random.default_rng(seed)
    steady = [float(20 + rng.normal(0, 0.5)) for _ in range(440)]
    square = [float(20 + rng.normal(0, 0.5)) for _ in range(140)]
    square += [20.0 + (0.5 if k % 2 else -0.5) for k in range(300)]
    return {"W-steady": steady, "W-square": square}


async def test_models_health_rest_and_metrics(shared_mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with Served(web_drift_settings(shared_mosquitto, tmp_path)) as srv, srv.client() as http:
        page = (await http.get("/api/models/health")).json()
        assert page == {
            "total": 0, "sensors": 0, "stale": 0, "learning": 0, "threshold": 0.25,
            "offset": 0, "items": [],
        }  # fmt: skip
        for sid, values in fleet_values().items():
            await feed(shared_mosquitto.url, sid, values)
        pl = srv.service.pipeline
        await eventually(lambda: pl.counters.processed == 880, what="readings processed")

        page = (await http.get("/api/models/health")).json()
        assert (page["total"], page["sensors"], page["stale"], page["learning"]) == (2, 2, 1, 0)
        first, second = page["items"]  # the most drifted first
        assert first["sensor_id"] == "W-square" and first["stale"] is True
        assert first["reasons"] == ["drift"] and first["drift"] > 0.25 and first["ks"] > 0.2
        assert first["phase"] == "monitoring" and first["age"] >= 0
        assert second["sensor_id"] == "W-steady" and second["stale"] is False
        assert second["drift"] < 0.25 and second["reasons"] == []
        assert 0 <= second["alert_rate"] <= 0.01
        only = (await http.get("/api/models/health", params={"stale": "false"})).json()
        assert [m["sensor_id"] for m in only["items"]] == ["W-steady"] and only["total"] == 1
        named = (
            await http.get(
                "/api/models/health", params={"sort": "sensor_id", "desc": "false", "limit": 1}
            )
        ).json()
        assert [m["sensor_id"] for m in named["items"]] == ["W-square"] and named["total"] == 2
        found = (await http.get("/api/models/health", params={"q": "SQUARE"})).json()
        assert [m["sensor_id"] for m in found["items"]] == ["W-square"] and found["total"] == 1
        none = (await http.get("/api/models/health", params={"q": "x", "stale": "true"})).json()
        assert none["items"] == [] and none["total"] == 0 and none["stale"] == 1
        nxt = (await http.get("/api/models/health", params={"offset": 1, "limit": 1})).json()
        assert [m["sensor_id"] for m in nxt["items"]] == ["W-steady"]
        for bad in (
            {"sort": "nope"},
            {"limit": 0},
            {"limit": 5001},
            {"offset": -1},
            {"q": "x" * 129},
        ):
            assert (await http.get("/api/models/health", params=bad)).status_code == 422

        metrics = scrape((await http.get("/metrics")).text)
        assert metrics['mqtt_anomaly_models_stale{reason="any"}'] == 1
        assert metrics['mqtt_anomaly_models_stale{reason="drift"}'] == 1
        assert metrics['mqtt_anomaly_models_stale{reason="age"}'] == 0
        assert metrics["mqtt_anomaly_models_learning"] == 0
        assert metrics['mqtt_anomaly_model_drift{quantile="1.0"}'] == pytest.approx(
            first["drift"], rel=1e-4
        )
        assert metrics['mqtt_anomaly_model_drift{quantile="0.5"}'] < first["drift"]
        top = 'mqtt_anomaly_model_drift_top{rank="1",sensor_id="W-square"}'
        assert metrics[top] == pytest.approx(first["drift"], rel=1e-4)
        assert {k for k in metrics if "drift_top" in k} == {
            top,
            'mqtt_anomaly_model_drift_top{rank="2",sensor_id="W-steady"}',
        }
        names = {k.partition("{")[0] for k in metrics}
        assert {n for n in names if "model" in n} <= METRIC_NAMES


def test_a_model_carries_the_references_and_a_pipeline_loading_it_compares_with_them() -> None:
    from mqtt_anomaly.models.format import model_state

    trained = pipeline()
    run(trained, 0, 800, shift_at=800)  # the training period: all steady
    state = model_state(trained.state_dict())
    assert not state["drift"]["arrays"]["recent"].any()
    loaded = pipeline()
    assert loaded.load_state_dict(state) == []
    assert loaded.drift.learning == 0
    for sid, slot in loaded.sensors.items():
        assert loaded.drift.reference(slot) == trained.drift.reference(trained.sensors[sid])
    r = loaded.drift.report(T0 + 800, 3)
    assert r.commissioned.all() and np.isnan(r.drift).all() and not r.stale.any()
    run(loaded, 800, 1600, shift_at=800)  # in service, the square sensor changes
    after = health(loaded, T0 + 1600)
    assert after["square"][0] and not after["steady"][0]


def test_a_reload_that_changes_the_detectors_relearns_the_references_or_takes_a_model_s() -> None:
    from mqtt_anomaly.models.format import model_state
    from mqtt_anomaly.swap import swap_detection

    other = {"drift": DRIFT, "detector": {"params": {"zscore": {"z_alert": 4.0}}}}
    pl = pipeline()
    run(pl, 0, 800, shift_at=800)
    before = {sid: pl.drift.reference(slot) for sid, slot in pl.sensors.items()}
    res = swap_detection(pl, load_settings(None, {"drift": DRIFT}))  # the same detectors
    assert res.changed == [] and pl.drift.learning == 0
    assert {sid: pl.drift.reference(slot) for sid, slot in pl.sensors.items()} == before
    res = swap_detection(pl, load_settings(None, other))
    assert res.changed == ["zscore"] and pl.drift.learning == 3
    assert pl.drift.report(T0 + 800, 3).learning == 3
    run(pl, 800, 1200, shift_at=2000)
    assert pl.drift.learning == 0  # learned again with the new scores

    trained = Pipeline(load_settings(None, other))  # a model trained with those settings
    run(trained, 0, 800, shift_at=800, seed=9)
    served = pipeline()
    run(served, 0, 100, shift_at=800)
    res = swap_detection(served, load_settings(None, other), model_state(trained.state_dict()))
    assert res.changed == ["zscore"] and served.drift.learning == 0
    for sid, slot in served.sensors.items():
        assert served.drift.reference(slot) == trained.drift.reference(trained.sensors[sid])


def test_a_bad_drift_setting_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    config = tmp_path / "c.toml"
    config.write_text("[drift]\nthreshold = 0.3\nmax_age = 86400\n")
    run_cli = [sys.executable, "-m", "mqtt_anomaly", "config", "show", "--config", str(config)]
    ok = subprocess.run(run_cli, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "[drift]" in ok.stdout and "threshold = 0.3" in ok.stdout
    env = {**os.environ, "MQTT_ANOMALY_DRIFT__WINDOW": "0"}
    bad = subprocess.run(run_cli, capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0
    assert "drift.window: Input should be greater than or equal to 1" in bad.stderr


async def test_model_health_survives_a_service_restart(
    shared_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = web_drift_settings(shared_mosquitto, tmp_path)
    async with Served(settings) as srv, srv.client() as http:
        for sid, values in fleet_values(seed=8).items():
            await feed(shared_mosquitto.url, sid, values)
        pl = srv.service.pipeline
        await eventually(lambda: pl.counters.processed == 880, what="readings processed")
        before = (await http.get("/api/models/health", params={"sort": "sensor_id"})).json()
    assert before["stale"] == 1 and before["learning"] == 0
    async with Served(settings) as srv, srv.client() as http:  # the same state dir
        after = (await http.get("/api/models/health", params={"sort": "sensor_id"})).json()
    assert (after["stale"], after["learning"], after["total"]) == (1, 0, 2)
    for a, b in zip(before["items"], after["items"], strict=True):
        assert (a["sensor_id"], a["stale"], a["reasons"]) == (
            b["sensor_id"],
            b["stale"],
            b["reasons"],
        )
        assert a["drift"] == pytest.approx(b["drift"], rel=1e-5)


def test_drift_state_out_of_range_is_refused_and_the_rest_loads() -> None:
    pl = pipeline()
    run(pl, 0, 400, shift_at=400)
    for name, bad in (("scored", 2**40), ("scored", -5), ("ref", -1.0), ("recent", np.inf)):
        state = pl.state_dict()
        arrays = state["drift"]["arrays"]
        a = arrays[name].astype(np.float64 if name != "scored" else np.int64)
        a[0] = bad
        arrays[name] = a
        again = pipeline()
        assert again.load_state_dict(state) == ["drift"], name
        assert again.drift.learning == 3 and len(again.sensor_ids) == 3

"""The sensor table (eviction of silent sensors, the allowlist) and seq conflicts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.pipeline import SEQ_VALUES, Output, Pipeline
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.web.metrics import ServiceMetrics

from .helpers import Observer, eventually, reading_payload
from .mosquitto import Mosquitto
from .test_service import Running, publisher

T0 = 1_800_000_000.0
Message = tuple[str, bytes, float]


def reading(sid: str, value: float, seq: int, at: float) -> Message:
    payload = msgspec.json.encode({"ts": at, "value": value, "unit": "C", "seq": seq})
    return (f"factory/{sid}/temperature", payload, at)


def series(
    sid: str, mean: float, n: int, start: float, seq0: int = 0, seed: int = 0
) -> list[Message]:
    rng = np.random.default_rng(seed)
    return [reading(sid, mean + rng.normal(0, 0.3), seq0 + i, start + i) for i in range(n)]


def pipeline(**service: Any) -> Pipeline:
    return Pipeline(load_settings(None, {"service": service}))


def raised(out: Output) -> list[tuple[str, str]]:
    return [(a.sensor_id, a.detector) for a in out.alerts if a.state == "raised"]


# ---- eviction ----------------------------------------------------------------------------
def test_new_sensor_takes_the_slot_of_the_longest_silent_one_and_starts_fresh() -> None:
    pipe = pipeline(max_sensors=3, evict_after=600)
    pipe.process(series("HOT", 1000.0, 200, T0))  # learns a mean of 1000 (and alerts on it)
    pipe.process(series("B", 25.0, 200, T0 + 100, seed=1))
    pipe.process(series("C", 25.0, 200, T0 + 200, seed=2))
    hot = pipe.sensors["HOT"]
    assert pipe.health[hot] == "anomalous"
    later = T0 + 1200  # HOT silent ~1000 s, B ~900 s, C ~800 s: all over evict_after
    out = pipe.process(series("NEW", 25.0, 60, later, seed=3))
    assert out.evicted == ["HOT"] and "NEW" in out.new_sensors
    assert pipe.sensors["NEW"] == hot and "HOT" not in pipe.sensors
    assert pipe.sensor_ids[hot] == "NEW" and "factory/HOT/temperature" not in pipe._reading_topics
    # HOT's active alert is closed, NEW learns from nothing: no alert for its normal values,
    # and its seqs 0..59 are new (HOT had sent 0..199)
    cleared = [(a.sensor_id, a.detector) for a in out.alerts if a.state == "cleared"]
    assert ("HOT", "threshold") in cleared
    assert raised(out) == []
    assert pipe.counters.processed == 660 and pipe.counters.duplicates == 0
    assert pipe.health[hot] == "ok"
    assert pipe.counters.sensors_evicted == 1
    # the next one takes B's slot (the longest silent left), then HOT is new again: C's
    b_slot = pipe.sensors["B"]
    out = pipe.process([reading("NEW2", 25.0, 0, later + 60), reading("HOT", 25.0, 0, later + 61)])
    assert out.evicted == ["B", "C"]
    assert pipe.sensors["NEW2"] == b_slot and set(pipe.sensors) == {"NEW", "NEW2", "HOT"}


def test_full_table_of_active_sensors_still_rejects() -> None:
    pipe = pipeline(max_sensors=3, evict_after=600)
    for k, sid in enumerate(("A", "B", "C")):
        pipe.process(series(sid, 25.0, 5, T0 + k))
    out = pipe.process([reading("NEW", 25.0, 0, T0 + 599)])  # every one heard 600 s ago or less
    assert [d.reason for d in out.dead] == ["sensor_limit"]
    assert "evict_after = 600" in out.dead[0].detail
    assert out.evicted == [] and "NEW" not in pipe.sensors
    assert pipe.counters.sensors_rejected == 1 and pipe.counters.sensors_evicted == 0
    # status counts as activity: A stays; B (silent longest) goes
    pipe.process([("factory/A/status", b"online", T0 + 650)])
    out = pipe.process([reading("NEW", 25.0, 0, T0 + 1000)])
    assert out.evicted == ["B"]
    out = pipe.process([reading("NEW3", 25.0, 0, T0 + 1000.5)])
    assert out.evicted == ["C"]
    out = pipe.process([reading("NEW4", 25.0, 0, T0 + 1001)])  # A: 351 s, the rest: new
    assert [d.reason for d in out.dead] == ["sensor_limit"]


def test_reading_in_the_same_batch_keeps_a_sensor() -> None:
    pipe = pipeline(max_sensors=2, evict_after=60)
    pipe.process(series("A", 25.0, 3, T0) + series("B", 25.0, 3, T0 + 10, seed=1))
    later = T0 + 1000
    out = pipe.process([reading("A", 25.0, 3, later), reading("NEW", 25.0, 0, later)])
    assert out.evicted == ["B"]  # A is older but was heard earlier in this batch
    assert pipe.sensors["A"] != pipe.sensors["NEW"]


def test_eviction_works_after_a_restart() -> None:
    a = pipeline(max_sensors=2, evict_after=600)
    a.process(series("A", 25.0, 5, T0) + series("B", 25.0, 5, T0 + 300, seed=1))
    b = pipeline(max_sensors=2, evict_after=600)
    assert b.load_state_dict(a.state_dict()) == []
    assert np.isnan(b.last_seen[:2]).all()  # silence detection starts again after a restart
    out = b.process([reading("NEW", 25.0, 0, T0 + 700)])  # A silent for 700 s, B for 400 s
    assert out.evicted == ["A"]
    assert b.sensors == {"NEW": 0, "B": 1}


def test_flood_against_a_full_table_scans_at_most_once_a_second() -> None:
    cap = 20_000
    pipe = pipeline(max_sensors=cap, evict_after=600)
    pipe.process([reading(f"OLD-{i}", 25.0, 0, T0) for i in range(cap)])
    scans = 0
    scan = pipe._scan

    def counted(now: float, limit: float) -> None:
        nonlocal scans
        scans += 1
        scan(now, limit)

    pipe._scan = counted  # type: ignore[method-assign]
    # 100,000 invented ids within 5 s, all heard now: none can be evicted
    for b in range(100):
        at = T0 + 100 + b * 0.05
        pipe.process([reading(f"FLOOD-{b}-{i}", 25.0, 0, at) for i in range(1000)])
    assert pipe.counters.sensors_rejected == 100_000 and pipe.counters.sensors_evicted == 0
    assert scans <= 6
    # 1,000 s later every one is silent: 20,000 new ids evict the old ones, oldest first
    scans = 0
    for b in range(20):
        at = T0 + 1000 + b * 0.01
        out = pipe.process([reading(f"NEW-{b}-{i}", 25.0, 0, at) for i in range(1000)])
        assert len(out.evicted) == 1000 and not out.dead
    assert scans <= 3
    assert len(pipe.sensor_ids) == cap and len(pipe._reading_topics) == cap
    assert all(sid.startswith("NEW-") for sid in pipe.sensor_ids)


# ---- allowlist ---------------------------------------------------------------------------
def test_sensor_pattern_allowlist() -> None:
    pipe = pipeline(sensor_pattern=r"SENSOR-\d{2}")
    out = pipe.process(
        [
            reading("SENSOR-01", 25.0, 0, T0),
            reading("EVIL-1", 25.0, 0, T0),
            reading("SENSOR-011", 25.0, 0, T0),  # the whole id must match
            ("factory/EVIL-2/status", b"offline", T0),
            ("factory/SENSOR-02/status", b"offline", T0),
        ]
    )
    assert [d.reason for d in out.dead] == ["sensor_not_allowed"] * 3
    assert [d.topic for d in out.dead][2] == "factory/EVIL-2/status"
    assert pipe.sensor_ids == ["SENSOR-01", "SENSOR-02"]
    assert out.health == [("SENSOR-02", "offline")]
    assert pipe.counters.sensors_rejected == 3
    assert [r.sensor_id for r in out.readings] == ["SENSOR-01"]


def test_bad_sensor_pattern_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^service\.sensor_pattern: not a valid regular"):
        load_settings(None, {"service": {"sensor_pattern": "SENSOR-(["}})
    with pytest.raises(ConfigError, match=r"^service\.evict_after: "):
        load_settings(None, {"service": {"evict_after": 0}})


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_ANOMALY_SERVICE__EVICT_AFTER", "90")
    monkeypatch.setenv("MQTT_ANOMALY_SERVICE__SENSOR_PATTERN", "S[0-9]+")
    s = load_settings()
    assert s.service.evict_after == 90.0 and s.service.sensor_pattern == "S[0-9]+"


# ---- seq conflicts -----------------------------------------------------------------------
def test_seq_conflict_is_a_dead_letter_same_value_a_duplicate() -> None:
    pipe = pipeline()
    first = series("S1", 25.0, 50, T0)
    pipe.process(first)
    out = pipe.process([first[45], reading("S1", 98.2, 45, T0 + 45)])
    assert pipe.counters.duplicates == 1 and pipe.counters.seq_conflicts == 1
    assert [d.reason for d in out.dead] == ["seq_conflict"]
    value = msgspec.json.decode(first[45][1])["value"]
    assert out.dead[0].detail == f"seq 45: first value {value!r}, now 98.2"
    assert out.alerts == [] and out.readings == []  # the spike behind an old seq is not scored
    assert pipe.counters.dead_by_reason == {"seq_conflict": 1}


def test_seq_conflict_within_one_batch_and_for_late_readings() -> None:
    pipe = pipeline()
    out = pipe.process(
        series("S1", 25.0, 10, T0)
        + [reading("S1", 25.0, 10, T0 + 10), reading("S1", 99.0, 10, T0 + 10.5)]
        + [reading("S1", 25.0, 15, T0 + 15), reading("S1", 25.5, 12, T0 + 16)]  # 12 is late
        + [reading("S1", 26.0, 12, T0 + 17)]
    )
    assert [d.detail for d in out.dead] == [
        "seq 10: first value 25.0, now 99.0",
        "seq 12: first value 25.5, now 26.0",
    ]
    out = pipe.process([reading("S1", 27.0, 12, T0 + 18), reading("S1", 25.5, 12, T0 + 18)])
    assert [d.detail for d in out.dead] == ["seq 12: first value 25.5, now 27.0"]
    assert pipe.counters.duplicates == 1 and pipe.counters.late == 1


def test_seq_older_than_the_value_ring_is_a_plain_duplicate() -> None:
    pipe = pipeline()
    pipe.process(series("S1", 25.0, 100, T0))
    out = pipe.process([reading("S1", 98.2, 99 - SEQ_VALUES, T0 + 200)])  # cannot be verified
    assert out.dead == [] and pipe.counters.duplicates == 1
    out = pipe.process([reading("S1", 98.2, 100 - SEQ_VALUES, T0 + 200)])  # the oldest kept
    assert [d.reason for d in out.dead] == ["seq_conflict"]


def test_seq_conflict_detected_after_a_restart() -> None:
    a = pipeline()
    msgs = series("S1", 25.0, 40, T0)
    a.process(msgs)
    b = pipeline()
    assert b.load_state_dict(a.state_dict()) == []
    out = b.process([msgs[39], reading("S1", 60.0, 38, T0 + 50)])
    assert b.counters.duplicates == 1 and b.counters.seq_conflicts == 1
    assert [d.reason for d in out.dead] == ["seq_conflict"]


def test_readings_without_seq_do_not_touch_the_ring() -> None:
    pipe = pipeline()
    pipe.process(series("S1", 25.0, 40, T0))
    pipe.process([("factory/S1/temperature", b"30.0", T0 + 41)])  # a bare number: no seq
    out = pipe.process([series("S1", 25.0, 40, T0)[31]])  # 31: where seq -1 would land
    assert out.dead == [] and pipe.counters.duplicates == 1


# ---- the service ------------------------------------------------------------------------
def service_settings(tmp_path: Path, url: str = "mqtt://127.0.0.1:1", **service: Any) -> Any:
    return load_settings(
        None,
        {
            "broker": {"url": url, "client_id": "sensor-table-test", "keepalive": 2},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state", **service},
        },
    )


def test_flood_of_invented_ids_logs_a_handful_of_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc = DetectorService(
        service_settings(tmp_path, max_sensors=1000, evict_after=60), console=False
    )
    with caplog.at_level(logging.INFO, logger="mqtt_anomaly"):
        svc._emit(svc.pipeline.process([reading(f"OLD-{i}", 25.0, 0, T0) for i in range(1000)]))
        for b in range(100):  # 100,000 invented ids: 1,000 evict the old ones, 99,000 refused
            at = T0 + 100 + b * 0.01
            batch = [reading(f"FLOOD-{b}-{i}", 25.0, 0, at) for i in range(1000)]
            svc._emit(svc.pipeline.process(batch))
    c = svc.pipeline.counters
    assert c.sensors_evicted == 1000 and c.sensors_rejected == 99_000
    lines = [r.getMessage() for r in caplog.records]
    evicted = [m for m in lines if "forgot" in m]
    refused = [m for m in lines if "sensor_limit" in m]
    assert 1 <= len(evicted) <= 3 and 1 <= len(refused) <= 3, lines
    assert len(lines) <= 6, lines
    assert "OLD-" in evicted[0] and "evict_after = 60s" in evicted[0]
    text = ServiceMetrics(svc).exposition().decode()
    assert "mqtt_anomaly_sensors_evicted_total 1000.0" in text
    assert "mqtt_anomaly_sensors_rejected_total 99000.0" in text
    assert "mqtt_anomaly_seq_conflicts_total 0.0" in text


def test_seq_conflict_metric(tmp_path: Path) -> None:
    svc = DetectorService(service_settings(tmp_path), console=False)
    svc._emit(svc.pipeline.process(series("S1", 25.0, 10, T0)))
    svc._emit(svc.pipeline.process([reading("S1", 98.2, 5, T0 + 11)]))
    text = ServiceMetrics(svc).exposition().decode()
    assert "mqtt_anomaly_seq_conflicts_total 1.0" in text
    assert 'mqtt_anomaly_dead_letters_total{reason="seq_conflict"} 1.0' in text


async def test_evicted_sensor_retained_health_cleared_on_the_broker(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    now = [T0]
    settings = service_settings(tmp_path, mosquitto.url, max_sensors=3, evict_after=60)
    health = [f"factory/{s}/health" for s in ("A", "B", "C", "D")]

    async def retained() -> dict[str, bytes]:
        """What a new subscriber gets for A..D; C's (sent last) marks the end of the burst."""
        async with Observer(mosquitto.url, health, client_id=f"late-{len(seen)}") as obs:
            await eventually(lambda: bool(obs.on("C/health")), what="retained health of C")
            seen.append(1)
            return {t.split("/")[1]: p for t, p, r, _ in obs.messages if r}

    seen: list[int] = []
    async with (
        Running(settings, clock=lambda: now[0]) as run,
        Observer(mosquitto.url, ["factory/+/alerts"]) as alerts,
        publisher(mosquitto.url) as pub,
    ):
        pipe = run.service.pipeline
        for k, sid in enumerate(("A", "B", "C")):
            now[0] = T0 + k
            pub.publish(f"factory/{sid}/temperature", reading_payload(sid, 98.2, 0, ts=T0 + k))
            await eventually(lambda n=k + 1: len(pipe.sensor_ids) == n, what=f"{sid} known")
        await eventually(lambda: run.service.client.pending == 0, what="health acknowledged")
        before = await retained()
        assert before == {"A": b"anomalous", "B": b"anomalous", "C": b"anomalous"}
        now[0] = T0 + 100  # all three silent for over 60 s: D takes A's slot
        pub.publish("factory/D/temperature", reading_payload("D", 25.0, 0, ts=T0 + 100))
        await eventually(lambda: pipe.counters.sensors_evicted == 1, what="A evicted")
        await eventually(lambda: run.service.client.pending == 0, what="clear acknowledged")
        after = await retained()
        assert after == {"B": b"anomalous", "C": b"anomalous"}
        assert pipe.sensor_ids == ["D", "B", "C"]
        await eventually(
            lambda: any(a["state"] == "cleared" for a in alerts.json("A/alerts")),
            what="A's alert cleared",
        )

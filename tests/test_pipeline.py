"""The processing core without a broker: decode, dedup, detect, alert, health, dead letters."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np
import pytest

from mqtt_anomaly import statefile
from mqtt_anomaly.config import load_settings
from mqtt_anomaly.messages import Reading
from mqtt_anomaly.pipeline import Output, Pipeline

T0 = 1_800_000_000.0


def reading(sid: str, value: float, seq: int, ts: float | None = None) -> tuple[str, bytes, float]:
    t = T0 + seq if ts is None else ts
    payload = msgspec.json.encode(
        {"sensor_id": sid, "ts": t, "value": value, "unit": "C", "seq": seq}
    )
    return (f"factory/{sid}/temperature", payload, t)


def normal(sid: str, n: int, start: int = 0, seed: int = 0) -> list[tuple[str, bytes, float]]:
    rng = np.random.default_rng(seed)
    return [reading(sid, 25 + rng.normal(0, 0.3), start + i) for i in range(n)]


@pytest.fixture
def pipe() -> Pipeline:
    return Pipeline(load_settings())


def raised(out: Output, detector: str | None = None) -> list[tuple[str, str, str]]:
    return [
        (a.sensor_id, a.detector, a.severity)
        for a in out.alerts
        if a.state == "raised" and (detector is None or a.detector == detector)
    ]


def test_spike_raises_critical_threshold_alert_then_clears(pipe: Pipeline) -> None:
    pipe.process(normal("S1", 50))
    out = pipe.process([reading("S1", 98.2, 50)])
    assert ("S1", "threshold", "critical") in raised(out)
    alert = next(a for a in out.alerts if a.detector == "threshold")
    assert alert.value == 98.2 and alert.threshold == 90.0 and alert.reading_ts == T0 + 50
    assert ("S1", "anomalous") in out.health
    out = pipe.process(normal("S1", 5, start=51, seed=1))
    cleared = [a for a in out.alerts if a.state == "cleared" and a.detector == "threshold"]
    assert len(cleared) == 1
    assert pipe.health[pipe.sensors["S1"]] in ("ok", "anomalous")  # zscore may clear later


def test_adaptive_detector_catches_fault_below_threshold(pipe: Pipeline) -> None:
    pipe.process(normal("S1", 200))
    out = pipe.process([reading("S1", 27.5, 200)])  # +2.5 °C (~8 sigma), far below 90
    assert raised(out, "zscore") == [("S1", "zscore", "warning")]
    assert raised(out, "threshold") == []


def test_stuck_sensor(pipe: Pipeline) -> None:
    pipe.process(normal("S1", 50))
    out = pipe.process([reading("S1", 24.0, 50 + i) for i in range(40)])
    assert raised(out, "stuck") == [("S1", "stuck", "warning")]


def test_no_false_alarm_on_normal_fleet(pipe: Pipeline) -> None:
    batch = [m for k in range(20) for m in normal(f"S{k}", 300, seed=k)]
    out = pipe.process(batch)
    assert out.alerts == []
    assert pipe.counters.processed == 6000


def test_duplicate_seq_dropped_and_not_rescored(pipe: Pipeline) -> None:
    msgs = normal("S1", 10)
    pipe.process(msgs)
    out = pipe.process(msgs[5:] + [reading("S1", 98.2, 10), reading("S1", 98.2, 10)])
    assert pipe.counters.duplicates == 6
    assert pipe.counters.processed == 11
    assert len(raised(out, "threshold")) == 1


def test_out_of_order_reading_stored_not_scored(pipe: Pipeline) -> None:
    pipe.process(normal("S1", 10))
    pipe.process([reading("S1", 25.0, 15)])
    out = pipe.process([reading("S1", 99.0, 12)])  # late, and anomalous: stored, not scored
    assert pipe.counters.late == 1
    assert [r.seq for r in out.readings] == [12]
    assert out.alerts == []


def test_sequence_restart_accepted_stale_dropped(pipe: Pipeline) -> None:
    pipe.process(normal("S1", 10, start=50_000))
    pipe.process([reading("S1", 25.0, 30_000)])  # far behind, not a restart: stale
    assert pipe.counters.stale == 1
    pipe.process([reading("S1", 25.0, 0), reading("S1", 25.0, 1)])  # counter restarted
    assert pipe.counters.processed == 12


def test_readings_of_one_sensor_in_one_batch_keep_their_order(pipe: Pipeline) -> None:
    # 40 identical readings in one batch: the stuck run must count them in order
    out = pipe.process(normal("S1", 5) + [reading("S1", 24.0, 5 + i) for i in range(40)])
    assert raised(out, "stuck") == [("S1", "stuck", "warning")]
    assert [r.seq for r in out.readings] == list(range(45))


def test_bare_numeric_payload(pipe: Pipeline) -> None:
    out = pipe.process([("factory/S9/temperature", b"98.2", T0)])
    assert raised(out, "threshold") == [("S9", "threshold", "critical")]
    assert out.readings[0].ts == T0


HOSTILE = [
    (b"hello", "not_json"),
    (b"{", "not_json"),
    (b'{"value": "hot"}', "invalid_field"),
    (b'{"value": NaN}', "not_json"),
    (b'{"value": 1e999}', "invalid_field"),
    (b"inf", "non_finite"),
    (b'{"ts": 1}', "invalid_field"),
    (b'{"value": 1, "sensor_id": "OTHER"}', "sensor_mismatch"),
    (b'{"value": 1, "ts', "not_json"),
    (b'{"value": 1, "seq": -1}', "invalid_field"),
    (b'{"value": 1, "ts": 5}', "bad_timestamp"),
    (b"", "empty"),
    (b"\xff\xfe\x00", "not_json"),
    (b'{"value": 1, "pad": "' + b"x" * 5000 + b'"}', "oversized"),
    (b"[1, 2]", "invalid_field"),
]


@pytest.mark.parametrize(("payload", "reason"), HOSTILE)
def test_hostile_payload_dead_lettered_and_detection_goes_on(
    pipe: Pipeline, payload: bytes, reason: str
) -> None:
    out = pipe.process([("factory/S1/temperature", payload, T0)])
    assert [d.reason for d in out.dead] == [reason]
    assert out.dead[0].payload_size == len(payload)
    assert pipe.counters.dead_by_reason == {reason: 1}
    out = pipe.process([reading("S1", 98.2, 1)])
    assert raised(out, "threshold") == [("S1", "threshold", "critical")]


def test_unexpected_topic_and_bad_status(pipe: Pipeline) -> None:
    out = pipe.process(
        [
            ("factory/S1/humidity", b"1", T0),
            ("factory/a/b/temperature", b"1", T0),
            ("factory/S1/status", b"exploded", T0),
        ]
    )
    assert [d.reason for d in out.dead] == ["unexpected_topic", "unexpected_topic", "bad_status"]


def test_sensor_cap(pipe: Pipeline) -> None:
    capped = Pipeline(load_settings(None, {"service": {"max_sensors": 3}}))
    out = capped.process([reading(f"S{i}", 25.0, 0) for i in range(5)])
    assert len(capped.sensor_ids) == 3
    assert [d.reason for d in out.dead] == ["sensor_limit", "sensor_limit"]


def test_offline_from_last_will_and_back(pipe: Pipeline) -> None:
    pipe.process(normal("S1", 5))
    out = pipe.process([("factory/S1/status", b"offline", T0 + 10)])
    assert raised(out) == [("S1", "offline", "critical")]
    assert out.health == [("S1", "offline")]
    out = pipe.process([("factory/S1/status", b"online", T0 + 20)])
    assert [a.state for a in out.alerts] == ["cleared"]
    assert out.health == [("S1", "ok")]


def test_silence_raised_and_cleared(pipe: Pipeline) -> None:
    pipe.process(normal("S1", 20) + normal("S2", 20))
    out = pipe.check_silence(T0 + 19 + 2)
    assert out.alerts == []
    pipe.process([reading("S2", 25.0, 20, ts=T0 + 24)])
    out = pipe.check_silence(T0 + 19 + 6)  # S1 silent for 6 s > 5 × 1 s
    assert raised(out) == [("S1", "silence", "warning")]
    assert out.health == [("S1", "silent")]  # only the silence alert: silent, not anomalous
    pipe.process([reading("S1", 25.0, 20, ts=T0 + 26)])
    out = pipe.check_silence(T0 + 26.5)
    assert [(a.sensor_id, a.state) for a in out.alerts] == [("S1", "cleared")]
    assert out.health == [("S1", "ok")]


def test_state_round_trip_continues_identically() -> None:
    a = Pipeline(load_settings())
    a.process(normal("S1", 100) + normal("S2", 100, seed=3))
    b = Pipeline(load_settings())
    assert b.load_state_dict(a.state_dict()) == []
    tail = normal("S1", 50, start=100, seed=9) + [reading("S2", 33.0, 100)]
    out_a, out_b = a.process(tail), b.process(tail)
    assert out_a.alerts == out_b.alerts and len(out_a.alerts) > 0
    for det_a, det_b in zip(a.detectors, b.detectors, strict=True):
        for k, v in det_a.state.items():
            np.testing.assert_array_equal(v[:2], det_b.state[k][:2])
    # a redelivered reading is still a duplicate after restore
    b.process([tail[20]])
    assert b.counters.duplicates == 1


def test_state_of_other_configuration_is_relearned() -> None:
    a = Pipeline(load_settings())
    a.process(normal("S1", 100))
    b = Pipeline(load_settings(None, {"detector": {"params": {"zscore": {"alpha": 0.1}}}}))
    assert b.load_state_dict(a.state_dict()) == ["zscore"]


def test_no_exception_escapes_for_any_bytes(pipe: Pipeline) -> None:
    rng = np.random.default_rng(1)
    batch = [
        ("factory/S1/temperature", rng.bytes(int(rng.integers(0, 64))), T0) for _ in range(2000)
    ]
    out = pipe.process(batch)
    assert len(out.dead) + pipe.counters.processed + pipe.counters.duplicates == 2000
    assert all(math.isfinite(r.value) for r in out.readings)


# ---- entry points: decode, score, readings already decoded ----------------------------------
def as_reading(sid: str, value: float, seq: int, ts: float | None = None) -> Reading:
    return Reading(sid, T0 + seq if ts is None else ts, value, "C", seq)


def payload(r: Reading) -> bytes:
    """A reading as a sensor publishes it (no seq: the key left out)."""
    fields = {"ts": r.ts, "value": r.value} | ({"seq": r.seq} if r.seq >= 0 else {})
    return msgspec.json.encode(fields)


def mixed_batches() -> list[list[Reading]]:
    """Steady readings, a spike, a redelivery, a seq conflict, a late one, one without seq."""
    rng = np.random.default_rng(5)
    steady = [as_reading(s, 25 + rng.normal(0, 0.3), i) for i in range(60) for s in ("A", "B")]
    spike = [as_reading("A", 98.2, 60), as_reading("B", 25.1, 62)]
    again = [
        as_reading("A", 98.2, 60),  # a redelivery: a duplicate
        as_reading("B", 30.0, 62),  # seq 62 again with another value: a conflict
        as_reading("B", 25.2, 61),  # late
        Reading("C", T0 + 61, 24.0),  # no seq
    ]
    return [steady[:50], steady[50:], spike, again]


def test_readings_already_decoded_give_what_their_payloads_give() -> None:
    by_payload, by_reading = Pipeline(load_settings()), Pipeline(load_settings())
    for batch in mixed_batches():
        raw = [(f"factory/{r.sensor_id}/temperature", payload(r), r.ts) for r in batch]
        a = by_payload.process(raw)
        b = by_reading.score_readings(batch, [r.ts for r in batch])
        assert a.alerts == b.alerts and a.health == b.health and a.readings == b.readings
        assert [(d.topic, d.reason, d.detail) for d in a.dead] == [
            (d.topic, d.reason, d.detail) for d in b.dead
        ]
        assert a.new_sensors == b.new_sensors
    assert by_payload.counters == by_reading.counters
    c = by_reading.counters
    assert (c.duplicates, c.seq_conflicts, c.late, c.alerts_raised) == (1, 1, 1, 2)
    for det_a, det_b in zip(by_payload.detectors, by_reading.detectors, strict=True):
        for k, v in det_a.state.items():
            np.testing.assert_array_equal(v, det_b.state[k])


def test_readings_already_decoded_are_checked() -> None:
    pipe = Pipeline(load_settings())
    bad = [
        Reading("S1", T0, math.nan),
        Reading("S1", T0 + 1e9, 25.0),  # 30 years from when it came
        Reading("S1", T0, 25.0, "C", 2**62),
        Reading("a/b", T0, 25.0),
        Reading("", T0, 25.0),
    ]
    out = pipe.score_readings(bad, T0)
    assert [d.reason for d in out.dead] == [
        "non_finite", "bad_timestamp", "invalid_field", "invalid_field", "invalid_field",
    ]  # fmt: skip
    assert out.readings == [] and pipe.counters.processed == 0
    assert out.dead[0].topic == "factory/S1/temperature"
    assert msgspec.json.decode(out.dead[0].payload)["sensor_id"] == "S1"
    assert pipe.sensor_ids == ["S1"]
    with pytest.raises(ValueError, match="2 receive times for 1 readings"):
        pipe.score_readings([Reading("S1", T0, 25.0)], [T0, T0])


def test_decode_places_readings_and_score_learns_from_them() -> None:
    pipe = Pipeline(load_settings())
    pipe.process(normal("S1", 40))
    before = {k: v.copy() for k, v in pipe.detectors[1].state.items()}
    decoded = pipe.decode(
        [reading("S1", 98.2, 40), reading("S1", 25.0, 41), reading("S1", 98.2, 40)]
        + [("factory/S1/status", b"offline", T0 + 42), ("junk", b"", T0)]
    )
    assert [len(r) for r in decoded.rounds] == [1, 1] and decoded.scored == 2  # in order
    assert [d.reason for d in decoded.out.dead] == ["unexpected_topic"]
    assert [a.detector for a in decoded.out.alerts] == ["offline"]  # the status is applied
    for k, v in pipe.detectors[1].state.items():  # nothing scored or learned yet
        np.testing.assert_array_equal(v, before[k])
    out = pipe.score(decoded)
    assert out is decoded.out
    assert ("S1", "threshold", "critical") in raised(out)
    assert pipe.counters.processed == 42 and pipe.counters.duplicates == 1
    with pytest.raises(RuntimeError):
        pipe.score(decoded)  # once
    first, second = pipe.decode([reading("S1", 25.0, 43)]), pipe.decode([])
    with pytest.raises(RuntimeError):
        pipe.score(first)  # not the one decoded last
    pipe.score(second)


def test_silent_health_survives_a_restart(tmp_path: Path) -> None:
    a = Pipeline(load_settings())
    a.process(normal("S1", 20) + normal("S2", 20))
    a.process([reading("S2", 25.0, 20, ts=T0 + 24)])
    assert a.check_silence(T0 + 25).health == [("S1", "silent")]
    statefile.dump(tmp_path / "state.mqas", a.state_dict(), sync=False)
    b = Pipeline(load_settings())
    assert b.load_state_dict(statefile.load(tmp_path / "state.mqas")) == []
    assert b.view().healths() == ("silent", "ok")
    b.process([reading("S1", 25.0, 20, ts=T0 + 26)])
    assert b.check_silence(T0 + 26.5).health == [("S1", "ok")]


def test_alert_ids_are_deterministic_and_tell_a_restarted_counter_apart() -> None:
    """The same readings give the same alert ids in another process (a restart that scores
    redelivered readings again); the same seq at another time is another event."""
    batches = [normal("S1", 50), [reading("S1", 98.2, 50)], normal("S1", 5, start=51, seed=1)]
    runs = []
    for _ in range(2):
        p = Pipeline(load_settings())
        runs.append([a.id for batch in batches for a in p.process(batch).alerts])
    assert runs[0] and runs[0] == runs[1]
    assert f"S1:threshold:raised:50@{T0 + 50!r}" in runs[0]
    assert len(set(runs[0])) == len(runs[0])
    # 1,200 readings later the sensor restarts its counter and spikes again at seq 50
    later = T0 + 3600
    p = Pipeline(load_settings())
    for batch in batches:
        p.process(batch)
    p.process(normal("S1", 1200, start=56, seed=2))
    p.process([reading("S1", 25.0 + 0.1 * (i % 3), i, ts=later + i) for i in range(50)])
    again = [a for a in p.process([reading("S1", 98.2, 50, ts=later + 50)]).alerts]
    spike = next(a for a in again if a.detector == "threshold" and a.state == "raised")
    assert not {a.id for a in again} & set(runs[0])
    wire = msgspec.json.decode(msgspec.json.encode(spike))
    assert wire["id"] == spike.id == f"S1:threshold:raised:50@{later + 50!r}"

"""Hostile input: whatever bytes arrive on whatever topic, the decoder raises nothing but
``PayloadError`` and the pipeline raises nothing at all; limits keep memory bounded."""

from __future__ import annotations

import json
import logging
import math
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.errors import PayloadError
from mqtt_anomaly.messages import Reading, decode_reading
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.topics import TopicTemplate, valid_sensor_id

from .helpers import eventually, reading_payload
from .mosquitto import Mosquitto
from .test_service import Running, publisher

NOW = 1_800_000_000.0
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
reading_keys = st.sampled_from(["value", "sensor_id", "ts", "unit", "seq"]) | st.text(max_size=8)
json_objects = st.dictionaries(reading_keys, json_values, max_size=7)


def check_decode(payload: bytes, sid: str = "S1", max_size: int = 4096) -> Reading | None:
    """Decode; only PayloadError may escape; an accepted reading must be sound."""
    try:
        r = decode_reading(payload, sid, NOW, max_size)
    except PayloadError as exc:
        assert exc.reason and isinstance(exc.detail, str)
        return None
    assert r.sensor_id == sid
    assert math.isfinite(r.value) and math.isfinite(r.ts)
    assert isinstance(r.unit, str) and isinstance(r.seq, int)
    assert len(payload) <= max_size
    return r


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")


# ---- the decoder -----------------------------------------------------------------------
@FAST
@given(st.binary(max_size=300))
@example(b"")
@example(b"\xff\xfe")
@example(b"1e999")
@example(b"-0x1p3")
@example(b"  24.5  ")
@example(b"nan")
@example(b"\x00" * 10)
def test_decoder_arbitrary_bytes(payload: bytes) -> None:
    check_decode(payload)


@FAST
@given(json_objects)
@example({"value": 10**400})
@example({"value": 1e308, "ts": 1e308})
@example({"value": 1, "seq": 2**63})
@example({"value": 1, "seq": -1})
@example({"value": True})
@example({"value": 1, "unit": "\ud800"})
@example({"value": 1, "sensor_id": "S1", "ts": NOW})
def test_decoder_arbitrary_json_objects(obj: dict[str, Any]) -> None:
    r = check_decode(dumps(obj))
    if r is not None:
        assert "value" in obj


@FAST
@given(st.text(max_size=200), json_values)
def test_decoder_unicode_sensor_ids(sid: str, value: Any) -> None:
    check_decode(dumps({"value": value, "sensor_id": sid}), sid="S1")
    check_decode(dumps({"value": 1.0, "sensor_id": sid}), sid=sid or "S1")


# msgspec raises RecursionError past ~1000 levels of an ignored field, which a 2 kB payload
# reaches: decode_reading turns it into PayloadError, so one such payload costs only itself.
@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_decoder_deep_nesting(depth: int) -> None:
    for payload in (
        b'{"value": ' + b"[" * depth + b"]" * depth + b"}",
        b'{"value": 1, "x": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}",
        b"[" * depth,
    ):
        check_decode(payload, max_size=len(payload))


def test_decoder_huge_numbers() -> None:
    assert check_decode(b"9" * 4000) is None  # a bare number beyond float: inf → rejected
    assert check_decode(b'{"value": ' + b"9" * 4000 + b"}") is None
    assert check_decode(b'{"value": 1, "seq": ' + b"9" * 4000 + b"}") is None
    r = check_decode(b'{"value": 1.7976931348623157e308}')
    assert r is not None and r.value == 1.7976931348623157e308


def test_payload_size_limit() -> None:
    at_limit = b"24.5" + b" " * 4092
    assert len(at_limit) == 4096
    assert check_decode(at_limit) is not None
    with pytest.raises(PayloadError) as info:
        decode_reading(at_limit + b"0", "S1", NOW)
    assert info.value.reason == "oversized"
    pipe = Pipeline(load_settings(None, {"service": {"max_payload": 64}}))
    out = pipe.process([("factory/S1/temperature", b" " * 61 + b"24.5", NOW)])
    assert [d.reason for d in out.dead] == ["oversized"]
    assert out.dead[0].payload_size == 65 and len(out.dead[0].payload) <= 256


# ---- topics ----------------------------------------------------------------------------
TEMPLATES = ["factory/{sensor_id}/temperature", "{sensor_id}", "a/b/{sensor_id}"]


@FAST
@given(st.sampled_from(TEMPLATES), st.text(max_size=300))
@example("factory/{sensor_id}/temperature", "factory//temperature")
@example("factory/{sensor_id}/temperature", "factory/a/b/temperature")
@example("factory/{sensor_id}/temperature", "factory/+/temperature")
@example("factory/{sensor_id}/temperature", "factory/#/temperature")
@example("factory/{sensor_id}/temperature", "factory/\x00/temperature")
@example("{sensor_id}", "x" * 129)
def test_topic_parsing_arbitrary_strings(template: str, topic: str) -> None:
    t = TopicTemplate(template)
    sid = t.sensor_id(topic)
    if sid is not None:
        assert valid_sensor_id(sid)
        assert "/" not in sid and t.format(sid) == topic


@FAST
@given(st.sampled_from(TEMPLATES), st.text(min_size=1, max_size=128))
def test_topic_parsing_round_trip(template: str, sid: str) -> None:
    t = TopicTemplate(template)
    expected = sid if valid_sensor_id(sid) and "/" not in sid else None
    assert t.sensor_id(t.format(sid)) == expected


# ---- the pipeline ----------------------------------------------------------------------
topics = st.one_of(
    st.text(max_size=60),
    st.builds(lambda s: f"factory/{s}/temperature", st.text(max_size=20)),
    st.builds(lambda s: f"factory/{s}/status", st.text(max_size=20)),
    st.sampled_from(["factory/S1/temperature", "factory/S2/status", "factory/S1/alerts"]),
)
payloads = st.one_of(
    st.binary(max_size=200),
    json_objects.map(dumps),
    st.sampled_from([b"online", b"offline", b"24.5", b"98.2", b"-inf"]),
    st.builds(
        lambda v, q: msgspec.json.encode({"value": v, "seq": q}),
        st.floats(-1e6, 1e6),
        st.integers(-5, 3000),
    ),
)
messages = st.lists(
    st.tuples(topics, payloads, st.floats(NOW - 1e6, NOW + 1e6)), min_size=1, max_size=40
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=4), st.integers(1, 5))
def test_pipeline_arbitrary_messages(batches: list[list[Any]], max_sensors: int) -> None:
    pipe = Pipeline(load_settings(None, {"service": {"max_sensors": max_sensors}}))
    total = 0
    for batch in batches:
        out = pipe.process(batch)
        total += len(batch)
        for r in out.readings:
            assert math.isfinite(r.value) and valid_sensor_id(r.sensor_id)
        sent = Counter((topic, len(payload)) for topic, payload, _ in batch)
        for d in out.dead:  # each dead letter is one of the messages sent, its size as sent
            assert d.reason and len(d.payload) <= 4 * 256
            assert sent[d.topic, d.payload_size] > 0, (d.topic, d.payload_size)
            sent[d.topic, d.payload_size] -= 1
    c = pipe.counters
    assert c.received == total
    assert c.dead_letters == sum(c.dead_by_reason.values())
    assert len(pipe.sensor_ids) <= max_sensors
    assert len(pipe._reading_topics) <= max_sensors
    pipe.check_silence(NOW + 1e7)  # every sensor silent: must not fail either


def test_pipeline_deep_nesting_is_a_dead_letter_not_a_lost_batch() -> None:
    pipe = Pipeline(load_settings())
    deep = b'{"value": 1, "x": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    out = pipe.process(
        [
            ("factory/S1/temperature", b"24.5", NOW),
            ("factory/S1/temperature", deep, NOW),
            ("factory/S2/temperature", b"25.5", NOW),
        ]
    )
    assert [r.sensor_id for r in out.readings] == ["S1", "S2"]
    assert [d.reason for d in out.dead] == ["not_json"]


# ---- the cap on distinct sensors ---------------------------------------------------------
def flood(pipe: Pipeline, start: int, n: int, batch: int = 1000) -> None:
    for b in range(start, start + n, batch):
        pipe.process(
            [(f"factory/FLOOD-{i}/temperature", b"24.5", NOW) for i in range(b, b + batch)]
            + [(f"factory/FLOODST-{i}/status", b"online", NOW) for i in range(b, b + 10)]
        )


def test_flood_of_new_sensor_ids_is_capped_and_bounded() -> None:
    cap = 500
    pipe = Pipeline(load_settings(None, {"service": {"max_sensors": cap}}))
    flood(pipe, 0, 5_000)
    assert len(pipe.sensor_ids) == cap
    assert len(pipe._reading_topics) <= cap
    limited = pipe.counters.dead_by_reason["sensor_limit"]
    assert limited >= 5_000 - cap
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        flood(pipe, 5_000, 20_000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 256 * 1024, f"memory grew by {grown} bytes under a flood of new ids"
    assert len(pipe.sensor_ids) == cap and len(pipe._reading_topics) <= cap
    # every message of an id refused a slot is a dead letter: 20,000 readings, 200 statuses
    assert pipe.counters.dead_by_reason["sensor_limit"] == limited + 20_000 + 200
    out = pipe.process([("factory/FLOOD-0/temperature", b"25.0", NOW + 1)])
    assert [r.sensor_id for r in out.readings] == ["FLOOD-0"]  # known sensors carry on


async def test_sensor_limit_logged_and_dead_lettered(
    shared_mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        None,
        {
            "broker": {"url": shared_mosquitto.url, "client_id": "hostile-cap"},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state", "max_sensors": 2},
        },
    )
    with caplog.at_level(logging.WARNING):
        async with Running(settings) as run, publisher(shared_mosquitto.url, "hostile") as pub:
            for i in range(50):
                sid = f"CAP-{i:02d}"
                pub.publish(f"factory/{sid}/temperature", reading_payload(sid, 25.0, 0))
            counters = run.service.pipeline.counters
            await eventually(
                lambda: counters.dead_by_reason.get("sensor_limit", 0) == 48, what="48 refused"
            )
            assert run.service.pipeline.sensor_ids == ["CAP-00", "CAP-01"]
    lines = [r.getMessage() for r in caplog.records if "sensor_limit" in r.getMessage()]
    assert lines and "max_sensors = 2" in lines[0]
    assert len(lines) < 5, "the warning must be rate-limited"

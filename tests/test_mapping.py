"""The ``[mapping]`` section: topic levels to tags, payload fields to readings, checked at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.mapping import parse_timestamp
from mqtt_anomaly.pipeline import Pipeline

from .helpers import Observer, eventually
from .mosquitto import Mosquitto
from .test_service import Running, publisher, settings_for

T0 = 1_700_000_000.0
GATEWAY = {
    "topic": "plant/{site}/{area}/{line}/{asset}",
    "values": {"temperature": "$.data.temp", "pressure": "$.data.p"},
    "timestamp": "$.ts",
    "seq": "$.n",
    "units": {"temperature": "C", "pressure": "bar"},
}


def pipeline(*rules: dict[str, Any]) -> Pipeline:
    return Pipeline(load_settings(overrides={"mapping": {"rules": list(rules)}}))


def config_error(tmp_path: Path, toml: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    return str(err.value)


def test_several_values_in_one_message_are_several_readings() -> None:
    p = pipeline(GATEWAY)
    payload = b'{"ts": 1700000000250, "n": 7, "data": {"temp": 21.5, "p": "3.25"}}'
    out = p.process([("plant/berlin/hall-2/line-1/press-7", payload, T0 + 1)])
    got = [(r.sensor_id, r.ts, r.value, r.unit, r.seq) for r in out.readings]
    assert got == [
        ("berlin/hall-2/line-1/press-7/temperature", T0 + 0.25, 21.5, "C", 7),
        ("berlin/hall-2/line-1/press-7/pressure", T0 + 0.25, 3.25, "bar", 7),
    ]
    assert not out.dead
    assert p.tags["berlin/hall-2/line-1/press-7/pressure"] == {
        "site": "berlin",
        "area": "hall-2",
        "line": "line-1",
        "asset": "press-7",
        "quantity": "pressure",
    }


@pytest.mark.parametrize(
    ("raw", "fmt", "expected"),
    [
        (T0, "auto", T0),
        (T0 * 1000 + 500, "auto", T0 + 0.5),
        (T0 * 1000, "ms", T0),
        ("2023-11-14T22:13:20Z", "auto", T0),
        ("2023-11-14T23:13:20.5+01:00", "iso8601", T0 + 0.5),
        ("2023-11-14T22:13:20", "iso8601", T0),  # no zone: UTC
        ("1700000000", "s", T0),
        ("yesterday", "auto", None),
        (T0, "iso8601", None),
        (True, "s", None),
    ],
)
def test_timestamps_in_seconds_milliseconds_and_iso(raw: Any, fmt: Any, expected: Any) -> None:
    assert parse_timestamp(raw, fmt) == expected


def test_each_member_of_an_object_is_a_reading_with_the_topic_tags() -> None:
    p = pipeline(
        {
            "topic": "ns/{site}/{line}/{asset}/metrics",
            "each": "$.values",
            "timestamp": "$.time",
            "unit": "$.unit",
        }
    )
    payload = b'{"time": "2023-11-14T22:13:20Z", "unit": "rpm", "values": {"a": 1, "b": 2.5}}'
    out = p.process([("ns/s1/l1/m1/metrics", payload, T0)])
    assert [(r.sensor_id, r.value, r.unit, r.ts) for r in out.readings] == [
        ("s1/l1/m1/a", 1.0, "rpm", T0),
        ("s1/l1/m1/b", 2.5, "rpm", T0),
    ]


def test_bad_messages_are_dead_letters_with_a_reason_and_the_rest_is_read() -> None:
    p = pipeline(GATEWAY)
    topic = "plant/b/h/l/m"
    out = p.process(
        [
            (topic, b'{"ts": 1700000000, "data": {"temp": 20}}', T0),  # no pressure
            (topic, b'{"ts": 1700000001, "data": {}}', T0),  # no value at all
            (topic, b'{"ts": "last tuesday", "data": {"temp": 20}}', T0),
            (topic, b'{"data": {"temp": 20}}', T0),  # the timestamp is required
            (topic, b"{not json", T0),
            (topic, b'{"ts": 1700000002, "n": -3, "data": {"temp": 20}}', T0),
            ("plant/b/h/l", b'{"ts": 1700000002, "data": {"temp": 20}}', T0),  # no rule
        ]
    )
    assert [(d.reason, d.detail) for d in out.dead] == [
        ("missing_field", "no value at $.data.p"),
        ("missing_field", "no value at $.data.temp, $.data.p"),
        ("bad_timestamp", "$.ts: 'last tuesday'"),
        ("missing_field", "timestamp $.ts"),
        ("not_json", "JSON is malformed: object keys must be strings (byte 1)"),
        ("invalid_field", "seq $.n: -3"),
        ("unexpected_topic", ""),
    ]
    assert [r.sensor_id for r in out.readings] == ["b/h/l/m/temperature"]


def test_rules_apply_in_order_and_the_default_topics_still_work() -> None:
    p = pipeline(
        {"topic": "plant/{asset}/{quantity}", "format": "number", "unit": "bar"},
        {"topic": "plant/#", "value": "$.v", "sensor": "other"},
    )
    out = p.process(
        [
            ("plant/m1/pressure", b"3.5", T0),
            ("plant/m1/pressure/x", b'{"v": 1}', T0),
            ("factory/S1/temperature", b"24.5", T0),
        ]
    )
    assert [(r.sensor_id, r.value, r.unit) for r in out.readings] == [
        ("m1/pressure", 3.5, "bar"),
        ("other", 1.0, ""),
        ("S1", 24.5, "C"),
    ]
    settings = load_settings(
        overrides={"mapping": {"rules": [{"topic": "plant/{asset}/{quantity}", "value": "v"}]}}
    )
    assert settings.subscriptions == ("plant/+/+", "factory/+/temperature", "factory/+/status")


def test_mapped_sensors_dedup_by_seq_and_report_conflicts() -> None:
    p = pipeline(GATEWAY)
    topic = "plant/b/h/l/m"
    first = b'{"ts": 1700000000, "n": 1, "data": {"temp": 20, "p": 1}}'
    out = p.process([(topic, first, T0), (topic, first, T0 + 1)])
    assert len(out.readings) == 2 and p.counters.duplicates == 2
    changed = b'{"ts": 1700000000, "n": 1, "data": {"temp": 21, "p": 1}}'
    out = p.process([(topic, changed, T0 + 2)])
    assert [(d.topic, d.reason) for d in out.dead] == [(topic, "seq_conflict")]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[[mapping.rules]]\ntopic = "p/{site}/{machine}"\nvalue = "v"',
            "mapping.rules.0.topic: unknown tag {machine}",
        ),
        (
            '[[mapping.rules]]\ntopic = "p/{asset}"\nvalues = { t = "$.a..b" }',
            "mapping.rules.0.values.t: not a JSON path: '$.a..b'",
        ),
        ('[[mapping.rules]]\ntopic = "p/{asset}"', "mapping.rules.0.value: one of value, values"),
        (
            '[[mapping.rules]]\ntopic = "p/{asset}"\nvalue = "v"\nsensor = "{line}-{asset}"',
            "mapping.rules.0.sensor: {line} is not given",
        ),
        (
            '[[mapping.rules]]\ntopic = "p/{asset}"\nvalues = { t = "t" }\nsensor = "{asset}"',
            "mapping.rules.0.sensor: several values per message need {quantity}",
        ),
        (
            '[[mapping.rules]]\ntopic = "p/{asset}"\nvalue = "v"\ntimestamp_format = "us"',
            "mapping.rules.0.timestamp_format: Input should be",
        ),
        (
            '[[mapping.rules]]\ntopic = "p/x+/{asset}"\nvalue = "v"',
            "mapping.rules.0.topic: '+' fills a whole level",
        ),
        (
            '[[mapping.rules]]\ntopic = "p/+"\nvalue = "v"',
            "mapping.rules.0.sensor: no tag in the topic",
        ),
        ('[[mapping.rules]]\nvalue = "v"', "mapping.rules.0.topic: Field required"),
    ],
)
def test_config_errors_are_one_line_naming_the_field(
    tmp_path: Path, toml: str, message: str
) -> None:
    got = config_error(tmp_path, toml)
    assert got.startswith(message), got
    assert "\n" not in got


async def test_gateway_messages_through_mosquitto_raise_alerts_per_quantity(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    base = settings_for(mosquitto, tmp_path)
    settings = base.model_copy(update={"mapping": pipeline(GATEWAY).settings.mapping})
    topic = "plant/berlin/hall-2/line-1/press-7"
    async with (
        Running(settings) as run,
        Observer(mosquitto.url, ["factory/#", "mqtt-anomaly/deadletter"]) as obs,
        publisher(mosquitto.url) as pub,
    ):
        for n in range(20):
            msg = {"ts": (T0 + n) * 1000, "n": n, "data": {"temp": 24.5, "p": 3.0}}
            pub.publish(topic, json.dumps(msg).encode())
        pub.publish(topic, json.dumps({"ts": T0 * 1000 + 20_000, "n": 20, "data": {}}).encode())
        hot = {"ts": (T0 + 21) * 1000, "n": 21, "data": {"temp": 98.0, "p": 3.0}}
        pub.publish(topic, json.dumps(hot).encode())
        await eventually(lambda: bool(obs.on("/alerts")), what="alert")
        await eventually(lambda: bool(obs.on("deadletter")), what="dead letter")
        assert len(run.processed) == 42
    alert = msgspec.json.decode(obs.on("/alerts")[0])
    assert alert["sensor_id"] == "berlin/hall-2/line-1/press-7/temperature"
    assert alert["detector"] == "threshold" and alert["reading_ts"] == T0 + 21
    [(where, _, _, _)] = [m for m in obs.messages if m[0].endswith("/alerts")][:1]
    assert where == "factory/berlin/hall-2/line-1/press-7/temperature/alerts"
    dead = msgspec.json.decode(obs.on("deadletter")[0])
    assert dead["topic"] == topic and dead["reason"] == "missing_field"

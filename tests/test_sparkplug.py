"""The Sparkplug B host application: births, aliases, seq gaps, deaths, bdSeq, rebirths."""

from __future__ import annotations

import doctest
import math

import pytest

from mqtt_anomaly import sparkplug
from mqtt_anomaly.sparkplug import (
    BOOLEAN,
    DOUBLE,
    FLOAT,
    INT16,
    UINT32,
    SparkplugHost,
    data,
    device_birth,
    device_death,
    is_rebirth_request,
    node_birth,
    node_death,
    state_payload,
)

T = 1_700_000_000.0
NODE = "spBv1.0/plant/{}/edge-1"
DEV = "spBv1.0/plant/{}/edge-1/press-7"


def test_doctests() -> None:
    assert doctest.testmod(sparkplug).failed == 0


def born_host(**kw: object) -> SparkplugHost:
    host = SparkplugHost(**kw)  # type: ignore[arg-type]
    host.handle(NODE.format("NBIRTH"), node_birth(bdseq=7, ts=T), T)
    birth = device_birth(
        seq=1,
        metrics=[
            ("Pressure", 1, DOUBLE, 3.5, "bar"),
            ("Motor/Temp", 2, FLOAT, 40.0, "C"),
            ("Count", 3, INT16, -5, ""),
            ("Running", 4, BOOLEAN, True, ""),
        ],
        ranges={"Pressure": (0.0, 10.0)},
        ts=T,
    )
    m = host.handle(DEV.format("DBIRTH"), birth, T)
    assert m.error is None
    assert [b.sensor for b in m.born] == [
        "plant/edge-1/press-7/Pressure",
        "plant/edge-1/press-7/Motor/Temp",
        "plant/edge-1/press-7/Count",
        "plant/edge-1/press-7/Running",
    ]
    first = m.born[0]
    assert (first.unit, first.low, first.high) == ("bar", 0.0, 10.0)
    assert first.tags == {
        "site": "plant",
        "line": "edge-1",
        "asset": "press-7",
        "quantity": "Pressure",
    }
    assert math.isnan(m.born[1].low)
    assert [v[2] for v in m.values] == [3.5, 40.0, -5.0, 1.0]  # signed int16, bool as 1
    return host


def test_aliases_resolve_values_with_units_and_timestamps() -> None:
    host = born_host()
    payload = data(seq=2, metrics=[(1, DOUBLE, 4.25), (3, INT16, -7), (2, FLOAT, 41.5)], ts=T + 1)
    m = host.handle(DEV.format("DDATA"), payload, T + 1)
    assert m.error is None and m.gap is None and m.rebirth is None
    assert m.values == [
        ("plant/edge-1/press-7/Pressure", T + 1, 4.25, "bar"),
        ("plant/edge-1/press-7/Count", T + 1, -7.0, ""),
        ("plant/edge-1/press-7/Motor/Temp", T + 1, 41.5, "C"),
    ]


def test_seq_gap_counted_raised_and_rebirth_requested_once_per_interval() -> None:
    host = born_host(rebirth_interval=5.0)
    m = host.handle(DEV.format("DDATA"), data(seq=6, metrics=[(1, DOUBLE, 1.0)], ts=T), T)
    assert m.gap == ("plant/edge-1", 4)  # seqs 2, 3, 4, 5 never came
    assert m.values and m.rebirth is not None
    topic, payload = m.rebirth
    assert topic == "spBv1.0/plant/NCMD/edge-1" and is_rebirth_request(payload)
    m = host.handle(DEV.format("DDATA"), data(seq=9, metrics=[(1, DOUBLE, 1.0)], ts=T), T + 1)
    assert m.gap == ("plant/edge-1", 2) and m.rebirth is None  # rate-limited
    assert (host.counters.seq_gaps, host.counters.lost) == (2, 6)
    m = host.handle(NODE.format("NBIRTH"), node_birth(bdseq=8, ts=T), T + 2)
    assert m.gap_closed == "plant/edge-1"


def test_seq_wraps_at_256_and_a_repeat_is_a_duplicate() -> None:
    host = born_host()
    for seq in range(2, 300):
        m = host.handle(DEV.format("DDATA"), data(seq=seq & 0xFF, metrics=[], ts=T), T)
        assert m.gap is None, seq
    m = host.handle(DEV.format("DDATA"), data(seq=299 & 0xFF, metrics=[(1, DOUBLE, 2)], ts=T), T)
    assert m.values == [] and host.counters.duplicates == 1


def test_unknown_alias_is_an_error_and_asks_for_a_rebirth() -> None:
    host = born_host()
    m = host.handle(DEV.format("DDATA"), data(seq=2, metrics=[(99, DOUBLE, 1.0)], ts=T), T)
    assert m.error is not None and m.error.reason == "unknown_alias"
    assert m.rebirth is not None and host.counters.unknown_aliases == 1


def test_data_before_birth_asks_for_a_rebirth_unless_off() -> None:
    host = SparkplugHost()
    m = host.handle(NODE.format("NDATA"), data(seq=4, metrics=[(1, DOUBLE, 1.0)], ts=T), T)
    assert m.error is not None and m.error.reason == "not_born" and m.rebirth is not None
    quiet = SparkplugHost(rebirth=False)
    m = quiet.handle(NODE.format("NDATA"), data(seq=4, metrics=[(1, DOUBLE, 1.0)], ts=T), T)
    assert m.rebirth is None


def test_deaths_mark_sensors_offline_and_a_stale_bdseq_is_ignored() -> None:
    host = born_host()
    m = host.handle(DEV.format("DDEATH"), device_death(seq=2, ts=T), T)
    assert len(m.offline) == 4 and "DDEATH" in m.why_offline
    m = host.handle(DEV.format("DDATA"), data(seq=3, metrics=[(1, DOUBLE, 1.0)], ts=T), T)
    assert m.error is not None and m.error.reason == "not_born"  # dead until born again
    m = host.handle(NODE.format("NDEATH"), node_death(bdseq=6), T)  # an old session's will
    assert m.offline == [] and host.counters.stale_deaths == 1
    m = host.handle(NODE.format("NDEATH"), node_death(bdseq=7), T)
    assert len(m.offline) == 4 and "bdSeq 7" in m.why_offline


def test_rebirth_brings_sensors_back_online() -> None:
    host = born_host()
    host.handle(NODE.format("NDEATH"), node_death(bdseq=7), T)
    host.handle(NODE.format("NBIRTH"), node_birth(bdseq=8, ts=T), T)
    birth = device_birth(seq=1, metrics=[("Pressure", 1, DOUBLE, 3.0, "bar")], ts=T)
    m = host.handle(DEV.format("DBIRTH"), birth, T)
    assert m.online == ["plant/edge-1/press-7/Pressure"]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("spBv1.0/plant/NDATA", b"", "unexpected_topic"),
        ("spBv1.0/plant/XDATA/edge-1", b"", "unexpected_topic"),
        ("spBv1.0/plant/DDATA/edge-1", b"", "unexpected_topic"),  # a device message, no device
        ("spBv1.0/plant/NBIRTH/edge-1", b"\xff\xff\xff", "not_sparkplug"),
    ],
)
def test_bad_messages_say_why(topic: str, payload: bytes, reason: str) -> None:
    m = SparkplugHost().handle(topic, payload, T)
    assert m.error is not None and m.error.reason == reason


def test_bad_timestamp_and_commands_and_state() -> None:
    host = born_host()
    m = host.handle(DEV.format("DDATA"), data(seq=2, metrics=[(1, UINT32, 5)], ts=T + 1e9), T)
    assert m.error is not None and m.error.reason == "bad_timestamp" and m.values == []
    assert host.handle("spBv1.0/plant/NCMD/edge-1", b"", T).error is None
    assert host.handle("spBv1.0/STATE/other-host", b"{}", T).error is None
    assert state_payload(True, T) == b'{"online":true,"timestamp":1700000000000}'

"""The Sparkplug B host application: births, aliases, seq gaps, deaths, bdSeq, rebirths."""

from __future__ import annotations

import doctest
import math
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mqtt_anomaly import sparkplug
from mqtt_anomaly.config import Settings, SparkplugSettings
from mqtt_anomaly.simulate.faults import NO_FAULTS, parse_injection
from mqtt_anomaly.simulate.sparkplug import SparkplugFleet
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

from .helpers import Observer, eventually
from .mosquitto import Mosquitto
from .test_service import Running, settings_for

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
        "asset": "plant/edge-1/press-7",
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


# ---- a Sparkplug fleet through a real broker into the service ---------------------------------
def sparkplug_settings(broker: Mosquitto, tmp_path: Path, **sim: Any) -> Settings:
    base = settings_for(broker, tmp_path)
    return base.model_copy(
        update={
            "sparkplug": SparkplugSettings(enabled=True, host_id="test-host", rebirth_interval=0),
            "simulator": base.simulator.model_copy(update={"interval": 0.05, **sim}),
        }
    )


async def test_fleet_readings_alerts_offline_and_host_state(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = sparkplug_settings(mosquitto, tmp_path, sensors=6, seed=1, faults=NO_FAULTS)
    spike = parse_injection("spike@1.0:2")
    async with Observer(mosquitto.url, ["factory/#", "spBv1.0/STATE/#", "spBv1.0/+/NCMD/#"]) as obs:
        async with Running(settings) as run:
            await eventually(lambda: bool(obs.on("STATE/test-host")), what="host STATE")
            assert msgspec.json.decode(obs.on("STATE/test-host")[0])["online"] is True
            fleet = SparkplugFleet(settings, per_node=4, injections=[spike])  # 2 nodes: 4 + 2
            async with fleet:
                await fleet.run(count=40)
                sid = fleet.sensor_of(1)
                assert sid == "plant/edge-01/asset-01/SENSOR-02"
                await eventually(
                    lambda: sum(s == sid for s, _ in run.processed) == 40, what="40 readings"
                )
                assert len(run.processed) == 6 * 40

                def threshold_alerts() -> list[dict[str, Any]]:
                    return [a for a in obs.json("/alerts") if a["detector"] == "threshold"]

                await eventually(lambda: bool(threshold_alerts()), what="the spike's alert")
                alerts = threshold_alerts()
                assert [a["sensor_id"] for a in alerts][:1] == [sid]
                assert alerts[0]["reading_ts"] is not None
                tags = run.service.pipeline.tags[sid]
                assert tags == {
                    "site": "plant",
                    "line": "edge-01",
                    "asset": "plant/edge-01/asset-01",
                    "quantity": "SENSOR-02",
                }
                # the second node dies: its will (NDEATH) takes its two sensors offline
                fleet.crash(1)
                gone = {fleet.sensor_of(4), fleet.sensor_of(5)}

                def offline() -> set[str]:
                    return {
                        str(a["sensor_id"])
                        for a in obs.json("/alerts")
                        if a["detector"] == "offline" and a["state"] == "raised"
                    }

                await eventually(lambda: offline() == gone, what="offline alerts")
                await fleet.restart(1)  # bdSeq + 1, births again: back online
                pl = run.service.pipeline
                await eventually(
                    lambda: all(pl.health[pl.sensors[s]] == "ok" for s in gone),
                    what="back online",
                )
                # a lost DDATA (seq jumps): a data-loss alert and a rebirth request, answered
                node = fleet.nodes[0]
                node.seq += 3
                births = node.births
                node.send([(1, 25.0)], time.time())
                await eventually(lambda: node.births > births, what="rebirth")

                def loss_alerts() -> list[dict[str, Any]]:
                    return [a for a in obs.json("/alerts") if a["detector"] == "data_loss"]

                await eventually(lambda: bool(loss_alerts()), what="data-loss alert")
                loss = loss_alerts()
                assert loss[0]["sensor_id"] == "plant/edge-01" and loss[0]["value"] == 3.0
                assert loss[0]["state"] == "raised"
                await eventually(
                    lambda: any(
                        a["detector"] == "data_loss" and a["state"] == "cleared"
                        for a in obs.json("/alerts")
                    ),
                    what="data loss cleared by the birth",
                )
                await eventually(lambda: bool(obs.on("NCMD/edge-01")), what="the NCMD seen")
        await eventually(
            lambda: obs.json("STATE/test-host")[-1]["online"] is False, what="STATE offline"
        )
    states = obs.json("STATE/test-host")
    assert states[-1]["online"] is False  # the clean stop says offline
    assert states[-1]["timestamp"] == states[0]["timestamp"]


def test_the_pipeline_counts_sparkplug_events_for_the_metrics(tmp_path: Path) -> None:
    from mqtt_anomaly.config import load_settings
    from mqtt_anomaly.pipeline import Pipeline

    off = Pipeline(load_settings(None, {})).view().sparkplug_counters()
    assert off and set(off.values()) == {0}
    pl = Pipeline(load_settings(None, {"sparkplug": {"enabled": True}}))
    births = [
        (NODE.format("NBIRTH"), node_birth(bdseq=1, ts=T), T),
        (DEV.format("DBIRTH"), device_birth(seq=1, metrics=[("P", 1, DOUBLE, 1.0, "")], ts=T), T),
        (DEV.format("DDATA"), data(seq=4, metrics=[(1, DOUBLE, 2.0)], ts=T), T),
    ]
    out = pl.process(births)
    got = pl.view().sparkplug_counters()
    assert (got["births"], got["seq_gaps"], got["lost"], got["rebirths_requested"]) == (2, 1, 2, 1)
    assert [r.value for r in out.readings] == [1.0, 2.0]
    assert [(a.detector, a.state) for a in out.alerts] == [("data_loss", "raised")]
    assert out.commands and out.commands[0][0] == "spBv1.0/plant/NCMD/edge-1"
    sid = "plant/edge-1/press-7/P"  # a device's metrics are one asset, named uniquely
    assert pl.assets.resolve(sid, pl.tags[sid]) == ("plant/edge-1/press-7", "P")


def test_a_birth_range_seeds_the_sensor_threshold() -> None:
    from mqtt_anomaly.config import load_settings
    from mqtt_anomaly.pipeline import Pipeline

    pl = Pipeline(load_settings(None, {"sparkplug": {"enabled": True}}))
    metrics = [("Bar", 1, DOUBLE, None, "bar"), ("Temp", 2, DOUBLE, None, "C")]
    birth = device_birth(seq=1, metrics=metrics, ranges={"Bar": (0.0, 10.0)}, ts=T)
    pl.process(
        [(NODE.format("NBIRTH"), node_birth(bdseq=1, ts=T), T), (DEV.format("DBIRTH"), birth, T)]
    )

    def alerts(seq: int, bar: float, temp: float) -> list[tuple[str, str]]:
        msg = data(seq=seq, metrics=[(1, DOUBLE, bar), (2, DOUBLE, temp)], ts=T)
        out = pl.process([(DEV.format("DDATA"), msg, T)])
        return [(a.sensor_id.rsplit("/", 1)[-1], a.state) for a in out.alerts]

    assert alerts(2, 5.0, 25.0) == []
    assert alerts(3, 12.0, 25.0) == [("Bar", "raised")]  # above its engHigh 10, far below 90
    assert alerts(4, 5.0, 25.0) == []  # clearing takes clear_after readings
    band = pl.view().expected_band(pl.sensors["plant/edge-1/press-7/Bar"])
    assert (band.low, band.high) == (0.0, 10.0)
    other = pl.view().expected_band(pl.sensors["plant/edge-1/press-7/Temp"])
    assert other.high == 90.0  # no range declared: the configured threshold
    assert alerts(5, -3.0, 25.0) == []  # still raised (below the range now)
    # a birth without a range gives the configured threshold back
    plain = device_birth(seq=6, metrics=metrics, ts=T)
    pl.process([(DEV.format("DBIRTH"), plain, T)])
    assert pl.view().expected_band(pl.sensors["plant/edge-1/press-7/Bar"]).high == 90.0


def test_threshold_detector_with_a_declared_range_scores_both_ends() -> None:
    import numpy as np

    from mqtt_anomaly.detectors.threshold import ThresholdDetector

    d = ThresholdDetector(threshold=90.0, clear=88.0)
    d.seed_range(1, 0.0, 10.0)
    slots = np.array([0, 1, 2], dtype=np.intp)
    s = d.update(slots, np.array([50.0, 10.0, 95.0]), np.zeros(3))
    assert s.score.round(2).tolist() == [0.0, 0.5, 0.5 + 0.2 * 5 / 2]  # slot 1 at its high end
    s = d.update(slots, np.array([89.0, -2.0, 20.0]), np.zeros(3))
    assert s.score.round(2).tolist() == [0.4, 0.7, 0.0]  # slot 1 two below its low end
    d.reset(np.array([1], dtype=np.intp))
    s = d.update(slots, np.array([0.0, 50.0, 0.0]), np.zeros(3))
    assert s.score.tolist() == [0.0, 0.0, 0.0]  # forgotten: the threshold again
    assert "low" not in d.state_dict()["arrays"]  # the saved state keeps its format

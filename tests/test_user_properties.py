"""MQTT 5 user properties of incoming readings: ``unit`` and ``asset`` (names configurable)
carried into the sensor table, the readings and the assets, against a real Mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mqtt_anomaly.config import Settings, load_settings
from mqtt_anomaly.messages import Reading
from mqtt_anomaly.pipeline import Output, Pipeline
from mqtt_anomaly.transport import codec
from mqtt_anomaly.transport.lean import LeanClient

from .helpers import eventually, reading_payload
from .mosquitto import Mosquitto
from .test_web import Served, web_settings


class V5Publisher:
    """A bare MQTT 5 publisher built from the codec: PUBLISH packets with user properties."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mid = 0
        self.acked = 0

    async def __aenter__(self) -> V5Publisher:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(codec.connect("v5-publisher", level=codec.MQTT_5))
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        rest = b""
        while data := await self.reader.read(65536):
            packets, rest = codec.split(rest + data)
            self.acked += sum(kind == codec.PUBACK for kind, _, _ in packets)

    def publish(self, topic: str, payload: bytes, **props: str) -> None:
        self.mid += 1
        block = codec.encode_properties([(codec.USER_PROPERTY, kv) for kv in props.items()])
        self.writer.write(
            codec.publish(
                topic, payload, qos=1, packet_id=self.mid, level=codec.MQTT_5, properties=block
            )
        )

    async def __aexit__(self, *exc: object) -> None:
        await eventually(lambda: self.acked == self.mid, what="PUBACKs")
        self.task.cancel()
        self.writer.close()


def v5_settings(server: Mosquitto, tmp_path: Path, **more: Any) -> Settings:
    base = web_settings(server, tmp_path).model_dump()
    base["broker"].update(protocol="5", **more.pop("broker", {}))
    return load_settings(None, {**base, **more})


async def test_unit_and_asset_properties_reach_sensors_readings_and_assets(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    define = [{"id": "line-1", "sensors": ["P-4", "P-5"]}]
    settings = v5_settings(mosquitto, tmp_path, assets={"define": define})
    async with Served(settings) as srv, srv.client() as http:
        seen: list[Reading] = []
        srv.service.listeners.append(lambda out: seen.extend(out.readings))
        async with V5Publisher(mosquitto.port) as pub:
            for seq in range(5):
                for sid in ("P-1", "P-2"):
                    topic = f"factory/{sid}/temperature"
                    pub.publish(topic, reading_payload(sid, 2.5, seq), unit="bar", asset="pump-7")
                pub.publish("factory/P-3/temperature", reading_payload("P-3", 20.0, seq))
                pub.publish(  # other user properties only: nothing to read
                    "factory/P-6/temperature", reading_payload("P-6", 1.0, seq), site="north"
                )
                for sid in ("P-4", "P-5"):  # defined assets keep their sensors
                    pub.publish(
                        f"factory/{sid}/temperature", reading_payload(sid, 3.0, seq), asset="pump-7"
                    )
        pl = srv.service.pipeline
        await eventually(lambda: pl.counters.processed == 30, what="30 readings")
        assert pl.units == {"P-1": "bar", "P-2": "bar"}
        units = {(r.sensor_id, r.unit) for r in seen}
        assert units == {
            ("P-1", "bar"), ("P-2", "bar"), ("P-3", "C"), ("P-4", "C"), ("P-5", "C"), ("P-6", "C")
        }  # fmt: skip
        assets = {a["id"]: a["sensors"] for a in (await http.get("/api/assets")).json()}
        assert assets == {"pump-7": ["P-1", "P-2"], "line-1": ["P-4", "P-5"]}
        one = (await http.get("/api/sensors/P-1")).json()
        assert one["unit"] == "bar"
        page = (await http.get("/api/sensors", params={"sort": "sensor_id"})).json()
        assert {s["sensor_id"]: s["unit"] for s in page["items"]} == {
            "P-1": "bar", "P-2": "bar", "P-3": None, "P-4": None, "P-5": None, "P-6": None
        }  # fmt: skip

        # a sensor named in another asset moves there; its unit changes with the property
        async with V5Publisher(mosquitto.port) as pub:
            pub.publish(
                "factory/P-2/temperature",
                reading_payload("P-2", 2.6, 5),
                unit="kPa",
                asset="pump-8",
            )
        await eventually(lambda: pl.counters.processed == 31, what="the moved sensor's reading")
        assets = {a["id"]: a["sensors"] for a in (await http.get("/api/assets")).json()}
        assert assets["pump-7"] == ["P-1"] and assets["pump-8"] == ["P-2"]
        assert pl.units["P-2"] == "kPa" and seen[-1].unit == "kPa"


async def test_property_names_are_configurable_and_3_1_1_reads_none(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    names = {"unit_property": "eng_unit", "asset_property": ""}  # assets: not read
    async with Served(v5_settings(mosquitto, tmp_path, broker=names)) as srv:
        async with V5Publisher(mosquitto.port) as pub:
            pub.publish(
                "factory/Q-1/temperature", reading_payload("Q-1", 5.0, 0), eng_unit="mA", asset="x"
            )
            pub.publish("factory/Q-2/temperature", reading_payload("Q-2", 5.0, 0), unit="V")
        pl = srv.service.pipeline
        await eventually(lambda: pl.counters.processed == 2, what="2 readings")
        assert pl.units == {"Q-1": "mA"} and pl.view().assets() == []
    base = web_settings(mosquitto, tmp_path)  # MQTT 3.1.1: the broker sends no properties
    async with Served(base) as srv:
        assert srv.service.client.on_properties is None  # type: ignore[attr-defined]
        async with V5Publisher(mosquitto.port) as pub:
            pub.publish("factory/Q-3/temperature", reading_payload("Q-3", 5.0, 0), unit="V")
        pl = srv.service.pipeline
        await eventually(lambda: pl.counters.processed == 1, what="1 reading")
        assert pl.units == {}


def test_note_properties_is_bounded_and_forgets_evicted_sensors() -> None:
    pl = Pipeline(load_settings(None, {"service": {"max_sensors": 2, "evict_after": 10}}))
    for i in range(5):  # sensors never seen: at most max_sensors units kept
        pl.note_properties(f"factory/N-{i}/temperature", "V", None)
    assert len(pl.units) == 2
    pl.note_properties("not/a/readings/topic", "V", "a")
    assert "not" not in str(pl.units) and pl.tags == {}
    pl2 = Pipeline(load_settings(None, {"service": {"max_sensors": 1, "evict_after": 10}}))
    pl2.note_properties("factory/A/temperature", "bar", "pump")
    out: Output = pl2.score_readings([Reading("A", 1.7e9, 1.0, "C", 1)], 1.7e9)
    assert out.readings[0].unit == "C"  # readings given decoded keep their own unit
    pl2.process([("factory/A/temperature", reading_payload("A", 1.0, 2, 1.7e9 + 1), 1.7e9 + 1)])
    assert pl2.units == {"A": "bar"} and pl2.tags["A"] == {"asset": "pump"}
    pl2.process([("factory/B/temperature", reading_payload("B", 1.0, 1, 1.7e9 + 99), 1.7e9 + 99)])
    assert pl2.sensor_ids == ["B"] and pl2.units == {} and pl2.tags == {}  # A evicted


def test_a_repeated_property_block_is_not_decoded_again_but_still_reported() -> None:
    settings = load_settings(None, {"broker": {"protocol": "5"}})
    client = LeanClient(settings.broker, "t", on_batch=lambda batch: None)
    calls: list[tuple[str, str | None, str | None]] = []
    client.on_properties = lambda *args: calls.append(args)

    def block(*pairs: tuple[str, str]) -> bytes:
        return codec.encode_properties([(codec.USER_PROPERTY, kv) for kv in pairs])

    topic = "factory/A/temperature"
    first = block(("unit", "bar"), ("asset", "pump"))
    client._user_properties(topic, first)
    client._user_properties(topic, bytes(first))  # the same block: from the cache
    client._user_properties(topic, block(("unit", "kPa")))
    client._user_properties(topic, block(("site", "north"), ("unit", "")))  # nothing to read
    assert calls == [(topic, "bar", "pump"), (topic, "bar", "pump"), (topic, "kPa", None)]
    assert client._property_blocks[topic][1:] == (None, None)


def test_asset_membership_from_properties_survives_a_restart_without_recommissioning() -> None:
    settings = load_settings(None, {"assets": {"commission_rows": 20}})
    pl = Pipeline(settings)
    t0 = 1.7e9
    for k in range(50):
        for sid in ("R-1", "R-2"):
            pl.note_properties(f"factory/{sid}/temperature", "bar", "press")
            pl.process(
                [
                    (
                        f"factory/{sid}/temperature",
                        reading_payload(sid, 1.0 + k % 3, k, t0 + k),
                        t0 + k,
                    )
                ]
            )
    [asset] = pl.view().assets()
    assert (asset.id, asset.sensors, asset.phase) == ("press", ["R-1", "R-2"], "monitoring")
    restored = Pipeline(settings)
    assert restored.load_state_dict(pl.state_dict()) == []
    assert restored.tags == {} and restored.units == {}  # they come back with the next message
    restored.note_properties("factory/R-1/temperature", "bar", "press")
    [again] = restored.view().assets()
    assert (again.id, again.sensors, again.phase) == ("press", ["R-1", "R-2"], "monitoring")
    assert restored.units == {"R-1": "bar"}


def test_property_names_are_checked() -> None:
    import pytest

    from mqtt_anomaly.errors import ConfigError

    same = {"broker": {"unit_property": "tag", "asset_property": "tag"}}
    with pytest.raises(ConfigError) as err:
        load_settings(None, same)
    assert str(err.value) == "broker.asset_property: the same name as unit_property"
    with pytest.raises(ConfigError, match=r"^broker\.unit_property: String should have at most"):
        load_settings(None, {"broker": {"unit_property": "u" * 65}})
    off = load_settings(None, {"broker": {"unit_property": "", "asset_property": ""}})
    assert (off.broker.unit_property, off.broker.asset_property) == ("", "")


def test_an_asset_property_that_is_no_id_and_unprintable_values_are_not_read() -> None:
    """An asset id becomes the sensor id of its alerts and a level of their topic: a value
    with a topic separator, a wildcard or over the id length is ignored, as are values with
    control characters."""
    settings = load_settings(None, {"broker": {"protocol": "5"}})
    client = LeanClient(settings.broker, "t", on_batch=lambda batch: None)
    calls: list[tuple[str, str | None, str | None]] = []
    client.on_properties = lambda *args: calls.append(args)
    topic = "factory/A/temperature"
    for asset in ("pump/7", "pump-#", "+", "p" * 129, "pump\n7"):
        block = codec.encode_properties(
            [(codec.USER_PROPERTY, ("asset", asset)), (codec.USER_PROPERTY, ("unit", "bar\x1b"))]
        )
        client._user_properties(topic, block)
    assert calls == []
    ok = codec.encode_properties([(codec.USER_PROPERTY, ("asset", "pump-7"))])
    client._user_properties(topic, ok)
    assert calls == [(topic, None, "pump-7")]

"""MQTT 5 on the service's connection, against a private Mosquitto 2 speaking MQTT 5."""

from __future__ import annotations

import asyncio
import doctest
from pathlib import Path
from typing import Any

import pytest

from mqtt_anomaly.config import Settings, load_settings
from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.transport import codec
from mqtt_anomaly.transport.lean import LeanClient

from .helpers import Observer, eventually, reading_payload
from .mosquitto import Mosquitto
from .test_service import Running, publisher, settings_for


def v5(broker: Mosquitto, tmp_path: Path, **broker_keys: Any) -> Settings:
    base = settings_for(broker, tmp_path)
    return base.model_copy(
        update={"broker": base.broker.model_copy(update={"protocol": "5", **broker_keys})}
    )


def test_protocol_is_3_1_1_by_default_and_5_by_configuration() -> None:
    assert load_settings(None, {}).broker.protocol == "3.1.1"
    assert load_settings(None, {"broker": {"protocol": 5}}).broker.protocol == "5"
    with pytest.raises(ConfigError, match=r"broker\.protocol"):
        load_settings(None, {"broker": {"protocol": "4"}})


async def test_alerts_over_mqtt5_with_topic_aliases_and_the_receive_maximum(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", extra_config="max_inflight_messages 5\n").start()
    try:
        settings = v5(broker, tmp_path)
        async with (
            Running(settings) as run,
            Observer(broker.url, ["factory/+/alerts"]) as obs,
            publisher(broker.url) as pub,
        ):
            client = run.service.client
            assert isinstance(client, LeanClient) and client.level == 5
            assert client._window == 5  # the broker's receive maximum, below max_inflight
            assert client._alias_max > 0
            for n in range(20):
                for s in range(30):
                    sid = f"S{s:02d}"
                    value = 98.0 if n == 19 else 24.5
                    pub.publish(f"factory/{sid}/temperature", reading_payload(sid, value, n))
            await eventually(lambda: len(obs.on("/alerts")) >= 30, what="30 alerts")
            topics = {t for t, _, _, _ in obs.messages}
            assert topics == {f"factory/S{s:02d}/alerts" for s in range(30)}  # aliases resolved
            assert 0 < len(client._aliases) <= client._alias_max
            assert client.peak_inflight <= 5
    finally:
        broker.stop()


async def test_session_expiry_keeps_readings_queued_while_the_service_is_away(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = v5(mosquitto, tmp_path, session_expiry=3600)
    async with Running(settings):
        pass  # the broker keeps the session for an hour
    async with publisher(mosquitto.url) as pub:
        for i in range(500):
            sid = f"S{i % 5}"
            pub.publish(f"factory/{sid}/temperature", reading_payload(sid, 25.0, i // 5))
    async with Running(settings) as run:
        await eventually(lambda: len(run.processed) >= 500, timeout=20, what="500 readings")
    assert len(set(run.processed)) == 500


async def test_no_session_expiry_forgets_the_session(mosquitto: Mosquitto, tmp_path: Path) -> None:
    settings = v5(mosquitto, tmp_path, session_expiry=0)
    async with Running(settings):
        pass
    async with publisher(mosquitto.url) as pub:
        pub.publish("factory/S1/temperature", reading_payload("S1", 25.0, 1))
    async with Running(settings) as run, publisher(mosquitto.url) as pub:
        pub.publish("factory/S2/temperature", reading_payload("S2", 25.0, 1))
        await eventually(lambda: bool(run.processed), what="the reading published now")
    assert run.processed == [("S2", 1)]  # S1's was not kept


def test_a_shared_subscription_is_refused_for_the_detector(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        {
            "topics": {"subscribe": ["$share/g/factory/+/temperature"]},
            "service": {"state_dir": tmp_path},
        },
    )
    with pytest.raises(ConfigError) as err:
        DetectorService(settings, console=False)
    assert "every reading of its sensor" in str(err.value) and "\n" not in str(err.value)


class V5Subscriber:
    """A bare MQTT 5 subscriber built from the codec: every PUBLISH with its properties."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.port, self.filter = port, topic_filter
        self.messages: list[tuple[str, bytes, list[tuple[int, Any]]]] = []

    async def __aenter__(self) -> V5Subscriber:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(codec.connect("v5-observer", level=codec.MQTT_5))
        self.writer.write(codec.subscribe(1, [(self.filter, 1)], level=codec.MQTT_5))
        self.task = asyncio.create_task(self._read())
        await eventually(lambda: self.subscribed, what="SUBACK")
        return self

    subscribed = False

    async def _read(self) -> None:
        rest = b""
        while data := await self.reader.read(65536):
            packets, rest = codec.split(rest + data)
            for kind, flags, body in packets:
                if kind == codec.SUBACK:
                    self.subscribed = True
                elif kind == codec.PUBLISH:
                    p = codec.decode_publish(flags, body, level=codec.MQTT_5)
                    self.messages.append(
                        (p.topic, p.payload, codec.decode_properties(p.properties))
                    )
                    if p.qos:
                        self.writer.write(codec.puback(p.packet_id))

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        self.writer.close()


async def test_alerts_carry_user_properties_and_message_expiry(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = v5(mosquitto, tmp_path, message_expiry=120)
    async with (
        Running(settings),
        V5Subscriber(mosquitto.port, "factory/+/alerts") as sub,
        publisher(mosquitto.url) as pub,
    ):
        pub.publish("factory/S7/temperature", reading_payload("S7", 98.5, 1))
        await eventually(lambda: bool(sub.messages), what="the alert")
    topic, payload, props = sub.messages[0]
    assert topic == "factory/S7/alerts" and b'"threshold"' in payload
    users = [v for k, v in props if k == codec.USER_PROPERTY]
    assert ("sensor_id", "S7") in users and ("detector", "threshold") in users
    expiry = [v for k, v in props if k == codec.MESSAGE_EXPIRY]
    assert len(expiry) == 1 and 0 < expiry[0] <= 120  # the broker counts down what is left


def test_doctests() -> None:
    from mqtt_anomaly.sinks import mqtt

    assert doctest.testmod(mqtt).failed == 0

"""The Kafka sink against a real Kafka-protocol broker (Tansu, memory storage).

What is consumed back is read from ``earliest`` on explicitly assigned partitions and waited
for by count: Tansu's reported end offsets are not trusted (see tests/kafka.py).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from mqtt_anomaly.config import KafkaSettings, load_settings, settings_as_toml  # noqa: E402
from mqtt_anomaly.errors import ConfigError  # noqa: E402
from mqtt_anomaly.messages import Alert, Reading, encode  # noqa: E402
from mqtt_anomaly.pipeline import Output  # noqa: E402
from mqtt_anomaly.sinks.base import DurableSink  # noqa: E402
from mqtt_anomaly.sinks.kafka import KafkaSink, producer_config  # noqa: E402

from .helpers import eventually  # noqa: E402
from .kafka import Tansu, unique  # noqa: E402
from .mosquitto import Mosquitto  # noqa: E402

PARTITIONS = 3


@dataclass(frozen=True)
class Got:
    key: bytes
    value: bytes
    timestamp: int
    partition: int


def topics_settings(url: str, **kw: object) -> KafkaSettings:
    """Settings with topics no other test uses."""
    base: dict[str, object] = {
        "url": url,
        "readings_topic": unique("readings"),
        "alerts_topic": unique("alerts"),
        "health_topic": unique("health"),
    }
    return KafkaSettings.model_validate(base | kw)


def create_topics(broker: Tansu, *topics: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics])
    for f in futures.values():
        f.result(10)


def consume(
    broker: Tansu,
    topic: str,
    n: int,
    timeout: float = 15.0,
    done: Callable[[list[Got]], bool] | None = None,
) -> list[Got]:
    """Read ``topic`` from the start until ``n`` messages came, or until ``done(messages)``."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": unique("group"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 500,
        }
    )
    got: list[Got] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign(
            [TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in partitions]
        )
        deadline = time.monotonic() + timeout
        finished = done or (lambda got: len(got) >= n)
        while not finished(got) and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    got.append(
                        Got(m.key() or b"", m.value() or b"", m.timestamp()[1], m.partition() or 0)
                    )
                elif m.error().code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(m.error())
    finally:
        consumer.close()
    assert len(got) >= n, f"{topic}: {len(got)} of {n} messages"
    return got


def readings(sensors: int, per_sensor: int, first_seq: int = 1, ts: float | None = None) -> Output:
    now = time.time() if ts is None else ts
    out = Output()
    for k in range(per_sensor):
        for s in range(sensors):
            seq = first_seq + k
            out.readings.append(Reading(f"SENSOR-{s:02d}", now + seq * 0.001, 20.0 + seq, "C", seq))
    return out


@pytest.fixture
def sinks() -> Iterator[list[KafkaSink]]:
    """Sinks a test creates are closed when it ends, whatever happens."""
    made: list[KafkaSink] = []
    yield made
    for s in made:
        s.close(timeout=2)


# ---- what lands in Kafka ------------------------------------------------------------------
def test_messages_keyed_by_sensor_with_the_mqtt_json_in_order(
    shared_kafka: Tansu, sinks: list[KafkaSink]
) -> None:
    settings = topics_settings(shared_kafka.url)
    create_topics(
        shared_kafka, settings.readings_topic, settings.alerts_topic, settings.health_topic
    )
    sink = KafkaSink(settings)
    sinks.append(sink)
    assert isinstance(sink, DurableSink) and sink.name == "kafka"
    sent: list[Reading] = []
    for batch in range(4):  # several batches: order must hold across them
        out = readings(5, 10, first_seq=1 + batch * 10)
        sent += out.readings
        sink.send(out)
    now = time.time()
    alert = Alert(
        "SENSOR-01",
        "threshold",
        "critical",
        "raised",
        99.5,
        1.0,
        90.0,
        None,
        None,
        now,
        now + 0.01,
        "hot",
    )
    sink.send(Output(alerts=[alert], health=[("SENSOR-01", "anomalous")]))
    assert sink.wait_confirmed(sink.mark(), 10)
    assert sink.mark() == len(sent) + 2

    got = consume(shared_kafka, settings.readings_topic, len(sent))
    assert len(got) == len(sent)
    expected = {(r.sensor_id, r.seq): r for r in sent}
    by_sensor: dict[str, list[Got]] = {}
    for g in got:
        r = msgspec.json.decode(g.value, type=Reading)
        assert g.key == r.sensor_id.encode()
        assert r == expected[(r.sensor_id, r.seq)]
        assert g.value == encode(r)  # the MQTT payload schema, byte for byte
        assert g.timestamp == int(r.ts * 1000)
        by_sensor.setdefault(r.sensor_id, []).append(g)
    assert len(by_sensor) == 5
    for msgs in by_sensor.values():
        assert len({g.partition for g in msgs}) == 1  # one sensor, one partition
        seqs = [msgspec.json.decode(g.value, type=Reading).seq for g in msgs]
        assert seqs == sorted(seqs) == list(range(1, 41))

    (a,) = consume(shared_kafka, settings.alerts_topic, 1)
    assert a.key == b"SENSOR-01" and msgspec.json.decode(a.value, type=Alert) == alert
    assert a.timestamp == int(alert.alert_ts * 1000)
    (h,) = consume(shared_kafka, settings.health_topic, 1)
    assert (h.key, h.value) == (b"SENSOR-01", b"anomalous")

    s = sink.stats
    assert (s.produced, s.delivered, s.backlog, s.dropped, s.errors) == (
        len(sent) + 2,
        len(sent) + 2,
        0,
        0,
        0,
    )
    assert s.connected


def test_an_empty_topic_name_turns_that_kind_off(
    shared_kafka: Tansu, sinks: list[KafkaSink]
) -> None:
    settings = topics_settings(shared_kafka.url, health_topic="", alerts_topic="")
    create_topics(shared_kafka, settings.readings_topic)
    sink = KafkaSink(settings)
    sinks.append(sink)
    out = readings(2, 3)
    out.health.append(("SENSOR-00", "ok"))
    sink.send(out)
    assert sink.wait_confirmed(sink.mark(), 10)
    assert sink.stats.produced == sink.stats.delivered == 6


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compression_codecs(shared_kafka: Tansu, sinks: list[KafkaSink], codec: str) -> None:
    settings = topics_settings(shared_kafka.url, compression=codec)
    create_topics(shared_kafka, settings.readings_topic)
    sink = KafkaSink(settings)
    sinks.append(sink)
    out = readings(4, 25)
    sink.send(out)
    assert sink.wait_confirmed(sink.mark(), 10)
    got = consume(shared_kafka, settings.readings_topic, 100)
    assert sorted(g.value for g in got) == sorted(encode(r) for r in out.readings)


# ---- tickets ---------------------------------------------------------------------------------
def test_wait_confirmed_semantics(shared_kafka: Tansu, sinks: list[KafkaSink]) -> None:
    settings = topics_settings(shared_kafka.url)
    create_topics(shared_kafka, settings.readings_topic)
    sink = KafkaSink(settings, tracking=True)
    sinks.append(sink)
    assert sink.mark() == 0 and sink.wait_confirmed(0, 0)  # nothing given: nothing to wait for
    sink.send(readings(3, 10))
    first = sink.mark()
    sink.send(readings(3, 10, first_seq=11))
    second = sink.mark()
    assert (first, second) == (30, 60)
    assert not sink.wait_confirmed(second + 1, 0.2)  # a ticket not issued yet
    assert sink.wait_confirmed(second, 10)
    assert sink.wait_confirmed(first, 0)  # an earlier ticket is covered
    assert sink.backlog == 0


# ---- back-pressure ---------------------------------------------------------------------------
def test_backlog_grows_while_the_broker_is_down_and_drains_after(
    kafka: Tansu, sinks: list[KafkaSink]
) -> None:
    kafka.stop(signal.SIGKILL)
    best_effort = KafkaSink(topics_settings(kafka.url, max_buffered=100))
    tracked = KafkaSink(topics_settings(kafka.url, max_buffered=100), tracking=True)
    # librdkafka's own queue smaller than the bound: BufferError is the other way to be full
    small_queue = KafkaSink(
        topics_settings(kafka.url, max_buffered=100, options={"queue.buffering.max.messages": 20}),
        tracking=True,
    )
    small_best_effort = KafkaSink(
        topics_settings(kafka.url, max_buffered=100, options={"queue.buffering.max.messages": 20})
    )
    sinks += [best_effort, tracked, small_queue, small_best_effort]
    for sink in sinks:
        assert sink.backlog_limit == 100
        sink.send(readings(10, 15))  # 150 messages
    assert (best_effort.backlog, best_effort.stats.dropped, best_effort.mark()) == (100, 50, 100)
    assert (tracked.backlog, tracked.stats.dropped, tracked.mark()) == (150, 0, 150)
    assert tracked.backlog > tracked.backlog_limit  # the service pauses intake on this
    assert (small_queue.backlog, small_queue.stats.dropped) == (150, 0)
    assert small_queue.stats.waiting == 130  # held by the sink, not librdkafka
    assert not tracked.wait_confirmed(tracked.mark(), 0.2)
    assert (small_best_effort.backlog, small_best_effort.stats.dropped) == (20, 130)

    # message.timeout.ms=0 is "retry forever": a producer with a 1 s timeout gives up on its
    # message meanwhile, the sinks keep theirs
    timed_out: list[KafkaError] = []
    control = Producer({"bootstrap.servers": kafka.bootstrap, "message.timeout.ms": 1000})
    control.produce(unique("control"), b"x", on_delivery=lambda err, _m: timed_out.append(err))
    deadline = time.monotonic() + 10
    while not timed_out and time.monotonic() < deadline:
        control.poll(0.1)
    assert timed_out and timed_out[0].code() == KafkaError._MSG_TIMED_OUT
    assert [s.backlog for s in sinks] == [100, 150, 150, 20]

    kafka.start()
    for sink in sinks:
        assert sink.wait_confirmed(sink.mark(), 20)
    assert [s.stats.delivered for s in sinks] == [100, 150, 150, 20]
    assert all(s.backlog == 0 and s.stats.waiting == 0 for s in sinks)
    got = consume(kafka, small_queue.settings.readings_topic, 150)
    seqs: dict[bytes, list[int]] = {}
    for g in got:
        seqs.setdefault(g.key, []).append(msgspec.json.decode(g.value, type=Reading).seq)
    assert sum(len(s) for s in seqs.values()) == 150, seqs
    assert all(s == list(range(1, 16)) for s in seqs.values())  # waiting kept the order


# ---- the broker restarted mid-stream -----------------------------------------------------------
async def test_broker_restart_mid_stream_loses_nothing_unconfirmed(
    kafka: Tansu, sinks: list[KafkaSink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mqtt_anomaly.sinks.kafka")
    settings = topics_settings(kafka.url, linger_ms=20)
    create_topics(kafka, settings.readings_topic)
    sink = KafkaSink(settings, tracking=True, slow_after=1.0)
    sinks.append(sink)
    seq = 0
    marks: list[tuple[int, int]] = []  # (ticket, last seq in it)

    def send(batches: int) -> None:
        nonlocal seq
        for _ in range(batches):
            sink.send(readings(4, 5, first_seq=seq + 1))
            seq += 5
            marks.append((sink.mark(), seq))

    send(20)
    first = marks[-1][0]
    await eventually(lambda: sink.wait_confirmed(first, 0), what="confirmed before the stop")
    send(20)  # in flight when the broker dies
    kafka.stop(signal.SIGKILL)
    send(20)  # while the broker is down
    await eventually(lambda: not sink.stats.connected, what="the sink noticed")
    # What is confirmed may be lost by the broker (memory storage), not by the sink:
    # everything after it must arrive.
    confirmed_seq = max((s for t, s in marks if sink.wait_confirmed(t, 0)), default=0)
    assert confirmed_seq < seq
    kafka.start()
    send(10)  # after the restart
    await eventually(lambda: sink.backlog == 0, timeout=20, what="the backlog drained")
    s = sink.stats
    assert s.delivered == s.produced == seq * 4 and s.dropped == 0
    assert s.recoveries >= 1  # Tansu forgot the producer id: a new producer took over

    unconfirmed = {
        (f"SENSOR-{k:02d}".encode(), q) for k in range(4) for q in range(confirmed_seq + 1, seq + 1)
    }
    got = consume(kafka, settings.readings_topic, len(unconfirmed))
    arrived = {(g.key, msgspec.json.decode(g.value, type=Reading).seq) for g in got}
    assert unconfirmed <= arrived
    for k in range(4):  # produced again in order: each sensor's sequence never goes back
        key = f"SENSOR-{k:02d}".encode()
        seqs = [msgspec.json.decode(g.value, type=Reading).seq for g in got if g.key == key]
        first_seen = list(dict.fromkeys(seqs))
        assert first_seen == sorted(first_seen)

    text = caplog.text
    assert "unreachable or slow" in text
    assert "reachable and delivering again" in text
    assert "new producer, producing again" in text


def test_fatal_error_rebuilds_the_producer_and_produces_again(
    kafka: Tansu, sinks: list[KafkaSink]
) -> None:
    settings = topics_settings(kafka.url)
    create_topics(kafka, settings.readings_topic)
    sink = KafkaSink(settings, tracking=True)
    sinks.append(sink)
    kafka.stop(signal.SIGKILL)
    sink.send(readings(2, 10))
    # librdkafka reports a fatal error through error_cb; raise one as it would
    sink._on_error(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "test", fatal=True))
    kafka.start()
    assert sink.wait_confirmed(sink.mark(), 20)
    s = sink.stats
    assert s.recoveries == 1 and s.delivered == 20
    got = consume(kafka, settings.readings_topic, 20)
    assert {(g.key, msgspec.json.decode(g.value, type=Reading).seq) for g in got} == {
        (f"SENSOR-{k:02d}".encode(), q) for k in range(2) for q in range(1, 11)
    }


def test_close_flushes_then_drops(shared_kafka: Tansu) -> None:
    settings = topics_settings(shared_kafka.url)
    create_topics(shared_kafka, settings.readings_topic)
    sink = KafkaSink(settings)
    sink.send(readings(3, 3))
    sink.close(timeout=10)
    assert sink.stats.delivered == 9 and sink.backlog == 0
    sink.send(readings(1, 1))
    assert sink.stats.dropped == 1
    sink.close()  # twice is fine


# ---- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"url": "http://broker:9092"}, "kafka.url"),
        ({"url": "kafka://"}, "kafka.url"),
        ({"url": "kafka://a:9092,b:99999"}, "kafka.url"),
        ({"url": "kafka://user:pw@broker:9092"}, "kafka.url"),
        ({"url": "kafka://broker:9092/path"}, "kafka.url"),
        ({"readings_topic": "bad topic"}, "kafka.readings_topic"),
        ({"compression": "brotli"}, "kafka.compression"),
        ({"max_buffered": 0}, "kafka.max_buffered"),
        ({"options": {"acks": "1"}}, "kafka.options"),
        ({"options": {"enable.idempotence": False}}, "kafka.options"),
        ({"url": "kafka://b:9092", "ca_file": "/ca.pem"}, "kafka"),
        ({"url": "kafka://b:9092", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "kafka"),
        ({"url": "kafka://b:9092", "sasl_username": "u"}, "kafka"),
        ({"url": "kafka://b:9092", "sasl_mechanism": "GSSAPI"}, "kafka.sasl_mechanism"),
    ],
)
def test_bad_kafka_settings_name_the_key(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"kafka": section})
    message = str(info.value)
    assert message.startswith(key + ":") or message.startswith(key + "."), message
    assert "\n" not in message


def test_kafka_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_ANOMALY_KAFKA__URL", "kafka+ssl://k1:9093,k2")
    monkeypatch.setenv("MQTT_ANOMALY_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MQTT_ANOMALY_KAFKA__SASL_USERNAME", "bridge")
    monkeypatch.setenv("MQTT_ANOMALY_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv(
        "MQTT_ANOMALY_KAFKA__OPTIONS", '{"ssl.key.password": "s3cret", "client.rack": "r1"}'
    )
    s = load_settings().kafka
    assert (s.enabled, s.tls, s.bootstrap_servers) == (True, True, "k1:9093,k2:9092")
    shown = settings_as_toml(load_settings()) + repr(load_settings())
    assert "hunter2" not in shown and "s3cret" not in shown
    assert 'sasl_password = "**********"' in shown
    assert '"client.rack" = "r1"' in shown


def test_kafka_off_by_default() -> None:
    assert not load_settings().kafka.enabled
    with pytest.raises(ConfigError, match="empty"):
        producer_config(KafkaSettings())


def test_producer_config_mapping(tmp_path: Path) -> None:
    plain = producer_config(KafkaSettings(url="kafka://a:1,b:2", compression="zstd", linger_ms=7))
    assert plain["bootstrap.servers"] == "a:1,b:2"
    assert plain["security.protocol"] == "PLAINTEXT"
    assert (plain["enable.idempotence"], plain["acks"], plain["message.timeout.ms"]) == (
        True,
        "all",
        0,
    )
    assert (plain["compression.type"], plain["linger.ms"]) == ("zstd", 7.0)
    assert not any(k.startswith(("ssl.", "sasl.")) for k in plain)

    tls = producer_config(
        KafkaSettings(
            url="kafka+ssl://k:9093",
            ca_file=tmp_path / "ca.pem",
            cert_file=tmp_path / "c.pem",
            key_file=tmp_path / "k.pem",
        )
    )
    assert tls["security.protocol"] == "SSL"
    assert tls["ssl.ca.location"] == str(tmp_path / "ca.pem")
    assert tls["ssl.certificate.location"] == str(tmp_path / "c.pem")
    assert tls["ssl.key.location"] == str(tmp_path / "k.pem")

    pw = tmp_path / "pw"
    pw.write_text("from-file\nignored\n")
    sasl_tls = producer_config(
        KafkaSettings(
            url="kafka+ssl://k:9093",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username="bridge",
            sasl_password_file=pw,
        )
    )
    assert sasl_tls["security.protocol"] == "SASL_SSL"
    assert (sasl_tls["sasl.mechanisms"], sasl_tls["sasl.username"], sasl_tls["sasl.password"]) == (
        "SCRAM-SHA-256",
        "bridge",
        "from-file",
    )
    sasl_plain = producer_config(
        KafkaSettings(
            url="kafka://k",
            sasl_mechanism="PLAIN",
            sasl_username="u",
            sasl_password="p",  # type: ignore[arg-type]
            options={"client.rack": "r1", "socket.keepalive.enable": True, "linger.ms": 50},
        )
    )
    assert sasl_plain["security.protocol"] == "SASL_PLAINTEXT"
    assert sasl_plain["bootstrap.servers"] == "k:9092"
    assert sasl_plain["sasl.password"] == "p"
    assert sasl_plain["client.rack"] == "r1"
    assert sasl_plain["socket.keepalive.enable"] == "true"
    assert sasl_plain["linger.ms"] == 50  # options win over the sink's defaults

    missing = KafkaSettings(
        url="kafka://k",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password_file=tmp_path / "nope",
    )
    with pytest.raises(ConfigError, match="sasl_password_file"):
        producer_config(missing)


def test_a_bad_librdkafka_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"no\.such\.option") as info:
        KafkaSink(KafkaSettings(url="kafka://127.0.0.1:1", options={"no.such.option": "1"}))
    assert isinstance(info.value.__cause__, confluent_kafka.KafkaException)  # chained
    assert "\n" not in str(info.value)


def test_missing_client_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(ConfigError) as info:
        KafkaSink(KafkaSettings(url="kafka://127.0.0.1:1"))
    assert "mqtt-anomaly[kafka]" in str(info.value) and "\n" not in str(info.value)


# ---- metrics -------------------------------------------------------------------------------------
def test_metrics_expose_the_sink(
    shared_kafka: Tansu, sinks: list[KafkaSink], tmp_path: Path
) -> None:
    from mqtt_anomaly.service import DetectorService
    from mqtt_anomaly.web.metrics import METRIC_NAMES, ServiceMetrics

    settings = topics_settings(shared_kafka.url)
    create_topics(shared_kafka, settings.readings_topic)
    sink = KafkaSink(settings)
    sinks.append(sink)
    sink.send(readings(2, 2))
    assert sink.wait_confirmed(sink.mark(), 10)
    service = DetectorService(
        load_settings(None, {"store": {"url": "none://"}, "service": {"state_dir": tmp_path}}),
        console=False,
    )
    metrics = ServiceMetrics(service)
    assert "mqtt_anomaly_kafka_backlog" not in metrics.exposition().decode()
    service.kafka = sink
    text = metrics.exposition().decode()
    assert 'mqtt_anomaly_kafka_messages_total{outcome="delivered"} 4.0' in text
    assert 'mqtt_anomaly_kafka_messages_total{outcome="dropped"} 0.0' in text
    assert "mqtt_anomaly_kafka_backlog 0.0" in text
    assert f"mqtt_anomaly_kafka_backlog_limit {float(settings.max_buffered)}" in text
    assert "mqtt_anomaly_kafka_connected 1.0" in text
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"
    }
    assert names <= METRIC_NAMES


# ---- the service with the Kafka sink: bridging, and readings held while Kafka is down ------
async def test_service_bridges_and_holds_acks_while_kafka_is_down(
    kafka: Tansu, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    import asyncio

    from .helpers import reading_payload
    from .test_service import Running, publisher, settings_for

    ks = topics_settings(kafka.url)
    create_topics(kafka, ks.readings_topic)
    with KafkaSink(ks, tracking=True) as sink:
        settings = settings_for(mosquitto, tmp_path, ack_after="durable")  # held acks
        async with Running(settings, kafka=sink) as run, publisher(mosquitto.url) as pub:
            tracker = run.service.tracker
            assert tracker is not None and tracker.sinks == [sink]
            processed = run.processed
            for seq in range(50):
                pub.publish("factory/S1/temperature", reading_payload("S1", 25.0, seq))
            await eventually(lambda: tracker.stats.acked == 50, timeout=15, what="50 acks")
            first = await asyncio.to_thread(consume, kafka, ks.readings_topic, 50)
            assert {g.key for g in first} == {b"S1"}
            assert sorted(msgspec.json.decode(g.value)["seq"] for g in first) == list(range(50))

            kafka.stop()  # memory storage: what it held is gone
            for seq in range(50, 100):
                pub.publish("factory/S1/temperature", reading_payload("S1", 25.0, seq))
            await eventually(lambda: len(processed) == 100, what="processed")
            await eventually(lambda: sink.backlog >= 50, what="unconfirmed in the sink")
            assert tracker.stats.acked == 50  # processed, not in Kafka: not acknowledged
            kafka.start()
            await eventually(lambda: tracker.stats.acked == 100, timeout=60, what="recovery")
        again = await asyncio.to_thread(consume, kafka, ks.readings_topic, 50)
        assert {msgspec.json.decode(g.value)["seq"] for g in again} >= set(range(50, 100))
        assert sink.stats.recoveries >= 1


async def test_shutdown_while_kafka_is_down_leaves_the_readings_at_the_broker(
    kafka: Tansu, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A stop cannot wait for Kafka forever: the readings Kafka has not confirmed stay
    unacknowledged, and the next start sends them to Kafka."""
    from .helpers import reading_payload
    from .test_service import Running, publisher, settings_for

    ks = topics_settings(kafka.url)
    create_topics(kafka, ks.readings_topic)
    settings = settings_for(mosquitto, tmp_path, ack_after="durable")  # held acks
    async with publisher(mosquitto.url) as pub:
        with KafkaSink(ks, tracking=True) as sink:
            async with Running(settings, kafka=sink, shutdown_timeout=1.0) as run:
                tracker = run.service.tracker
                assert tracker is not None
                for seq in range(20):
                    pub.publish("factory/S1/temperature", reading_payload("S1", 25.0, seq))
                await eventually(lambda: tracker.stats.acked == 20, what="20 acks")
                kafka.stop()
                for seq in range(20, 40):
                    pub.publish("factory/S1/temperature", reading_payload("S1", 25.0, seq))
                await eventually(lambda: len(run.processed) == 40, what="processed")
            assert tracker.stats.acked == 20  # stopped without Kafka's confirmation
            sink.close(0.5)
        kafka.start()
        with KafkaSink(ks, tracking=True) as sink:
            async with Running(settings, kafka=sink) as run:
                tracker = run.service.tracker
                assert tracker is not None
                await eventually(lambda: tracker.stats.acked == 20, timeout=30, what="again")
                assert sorted(seq for _, seq in run.processed) == list(range(20, 40))
    got = consume(kafka, ks.readings_topic, 20)
    assert {msgspec.json.decode(g.value)["seq"] for g in got} == set(range(20, 40))

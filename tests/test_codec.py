"""The MQTT codec: every packet kind round trip, byte-exact against the specification, framing
across every cut, remaining-length edges, CONNACK reasons, and malformed input."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqtt_anomaly.config import BrokerSettings
from mqtt_anomaly.transport import codec, connection
from mqtt_anomaly.transport.codec import MalformedPacketError, Packet, Will


@pytest.mark.parametrize("module", [codec, connection])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def one(packet: bytes) -> Packet:
    """The single packet ``packet`` holds, checked to be exactly one with nothing left."""
    packets, rest = codec.split(packet)
    assert rest == b"" and len(packets) == 1, (packets, rest)
    return packets[0]


# ---- round trips of every packet kind ---------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        {"client_id": "c"},
        {"client_id": "", "clean_session": True, "keepalive": 0},
        {"client_id": "detector", "clean_session": False, "keepalive": 65535},
        {"client_id": "d", "username": "operator"},
        {"client_id": "d", "username": "operator", "password": b"s3cret\x00\xff"},
        {"client_id": "SENSOR-01", "will": Will("factory/SENSOR-01/status", b"offline")},
        {
            "client_id": "SENSOR-02",
            "clean_session": False,
            "keepalive": 30,
            "username": "SENSOR-02",
            "password": b"pw",
            "will": Will("s/t", b"", qos=2, retain=False),
        },
        {"client_id": "x", "will": Will("w", b"bye", qos=0, retain=True)},
    ],
)
def test_connect_round_trip(fields: dict[str, object]) -> None:
    packet = one(codec.connect(**fields))  # type: ignore[arg-type]
    assert (packet.kind, packet.flags) == (codec.CONNECT, 0)
    got = codec.decode_connect(packet.body)
    expected = {"clean_session": True, "keepalive": 60, "username": None, "password": None}
    expected |= {"will": None, "level": codec.MQTT_311, "properties": b""} | fields
    assert {k: getattr(got, k) for k in expected} == expected


def test_connect_password_as_text_is_utf8() -> None:
    got = codec.decode_connect(one(codec.connect("c", username="u", password="pä")).body)
    assert got.password == "pä".encode()


@pytest.mark.parametrize(("present", "code"), [(False, 0), (True, 0), (False, 4), (False, 5)])
def test_connack_round_trip(present: bool, code: int) -> None:
    packet = one(codec.connack(present, code))
    assert (packet.kind, packet.flags) == (codec.CONNACK, 0)
    got = codec.decode_connack(packet.body)
    assert (got.session_present, got.return_code, got.accepted) == (present, code, code == 0)


@pytest.mark.parametrize(
    "fields",
    [
        {"topic": "t", "payload": b""},
        {"topic": "factory/S1/temperature", "payload": b"24.5", "qos": 1, "packet_id": 1},
        {"topic": "a/b", "payload": b"\x00" * 300, "qos": 2, "packet_id": 65535, "dup": True},
        {"topic": "health", "payload": b"{}", "retain": True},
        {"topic": "été/Ω", "payload": b"x", "qos": 1, "packet_id": 7, "retain": True, "dup": True},
    ],
)
def test_publish_round_trip(fields: dict[str, object]) -> None:
    packet = one(codec.publish(**fields))  # type: ignore[arg-type]
    assert packet.kind == codec.PUBLISH
    got = codec.decode_publish(packet.flags, packet.body)
    expected = {"qos": 0, "retain": False, "dup": False, "packet_id": 0, "properties": b""}
    expected |= fields
    assert {k: getattr(got, k) for k in expected} == expected


@given(
    topic=st.text(min_size=1, max_size=40),
    payload=st.binary(max_size=400),
    qos=st.integers(0, 2),
    packet_id=st.integers(1, 65535),
    retain=st.booleans(),
    dup=st.booleans(),
)
def test_publish_round_trip_any(
    topic: str, payload: bytes, qos: int, packet_id: int, retain: bool, dup: bool
) -> None:
    packet = one(
        codec.publish(topic, payload, qos=qos, packet_id=packet_id, retain=retain, dup=dup)
    )
    got = codec.decode_publish(packet.flags, packet.body)
    assert got == codec.Publish(topic, payload, qos, retain, dup, packet_id if qos else 0)


@pytest.mark.parametrize(
    ("encode", "kind", "flags"),
    [
        (codec.puback, codec.PUBACK, 0),
        (codec.pubrec, codec.PUBREC, 0),
        (codec.pubrel, codec.PUBREL, 2),  # [MQTT-3.6.1-1]
        (codec.pubcomp, codec.PUBCOMP, 0),
    ],
)
@pytest.mark.parametrize("packet_id", [1, 258, 65535])
def test_acknowledgements_round_trip(encode: object, kind: int, flags: int, packet_id: int) -> None:
    data = encode(packet_id)  # type: ignore[operator]
    assert len(data) == 4
    packet = one(data)
    assert (packet.kind, packet.flags) == (kind, flags)
    assert codec.decode_ack(packet.body) == codec.Ack(packet_id)


def test_subscribe_and_suback_round_trip() -> None:
    filters = (("factory/+/temperature", 1), ("factory/+/status", 0), ("#", 2))
    packet = one(codec.subscribe(4242, filters))
    assert (packet.kind, packet.flags) == (codec.SUBSCRIBE, 2)  # [MQTT-3.8.1-1]
    assert codec.decode_subscribe(packet.body) == codec.Subscribe(4242, filters)
    packet = one(codec.suback(4242, [1, 0, 0x80]))
    assert (packet.kind, packet.flags) == (codec.SUBACK, 0)
    got = codec.decode_suback(packet.body)
    assert (got.packet_id, got.return_codes, got.refused) == (4242, (1, 0, 0x80), (2,))


def test_unsubscribe_and_unsuback_round_trip() -> None:
    packet = one(codec.unsubscribe(9, ["a/#", "b/+"]))
    assert (packet.kind, packet.flags) == (codec.UNSUBSCRIBE, 2)  # [MQTT-3.10.1-1]
    assert codec.decode_unsubscribe(packet.body) == codec.Unsubscribe(9, ("a/#", "b/+"))
    packet = one(codec.unsuback(9))
    assert (packet.kind, packet.flags) == (codec.UNSUBACK, 0)
    assert codec.decode_unsuback(packet.body) == codec.Unsuback(9)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (codec.pingreq(), codec.PINGREQ),
        (codec.pingresp(), codec.PINGRESP),
        (codec.disconnect(), codec.DISCONNECT),
    ],
)
def test_packets_without_a_body(data: bytes, kind: int) -> None:
    assert one(data) == Packet(kind, 0, b"")


# ---- byte-exact against the specification ------------------------------------------------------
def test_bytes_as_the_specification_lays_them_out() -> None:
    # CONNECT: "MQTT", level 4, flags (user, password, will retain, will QoS 1, will, clean),
    # keepalive 10, then client id, will topic, will message, user name, password
    assert codec.connect(
        "id",
        keepalive=10,
        username="u",
        password=b"p",
        will=Will("w", b"m", qos=1, retain=True),
    ) == bytes.fromhex("10 1a0004 4d51545404ee000a0002 69640001 770001 6d0001 750001 70")
    assert codec.connect("id", clean_session=False, keepalive=60) == bytes.fromhex(
        "10 0e 0004 4d515454 04 00 003c 0002 6964"
    )
    # PUBLISH QoS 1, DUP and RETAIN: 0x3B; topic "a/b", packet id 10, payload "hi"
    assert codec.publish("a/b", b"hi", qos=1, dup=True, retain=True, packet_id=10) == (
        bytes.fromhex("3b 09 0003 612f62 000a 6869")
    )
    assert codec.subscribe(10, [("a/b", 1), ("c", 0)]) == bytes.fromhex(
        "82 0c 000a 0003 612f62 01 0001 63 00"
    )
    assert codec.unsubscribe(10, ["a/b"]) == bytes.fromhex("a2 07 000a 0003 612f62")
    assert codec.connack(True, 0) == bytes.fromhex("20 02 01 00")
    assert codec.suback(10, [1, 0x80]) == bytes.fromhex("90 04 000a 01 80")
    assert codec.pubrel(10) == bytes.fromhex("62 02 000a")
    assert codec.puback(10) == codec.PUBACK_HEAD + b"\x00\x0a"
    assert codec.pubrec(10) == codec.PUBREC_HEAD + b"\x00\x0a"
    assert codec.pubrel(10) == codec.PUBREL_HEAD + b"\x00\x0a"
    assert codec.pubcomp(10) == codec.PUBCOMP_HEAD + b"\x00\x0a"
    assert codec.pingreq() == b"\xc0\x00" and codec.disconnect() == b"\xe0\x00"


# ---- framing ---------------------------------------------------------------------------------
def stream() -> bytes:
    return b"".join(
        [
            codec.connack(False, 0),
            codec.publish("factory/S1/temperature", b"24.5", qos=1, packet_id=7),
            codec.publish("big", b"x" * 300, qos=0),  # two-byte remaining length
            codec.puback(8),
            codec.suback(2, [1]),
            codec.pingresp(),
            codec.publish("q2", b"{}", qos=2, packet_id=9, retain=True),
            codec.pubrel(9),
            codec.unsuback(3),
        ]
    )


def test_split_at_every_byte_offset() -> None:
    data = stream()
    whole, rest = codec.split(data)
    assert rest == b"" and len(whole) == 9
    for cut in range(len(data) + 1):
        first, rest = codec.split(data[:cut])
        assert b"".join(_raw(p) for p in first) + rest == data[:cut]  # nothing lost or made up
        second, tail = codec.split(rest + data[cut:])
        assert tail == b"" and first + second == whole, cut


def _raw(p: Packet) -> bytes:
    return bytes((p.kind << 4 | p.flags,)) + codec.encode_varint(len(p.body)) + p.body


def test_split_accepts_bytearray_and_memoryview() -> None:
    data = stream()
    assert codec.split(bytearray(data)) == codec.split(memoryview(data)) == codec.split(data)


def test_split_of_nothing_or_one_byte() -> None:
    assert codec.split(b"") == ([], b"")
    assert codec.split(b"\x30") == ([], b"\x30")


# ---- remaining length -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "size"),
    [
        (0, 1),
        (127, 1),
        (128, 2),
        (16383, 2),
        (16384, 3),
        (2097151, 3),
        (2097152, 4),
        (codec.MAX_REMAINING_LENGTH, 4),
    ],
)
def test_remaining_length_edges(n: int, size: int) -> None:
    encoded = codec.encode_varint(n)
    assert len(encoded) == size
    assert codec.decode_varint(b"\xff" + encoded + b"\x00", 1) == (n, 1 + size)
    for k in range(size):  # one byte short: not yet complete
        assert codec.decode_varint(encoded[:k], 0) is None


@pytest.mark.parametrize("n", [127, 128, 16383, 16384, 2097151, 2097152])
def test_packets_at_the_remaining_length_edges_split_whole(n: int) -> None:
    topic = "t"
    payload = b"p" * (n - 2 - len(topic))  # the topic field is 2 + len(topic) bytes
    data = codec.publish(topic, payload)
    header = 1 + len(codec.encode_varint(n))
    assert len(data) == header + n
    assert codec.split(data[:-1]) == ([], data[:-1])  # one byte short
    packet = one(data + b"")
    assert codec.decode_publish(packet.flags, packet.body).payload == payload


def test_remaining_length_limits() -> None:
    with pytest.raises(ValueError, match="remaining length"):
        codec.encode_varint(codec.MAX_REMAINING_LENGTH + 1)
    with pytest.raises(ValueError, match="remaining length"):
        codec.encode_varint(-1)
    with pytest.raises(MalformedPacketError, match="longer than four bytes"):
        codec.decode_varint(b"\xff\xff\xff\xff\x01", 0)
    with pytest.raises(MalformedPacketError, match="longer than four bytes"):
        codec.split(b"\x30\xff\xff\xff\xff\x01")


# ---- CONNACK reasons --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1, "unacceptable protocol version"),
        (2, "client identifier rejected"),
        (3, "server unavailable"),
        (4, "bad username or password"),
        (5, "not authorised"),
        (6, "code 6"),
        (0x87, "code 135"),
    ],
)
def test_connack_reasons(code: int, reason: str) -> None:
    got = codec.decode_connack(one(codec.connack(False, code)).body)
    assert not got.accepted and got.reason == reason == codec.connack_reason(code)
    message = connection.refusal(BrokerSettings(url="mqtt://broker:1884"), "detector", code)
    assert message == f"broker broker:1884 refused detector: {reason}"


def test_accepted_connack_has_no_reason() -> None:
    assert codec.decode_connack(b"\x00\x00").reason == ""


# ---- malformed input and invalid arguments ----------------------------------------------------
@pytest.mark.parametrize(
    ("decode", "packet"),
    [
        (
            codec.decode_connect,
            codec.connect("c", username="u", password=b"p", will=Will("w", b"m")),
        ),
        (codec.decode_connack, codec.connack(True, 0)),
        (codec.decode_ack, codec.puback(5)),
        (codec.decode_subscribe, codec.subscribe(1, [("a/b", 1)])),
        (codec.decode_suback, codec.suback(1, [1])),
        (codec.decode_unsubscribe, codec.unsubscribe(1, ["a/b"])),
        (codec.decode_unsuback, codec.unsuback(1)),
    ],
)
def test_truncated_bodies_are_malformed(decode: object, packet: bytes) -> None:
    body = one(packet).body
    for k in range(len(body)):
        with pytest.raises(MalformedPacketError):
            decode(body[:k])  # type: ignore[operator]


def test_truncated_publish_is_malformed() -> None:
    packet = one(codec.publish("topic", b"", qos=1, packet_id=3))
    for k in range(len(packet.body)):  # the topic or the packet id cut short
        with pytest.raises(MalformedPacketError, match="PUBLISH packet truncated"):
            codec.decode_publish(packet.flags, packet.body[:k])


@pytest.mark.parametrize(
    ("decode", "body", "why"),
    [
        (codec.decode_connack, b"\x02\x00", "reserved flags"),
        (codec.decode_connack, b"\x00\x00\x00", "1 bytes too many"),
        (codec.decode_ack, b"\x00\x01\x00", "1 bytes too many"),
        (codec.decode_connect, b"\x00\x04MQTX\x04\x02\x00\x00\x00\x00", "not MQTT"),
        (codec.decode_connect, b"\x00\x04MQTT\x03\x02\x00\x00\x00\x00", "protocol level 3"),
        (codec.decode_connect, b"\x00\x04MQTT\x04\x03\x00\x00\x00\x00", "reserved flag"),
        (codec.decode_connect, b"\x00\x04MQTT\x04\x1e\x00\x00\x00\x00", "Will QoS 3"),
        (codec.decode_connect, b"\x00\x04MQTT\x04\x02\x00\x00\x00\x01\xff", "not UTF-8"),
        (codec.decode_suback, b"\x00\x01", "without a return code"),
        (codec.decode_subscribe, b"\x00\x01", "without a filter"),
        (codec.decode_unsubscribe, b"\x00\x01", "without a filter"),
    ],
)
def test_malformed_bodies(decode: object, body: bytes, why: str) -> None:
    with pytest.raises(MalformedPacketError, match=why):
        decode(body)  # type: ignore[operator]


def test_publish_with_qos_3_is_malformed() -> None:
    with pytest.raises(MalformedPacketError, match="QoS 3"):
        codec.decode_publish(0x06, b"\x00\x01t\x00\x01")


@pytest.mark.parametrize(
    ("call", "why"),
    [
        (lambda: codec.publish("t", b"", qos=3, packet_id=1), "QoS 3"),
        (lambda: codec.publish("t", b"", qos=1), "packet id 0"),
        (lambda: codec.publish("t", b"", qos=1, packet_id=65536), "packet id 65536"),
        (lambda: codec.publish("t", b"", properties=b"\x01\x01"), "need MQTT 5"),
        (lambda: codec.publish("t", b"", level=3), "protocol level 3"),
        (lambda: codec.publish("t" * 65536, b""), "at most 65,535"),
        (lambda: codec.connect("c", password=b"p"), "needs a username"),
        (lambda: codec.connect("c", keepalive=65536), "keepalive"),
        (lambda: codec.connect("c", will=Will("w", b"", qos=3)), "Will QoS 3"),
        (lambda: codec.connect("c", level=3), "protocol level 3"),
        (lambda: codec.puback(0), "packet id 0"),
        (lambda: codec.puback(1, 0x10), "need MQTT 5"),
        (lambda: codec.subscribe(1, []), "at least one filter"),
        (lambda: codec.unsubscribe(1, []), "at least one filter"),
        (lambda: codec.unsuback(1, [0]), "need MQTT 5"),
        (lambda: codec.disconnect(0x04), "need MQTT 5"),
    ],
)
def test_invalid_arguments(call: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        call()  # type: ignore[operator]

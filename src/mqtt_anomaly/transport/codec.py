"""The MQTT packet codec: bytes in, bytes out, no sockets and no event loop.

Every MQTT packet of the project is built and parsed here: the service's connection
(:mod:`.lean`), the embedded broker's probe (:mod:`.embedded`) and the benchmark's raw clients
(:mod:`mqtt_anomaly.bench.rawmqtt`, :mod:`mqtt_anomaly.bench.loadgen`).

- **Encoding**: one function per packet kind (:func:`connect`, :func:`publish`, :func:`puback`,
  :func:`subscribe`, ...) returns the whole packet as ``bytes``, ready to write.
- **Framing**: :func:`split` cuts a byte buffer into whole :class:`Packet` s (type, flags,
  body) and returns the incomplete rest, to be prepended to the next read.
- **Decoding**: one function per packet kind turns a packet's body into a frozen dataclass
  (:func:`decode_connack` → :class:`Connack`, :func:`decode_publish` → :class:`Publish`, ...).
  A body that does not parse raises :class:`MalformedPacketError` (a :class:`ValueError` with a
  one-line message), never an :class:`IndexError`.

MQTT 3.1.1 (protocol level 4) and MQTT 5 (level 5). The functions of every packet that MQTT 5
changes take a ``level``; those of packets that carry properties in MQTT 5 take
``properties`` (the encoded property block, written only for level 5:
:func:`encode_properties`, :func:`decode_properties`), and the decoded acknowledgements hold
reason codes (:func:`reason_text`).

>>> packets, rest = split(puback(7) + pingreq() + puback(8)[:3])
>>> [(p.kind, p.body) for p in packets], rest
([(4, b'\\x00\\x07'), (12, b'')], b'@\\x02\\x00')
>>> decode_ack(packets[0].body).packet_id
7
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

MQTT_311 = 4
"""Protocol level of MQTT 3.1.1."""
MQTT_5 = 5
"""Protocol level of MQTT 5."""

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

MAX_REMAINING_LENGTH = 268_435_455
"""The largest remaining length four varint bytes can hold (256 MB)."""

PUBACK_HEAD = b"\x40\x02"
"""The fixed header of a PUBACK (MQTT 3.1.1): append the two bytes of the packet id."""
PUBREC_HEAD = b"\x50\x02"
PUBREL_HEAD = b"\x62\x02"
PUBCOMP_HEAD = b"\x70\x02"
PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad username or password",
    5: "not authorised",
}
"""MQTT 3.1.1 CONNACK return codes other than 0 (accepted), as operators read them."""

SUBACK_FAILURE = 0x80
"""A SUBACK return code at or above this refuses the filter (3.1.1: exactly 0x80)."""

_U16 = struct.Struct("!H")


class MalformedPacketError(ValueError):
    """Bytes that are not a well-formed MQTT packet (the message says what is wrong)."""


# ---- primitives ------------------------------------------------------------------------------
def encode_varint(n: int) -> bytes:
    """The remaining-length (variable byte integer) encoding of ``n``.

    >>> [encode_varint(n).hex() for n in (0, 127, 128, 16383, 16384)]
    ['00', '7f', '8001', 'ff7f', '808001']
    """
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n} outside 0..{MAX_REMAINING_LENGTH}")
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """The variable byte integer at ``buf[pos:]`` and the position after it; None when
    ``buf`` ends before its last byte. More than four bytes raise :class:`MalformedPacketError`.

    >>> decode_varint(b"\\x80\\x01!", 0), decode_varint(b"\\x80", 0)
    ((128, 2), None)
    """
    value, shift, n = 0, 0, len(buf)
    for i in range(pos, pos + 4):
        if i >= n:
            return None
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise MalformedPacketError("remaining length longer than four bytes")


def encode_string(s: str | bytes) -> bytes:
    """A length-prefixed UTF-8 string (or binary data) field."""
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise ValueError(f"string field of {len(b)} bytes (at most 65,535)")
    return _U16.pack(len(b)) + b


def _packet(head: int, body: bytes) -> bytes:
    return bytes((head,)) + encode_varint(len(body)) + body


def _properties(level: int, properties: bytes) -> bytes:
    """The property block of an MQTT 5 packet (nothing for 3.1.1, where there are none)."""
    if level >= MQTT_5:
        return encode_varint(len(properties)) + properties
    if properties:
        raise ValueError("properties need MQTT 5 (level 5)")
    return b""


def _check_level(level: int) -> None:
    if level not in (MQTT_311, MQTT_5):
        raise ValueError(f"protocol level {level}: only 4 (MQTT 3.1.1) and 5 (MQTT 5)")


class _Reader:
    """Reads fields from one packet body, raising :class:`MalformedPacketError` past its end."""

    __slots__ = ("body", "kind", "pos")

    def __init__(self, body: bytes, kind: str) -> None:
        self.body, self.kind, self.pos = body, kind, 0

    def short(self) -> MalformedPacketError:
        return MalformedPacketError(f"{self.kind} packet truncated ({len(self.body)} bytes)")

    def u8(self) -> int:
        if self.pos >= len(self.body):
            raise self.short()
        self.pos += 1
        return self.body[self.pos - 1]

    def u16(self) -> int:
        if self.pos + 2 > len(self.body):
            raise self.short()
        self.pos += 2
        return (self.body[self.pos - 2] << 8) | self.body[self.pos - 1]

    def binary(self) -> bytes:
        end = self.pos + 2 + self.u16()
        if end > len(self.body):
            raise self.short()
        out, self.pos = self.body[self.pos : end], end
        return out

    def text(self) -> str:
        try:
            return self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacketError(f"{self.kind} packet: a string is not UTF-8") from exc

    def properties(self, level: int) -> bytes:
        if level < MQTT_5:
            return b""
        got = decode_varint(self.body, self.pos)
        if got is None or got[0] + got[1] > len(self.body):
            raise self.short()
        length, start = got
        self.pos = start + length
        return self.body[start : self.pos]

    def rest(self) -> bytes:
        out, self.pos = self.body[self.pos :], len(self.body)
        return out

    def left(self) -> int:
        return len(self.body) - self.pos

    def done(self) -> None:
        if self.pos != len(self.body):
            raise MalformedPacketError(f"{self.kind} packet: {self.left()} bytes too many")


# ---- MQTT 5 properties -----------------------------------------------------------------------
PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE = 0x01, 0x02, 0x03
SESSION_EXPIRY, ASSIGNED_CLIENT_ID, SERVER_KEEPALIVE, REASON_STRING = 0x11, 0x12, 0x13, 0x1F
RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS, MAXIMUM_QOS = 0x21, 0x22, 0x23, 0x24
USER_PROPERTY, MAXIMUM_PACKET_SIZE = 0x26, 0x27
# property id → wire type: b byte, h two-byte, i four-byte, v varint, s string, d binary,
# p string pair (MQTT 5, 2.2.2.2)
_PROPERTY_TYPES: dict[int, str] = {
    0x01: "b",
    0x02: "i",
    0x03: "s",
    0x08: "s",
    0x09: "d",
    0x0B: "v",
    0x11: "i",
    0x12: "s",
    0x13: "h",
    0x15: "s",
    0x16: "d",
    0x17: "b",
    0x18: "i",
    0x19: "b",
    0x1A: "s",
    0x1C: "s",
    0x1F: "s",
    0x21: "h",
    0x22: "h",
    0x23: "h",
    0x24: "b",
    0x25: "b",
    0x26: "p",
    0x27: "i",
    0x28: "b",
    0x29: "b",
    0x2A: "b",
}
PropertyValue = int | str | bytes | tuple[str, str]


def encode_properties(props: Sequence[tuple[int, PropertyValue]]) -> bytes:
    """An MQTT 5 property block (without its length prefix, which the packet functions add).

    >>> encode_properties([(MESSAGE_EXPIRY, 60), (USER_PROPERTY, ("unit", "C"))]).hex(" ")
    '02 00 00 00 3c 26 00 04 75 6e 69 74 00 01 43'
    """
    out = bytearray()
    for pid, value in props:
        kind = _PROPERTY_TYPES.get(pid)
        if kind is None:
            raise ValueError(f"unknown MQTT 5 property 0x{pid:02x}")
        out.append(pid)
        if kind == "p" and isinstance(value, tuple):
            out += encode_string(value[0]) + encode_string(value[1])
        elif kind in "sd" and isinstance(value, str | bytes):
            out += encode_string(value)
        elif isinstance(value, int):
            if kind == "b":
                out.append(value)
            elif kind == "h":
                out += _U16.pack(value)
            elif kind == "i":
                out += struct.pack("!I", value)
            else:
                out += encode_varint(value)
        else:
            raise ValueError(f"MQTT 5 property 0x{pid:02x}: {value!r} is not a {kind}")
    return bytes(out)


def decode_properties(block: bytes) -> list[tuple[int, PropertyValue]]:
    """The properties of a block (as the packet decoders return it), in order.

    >>> decode_properties(encode_properties([(RECEIVE_MAXIMUM, 20), (REASON_STRING, "no")]))
    [(33, 20), (31, 'no')]
    """
    r = _Reader(block, "properties")
    out: list[tuple[int, PropertyValue]] = []
    while r.left():
        pid = r.u8()
        kind = _PROPERTY_TYPES.get(pid)
        value: PropertyValue
        if kind is None:
            raise MalformedPacketError(f"unknown MQTT 5 property 0x{pid:02x}")
        if kind == "b":
            value = r.u8()
        elif kind == "h":
            value = r.u16()
        elif kind == "i":
            value = (r.u16() << 16) | r.u16()
        elif kind == "v":
            got = decode_varint(r.body, r.pos)
            if got is None:
                raise r.short()
            value, r.pos = got
        elif kind == "s":
            value = r.text()
        elif kind == "d":
            value = r.binary()
        else:
            value = (r.text(), r.text())
        out.append((pid, value))
    return out


REASON_CODES = {
    0x04: "disconnect with Will message",
    0x10: "no matching subscribers",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA0: "maximum connect time",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}
"""MQTT 5 reason codes (CONNACK, PUBACK, SUBACK, DISCONNECT) as operators read them."""


def reason_text(code: int, properties: bytes = b"") -> str:
    """One line for an MQTT 5 reason code, with the broker's reason string if it sent one.

    >>> reason_text(0x87, encode_properties([(REASON_STRING, "ACL")]))
    'not authorized (0x87: ACL)'
    """
    text = REASON_CODES.get(code, "reason")
    why = ""
    if properties:
        try:
            why = next((str(v) for k, v in decode_properties(properties) if k == REASON_STRING), "")
        except MalformedPacketError:
            why = ""
    return f"{text} (0x{code:02x}{': ' + why if why else ''})"


# ---- framing --------------------------------------------------------------------------------
class Packet(NamedTuple):
    """One whole packet: its type (1-14), the flags of its first byte, its body."""

    kind: int
    flags: int
    body: bytes


def split(buf: bytes | bytearray | memoryview) -> tuple[list[Packet], bytes]:
    """The whole packets at the start of ``buf`` and the incomplete rest.

    A remaining length longer than four bytes raises :class:`MalformedPacketError`.

    >>> packets, rest = split(publish("a/b", b"x") + b"\\x30")
    >>> packets[0].kind == PUBLISH, packets[0].body, rest
    (True, b'\\x00\\x03a/bx', b'0')
    """
    data = bytes(buf)
    out: list[Packet] = []
    pos, n = 0, len(data)
    while n - pos >= 2:
        got = decode_varint(data, pos + 1)
        if got is None:
            break
        length, start = got
        end = start + length
        if end > n:
            break
        head = data[pos]
        out.append(Packet(head >> 4, head & 0x0F, data[start:end]))
        pos = end
    return out, data[pos:]


# ---- CONNECT / CONNACK -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Will:
    """A Last Will: published by the broker if the client vanishes without DISCONNECT.

    ``properties``: the Will's MQTT 5 property block (level 5 only).
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    properties: bytes = b""


@dataclass(frozen=True, slots=True)
class Connect:
    """A decoded CONNECT (what a broker, or a test standing in for one, receives)."""

    client_id: str
    clean_session: bool
    keepalive: int
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    level: int = MQTT_311
    properties: bytes = b""


def connect(
    client_id: str,
    *,
    clean_session: bool = True,
    keepalive: int = 60,
    username: str | None = None,
    password: str | bytes | None = None,
    will: Will | None = None,
    level: int = MQTT_311,
    properties: bytes = b"",
) -> bytes:
    """A CONNECT packet. A password needs a username (MQTT 3.1.1 3.1.2.9).

    >>> connect("c1", keepalive=5).hex(" ")
    '10 0e 00 04 4d 51 54 54 04 02 00 05 00 02 63 31'
    >>> c = decode_connect(split(connect("c1", clean_session=False, username="u"))[0][0].body)
    >>> c.client_id, c.clean_session, c.username, c.password
    ('c1', False, 'u', None)
    """
    _check_level(level)
    if password is not None and username is None:
        raise ValueError("a CONNECT password needs a username")
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError(f"keepalive {keepalive} outside 0..65535")
    flags = 0x02 if clean_session else 0
    payload = encode_string(client_id)
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise ValueError(f"Will QoS {will.qos}")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += (
            _properties(level, will.properties)
            + encode_string(will.topic)
            + encode_string(will.payload)
        )
    if username is not None:
        flags |= 0x80
        payload += encode_string(username)
        if password is not None:
            flags |= 0x40
            payload += encode_string(password)
    variable = encode_string("MQTT") + bytes((level, flags)) + _U16.pack(keepalive)
    return _packet(CONNECT << 4, variable + _properties(level, properties) + payload)


def decode_connect(body: bytes) -> Connect:
    """The fields of a CONNECT body (its protocol level is read from it)."""
    r = _Reader(body, "CONNECT")
    if r.text() != "MQTT":
        raise MalformedPacketError("CONNECT packet: protocol name is not MQTT")
    level, flags, keepalive = r.u8(), r.u8(), r.u16()
    if level not in (MQTT_311, MQTT_5):
        raise MalformedPacketError(f"CONNECT packet: protocol level {level}")
    if flags & 0x01:
        raise MalformedPacketError("CONNECT packet: reserved flag set")
    properties = r.properties(level)
    client_id = r.text()
    will = None
    if flags & 0x04:
        if (flags >> 3) & 3 == 3:
            raise MalformedPacketError("CONNECT packet: Will QoS 3")
        will_props = r.properties(level)
        will = Will(r.text(), r.binary(), (flags >> 3) & 3, bool(flags & 0x20), will_props)
    username = r.text() if flags & 0x80 else None
    password = r.binary() if flags & 0x40 else None
    r.done()
    return Connect(
        client_id, bool(flags & 0x02), keepalive, username, password, will, level, properties
    )


@dataclass(frozen=True, slots=True)
class Connack:
    """A decoded CONNACK: 3.1.1 return code (MQTT 5: reason code), 0 = accepted."""

    session_present: bool
    return_code: int
    properties: bytes = b""

    @property
    def accepted(self) -> bool:
        return self.return_code == 0

    @property
    def reason(self) -> str:
        """Why the broker refused us, as one short phrase ("" when accepted)."""
        return "" if self.return_code == 0 else connack_reason(self.return_code)


def connack_reason(code: int, level: int = MQTT_311) -> str:
    """The text of a CONNACK return code other than 0 (MQTT 5: a reason code).

    >>> connack_reason(5), connack_reason(42), connack_reason(0x86, MQTT_5)
    ('not authorised', 'code 42', 'bad user name or password (0x86)')
    """
    if level >= MQTT_5:
        return reason_text(code)
    return CONNACK_REASONS.get(code, f"code {code}")


def connack(
    session_present: bool, return_code: int = 0, *, level: int = MQTT_311, properties: bytes = b""
) -> bytes:
    """A CONNACK packet (the broker's side; for tests and probes)."""
    body = bytes((int(session_present), return_code)) + _properties(level, properties)
    return _packet(CONNACK << 4, body)


def decode_connack(body: bytes, level: int = MQTT_311) -> Connack:
    """The fields of a CONNACK body.

    >>> decode_connack(b"\\x01\\x00"), decode_connack(b"\\x00\\x05").reason
    (Connack(session_present=True, return_code=0, properties=b''), 'not authorised')
    """
    r = _Reader(body, "CONNACK")
    flags, code = r.u8(), r.u8()
    if flags & 0xFE:
        raise MalformedPacketError("CONNACK packet: reserved flags set")
    properties = r.properties(level)
    r.done()
    return Connack(bool(flags), code, properties)


# ---- PUBLISH and its acknowledgements ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Publish:
    """A decoded PUBLISH (``packet_id`` is 0 at QoS 0)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0
    properties: bytes = b""


def publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 0,
    level: int = MQTT_311,
    properties: bytes = b"",
) -> bytes:
    """A PUBLISH packet; QoS 1 and 2 need a ``packet_id`` (1-65535).

    >>> publish("t", b"hi", qos=1, packet_id=258).hex(" ")
    '32 07 00 01 74 01 02 68 69'
    """
    head = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    # the packet every outgoing message takes: the common case without helper calls
    t = topic.encode()
    if len(t) > 0xFFFF:
        raise ValueError(f"string field of {len(t)} bytes (at most 65,535)")
    if qos == 0:
        var = _U16.pack(len(t)) + t
    elif 0 < qos < 3 and 0 < packet_id <= 0xFFFF:
        var = _U16.pack(len(t)) + t + _U16.pack(packet_id)
    else:
        raise ValueError(f"PUBLISH with QoS {qos} and packet id {packet_id}")
    if level != 4 or properties:
        _check_level(level)
        var += _properties(level, properties)
    n = len(var) + len(payload)
    if n < 0x80:
        return bytes((head, n)) + var + payload
    return bytes((head,)) + encode_varint(n) + var + payload


def decode_publish(flags: int, body: bytes, level: int = MQTT_311) -> Publish:
    """The fields of a PUBLISH whose first byte had ``flags`` (its low four bits).

    >>> decode_publish(0x02, split(publish("t", b"hi", qos=1, packet_id=9))[0][0].body)
    Publish(topic='t', payload=b'hi', qos=1, retain=False, dup=False, packet_id=9, properties=b'')
    """
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MalformedPacketError("PUBLISH packet: QoS 3")
    r = _Reader(body, "PUBLISH")
    topic = r.text()
    packet_id = r.u16() if qos else 0
    properties = r.properties(level)
    return Publish(
        topic, r.rest(), qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, properties
    )


@dataclass(frozen=True, slots=True)
class Ack:
    """A decoded PUBACK, PUBREC, PUBREL or PUBCOMP (MQTT 5: with a reason code)."""

    packet_id: int
    reason_code: int = 0
    properties: bytes = b""


def _ack(head: int, packet_id: int, reason_code: int, level: int, properties: bytes) -> bytes:
    if not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id} outside 1..65535")
    if level < MQTT_5:
        if reason_code or properties:
            raise ValueError("reason codes and properties need MQTT 5 (level 5)")
        return bytes((head, 2)) + _U16.pack(packet_id)
    body = _U16.pack(packet_id)
    if reason_code or properties:  # MQTT 5 may leave out a success code with no properties
        body += bytes((reason_code,)) + _properties(level, properties)
    return _packet(head, body)


def puback(
    packet_id: int, reason_code: int = 0, *, level: int = MQTT_311, properties: bytes = b""
) -> bytes:
    """A PUBACK (QoS 1 received).

    >>> puback(7) == PUBACK_HEAD + b"\\x00\\x07"
    True
    """
    return _ack(PUBACK << 4, packet_id, reason_code, level, properties)


def pubrec(
    packet_id: int, reason_code: int = 0, *, level: int = MQTT_311, properties: bytes = b""
) -> bytes:
    """A PUBREC (QoS 2 received, first step)."""
    return _ack(PUBREC << 4, packet_id, reason_code, level, properties)


def pubrel(
    packet_id: int, reason_code: int = 0, *, level: int = MQTT_311, properties: bytes = b""
) -> bytes:
    """A PUBREL (QoS 2 released; its fixed header flags are 0b0010)."""
    return _ack(PUBREL << 4 | 0x02, packet_id, reason_code, level, properties)


def pubcomp(
    packet_id: int, reason_code: int = 0, *, level: int = MQTT_311, properties: bytes = b""
) -> bytes:
    """A PUBCOMP (QoS 2 complete)."""
    return _ack(PUBCOMP << 4, packet_id, reason_code, level, properties)


def decode_ack(body: bytes, level: int = MQTT_311) -> Ack:
    """The packet id (and, for MQTT 5, reason code) of a PUBACK/PUBREC/PUBREL/PUBCOMP body."""
    r = _Reader(body, "acknowledgement")
    packet_id = r.u16()
    if level < MQTT_5:
        r.done()
        return Ack(packet_id)
    code = r.u8() if r.left() else 0
    properties = r.properties(level) if r.left() else b""
    r.done()
    return Ack(packet_id, code, properties)


# ---- SUBSCRIBE / SUBACK / UNSUBSCRIBE --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Subscribe:
    """A decoded SUBSCRIBE: (filter, requested QoS; MQTT 5: subscription options) pairs."""

    packet_id: int
    filters: tuple[tuple[str, int], ...]
    properties: bytes = b""


@dataclass(frozen=True, slots=True)
class Suback:
    """A decoded SUBACK: one return code per filter (granted QoS, or >= 0x80: refused)."""

    packet_id: int
    return_codes: tuple[int, ...]
    properties: bytes = b""

    @property
    def refused(self) -> tuple[int, ...]:
        """The positions of the refused filters."""
        return tuple(i for i, c in enumerate(self.return_codes) if c >= SUBACK_FAILURE)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """A decoded UNSUBSCRIBE."""

    packet_id: int
    filters: tuple[str, ...]
    properties: bytes = b""


def subscribe(
    packet_id: int,
    filters: Sequence[tuple[str, int]],
    *,
    level: int = MQTT_311,
    properties: bytes = b"",
) -> bytes:
    """A SUBSCRIBE to one or more ``(filter, qos)`` (MQTT 5: the options byte for ``qos``).

    >>> subscribe(1, [("a/#", 1)]).hex(" ")
    '82 08 00 01 00 03 61 2f 23 01'
    """
    if not filters:
        raise ValueError("SUBSCRIBE needs at least one filter")
    if not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id} outside 1..65535")
    body = _U16.pack(packet_id) + _properties(level, properties)
    body += b"".join(encode_string(f) + bytes((q,)) for f, q in filters)
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def decode_subscribe(body: bytes, level: int = MQTT_311) -> Subscribe:
    """The fields of a SUBSCRIBE body."""
    r = _Reader(body, "SUBSCRIBE")
    packet_id = r.u16()
    properties = r.properties(level)
    filters = []
    while r.left():
        filters.append((r.text(), r.u8()))
    if not filters:
        raise MalformedPacketError("SUBSCRIBE packet without a filter")
    return Subscribe(packet_id, tuple(filters), properties)


def suback(
    packet_id: int, return_codes: Sequence[int], *, level: int = MQTT_311, properties: bytes = b""
) -> bytes:
    """A SUBACK (the broker's side; for tests)."""
    body = _U16.pack(packet_id) + _properties(level, properties) + bytes(return_codes)
    return _packet(SUBACK << 4, body)


def decode_suback(body: bytes, level: int = MQTT_311) -> Suback:
    """The fields of a SUBACK body.

    >>> decode_suback(b"\\x00\\x01\\x01\\x80").refused
    (1,)
    """
    r = _Reader(body, "SUBACK")
    packet_id = r.u16()
    properties = r.properties(level)
    codes = tuple(r.rest())
    if not codes:
        raise MalformedPacketError("SUBACK packet without a return code")
    return Suback(packet_id, codes, properties)


def unsubscribe(
    packet_id: int, filters: Sequence[str], *, level: int = MQTT_311, properties: bytes = b""
) -> bytes:
    """An UNSUBSCRIBE from one or more filters."""
    if not filters:
        raise ValueError("UNSUBSCRIBE needs at least one filter")
    if not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id} outside 1..65535")
    body = _U16.pack(packet_id) + _properties(level, properties)
    body += b"".join(encode_string(f) for f in filters)
    return _packet(UNSUBSCRIBE << 4 | 0x02, body)


def decode_unsubscribe(body: bytes, level: int = MQTT_311) -> Unsubscribe:
    """The fields of an UNSUBSCRIBE body."""
    r = _Reader(body, "UNSUBSCRIBE")
    packet_id = r.u16()
    properties = r.properties(level)
    filters = []
    while r.left():
        filters.append(r.text())
    if not filters:
        raise MalformedPacketError("UNSUBSCRIBE packet without a filter")
    return Unsubscribe(packet_id, tuple(filters), properties)


@dataclass(frozen=True, slots=True)
class Unsuback:
    """A decoded UNSUBACK (MQTT 5: one reason code per filter; 3.1.1 has none)."""

    packet_id: int
    reason_codes: tuple[int, ...] = ()
    properties: bytes = b""


def unsuback(
    packet_id: int,
    reason_codes: Sequence[int] = (),
    *,
    level: int = MQTT_311,
    properties: bytes = b"",
) -> bytes:
    """An UNSUBACK (the broker's side; for tests)."""
    if level < MQTT_5 and reason_codes:
        raise ValueError("UNSUBACK reason codes need MQTT 5 (level 5)")
    body = _U16.pack(packet_id) + _properties(level, properties) + bytes(reason_codes)
    return _packet(UNSUBACK << 4, body)


def decode_unsuback(body: bytes, level: int = MQTT_311) -> Unsuback:
    """The fields of an UNSUBACK body."""
    r = _Reader(body, "UNSUBACK")
    packet_id = r.u16()
    properties = r.properties(level)
    codes = tuple(r.rest())
    if level < MQTT_5 and codes:
        raise MalformedPacketError(f"UNSUBACK packet: {len(codes)} bytes too many")
    return Unsuback(packet_id, codes, properties)


# ---- packets without a body -----------------------------------------------------------------
def pingreq() -> bytes:
    """A PINGREQ (keepalive)."""
    return PINGREQ_PACKET


def pingresp() -> bytes:
    """A PINGRESP (the broker's answer to PINGREQ)."""
    return PINGRESP_PACKET


def disconnect(reason_code: int = 0, *, level: int = MQTT_311, properties: bytes = b"") -> bytes:
    """A DISCONNECT (MQTT 3.1.1: no body, and the broker drops our Last Will)."""
    if level < MQTT_5:
        if reason_code or properties:
            raise ValueError("reason codes and properties need MQTT 5 (level 5)")
        return DISCONNECT_PACKET
    if not reason_code and not properties:
        return DISCONNECT_PACKET
    return _packet(DISCONNECT << 4, bytes((reason_code,)) + _properties(level, properties))

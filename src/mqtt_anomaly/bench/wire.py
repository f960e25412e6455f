"""Minimal MQTT 3.1.1 packet codec for the benchmark's load generator and baseline.

The benchmark needs a publisher that is never the bottleneck (pre-encoded packets written in
large batches) and a baseline subscriber that does nothing but count. Client libraries spend
most of their time per message in Python; these helpers do only what the measurement needs.
They are not a general MQTT client.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14


def varint(n: int) -> bytes:
    """MQTT remaining-length encoding."""
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect(client_id: str, *, clean: bool = True, keepalive: int = 60) -> bytes:
    flags = 0x02 if clean else 0x00
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _str(client_id)
    return bytes([CONNECT << 4]) + varint(len(body)) + body


def subscribe(mid: int, topic_filter: str | Sequence[str], qos: int = 1) -> bytes:
    """SUBSCRIBE to one filter or several, all at ``qos``."""
    filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
    body = struct.pack("!H", mid) + b"".join(_str(f) + bytes([qos]) for f in filters)
    return bytes([(SUBSCRIBE << 4) | 0x02]) + varint(len(body)) + body


def publish(
    topic: str, payload: bytes, *, qos: int = 0, mid: int = 0, retain: bool = False
) -> bytes:
    var = _str(topic) + (struct.pack("!H", mid) if qos else b"")
    head = (PUBLISH << 4) | (qos << 1) | int(retain)
    return bytes([head]) + varint(len(var) + len(payload)) + var + payload


def puback(mid: int) -> bytes:
    return bytes([PUBACK << 4, 2]) + struct.pack("!H", mid)


def disconnect() -> bytes:
    return bytes([DISCONNECT << 4, 0])


def split(buf: bytes) -> tuple[list[tuple[int, int, int, int]], int]:
    """Whole packets in ``buf`` as (type, flags, body_start, body_end); and bytes consumed.

    >>> pkts, used = split(puback(7) + puback(8)[:2])
    >>> [(t, buf_s, buf_e) for t, _, buf_s, buf_e in pkts], used
    ([(4, 2, 4)], 4)
    """
    out: list[tuple[int, int, int, int]] = []
    pos, n = 0, len(buf)
    while n - pos >= 2:
        length, mult, i = 0, 1, pos + 1
        while i < n:
            byte = buf[i]
            length += (byte & 0x7F) * mult
            mult <<= 7
            i += 1
            if not byte & 0x80:
                break
        else:
            break  # length bytes incomplete
        end = i + length
        if end > n:
            break
        out.append((buf[pos] >> 4, buf[pos] & 0x0F, i, end))
        pos = end
    return out, pos

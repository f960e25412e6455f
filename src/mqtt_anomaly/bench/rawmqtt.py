"""Blocking raw-socket MQTT 3.1.1 clients for the load generator and the baseline.

- :func:`open_client` connects (clean session, no keepalive) and waits for the CONNACK;
- :func:`subscribe` subscribes and waits for the SUBACK;
- :class:`AckDrain` is a thread that reads and counts the broker's PUBACKs to a publisher;
- :func:`count_messages` is the counting subscriber: ``recv_into`` one preallocated buffer,
  packet boundaries found in place, PUBACKs written in batches, short pauses when caught up.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import BrokerError
from ..transport import codec

BUFFER = 1 << 22
_PUBACK_HEAD = codec.PUBACK_HEAD
_DONTWAIT = socket.MSG_DONTWAIT
COALESCE = 0.001
"""Seconds to sleep after a short read: on a busy machine, waking up for every few packets
costs the broker and us more than it gains; a 1 ms pause lets the next read take hundreds."""


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 1883


def _read_packet(sock: socket.socket) -> codec.Packet:
    """Read the next whole packet from ``sock`` (the first answer to a request: nothing is
    expected after it until the next request)."""
    pending = b""
    while True:
        try:
            packets, _ = codec.split(pending)
        except codec.MalformedPacketError as exc:
            raise BrokerError(f"the broker sent a malformed packet: {exc}") from exc
        if packets:
            return packets[0]
        data = sock.recv(65536)
        if not data:
            raise BrokerError("the broker closed the connection")
        pending += data


def open_client(url: str, client_id: str, *, timeout: float = 10.0) -> socket.socket:
    """A connected MQTT session on a blocking socket with TCP_NODELAY (CONNACK checked)."""
    host, port = host_port(url)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise BrokerError(f"cannot reach broker at {host}:{port}: {exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(codec.connect(client_id, clean_session=True, keepalive=0))
    packet = _read_packet(sock)
    why = "no CONNACK"
    if packet.kind == codec.CONNACK:
        try:
            connack = codec.decode_connack(packet.body)
        except codec.MalformedPacketError as exc:
            why = str(exc)
        else:
            if connack.accepted:
                return sock
            why = connack.reason
    sock.close()
    raise BrokerError(f"broker {host}:{port} refused the benchmark client {client_id}: {why}")


def subscribe(sock: socket.socket, filters: Sequence[str], qos: int = 1) -> None:
    """Subscribe to ``filters`` and wait for the SUBACK (nothing else is expected before it)."""
    sock.sendall(codec.subscribe(1, [(f, qos) for f in filters]))
    packet = _read_packet(sock)
    try:
        refused = packet.kind != codec.SUBACK or bool(codec.decode_suback(packet.body).refused)
    except codec.MalformedPacketError:
        refused = True
    if refused:
        raise BrokerError(f"broker refused the subscription to {', '.join(filters)}")


class AckDrain(threading.Thread):
    """Reads a publisher's socket in the background; every packet there is a 4-byte PUBACK."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True, name="puback-drain")
        self.sock = sock
        self.bytes = 0

    @property
    def acked(self) -> int:
        return self.bytes // 4

    def run(self) -> None:
        buf = bytearray(1 << 20)
        try:
            while True:
                got = self.sock.recv_into(buf)
                if not got:
                    return
                self.bytes += got
                if got < 1 << 16:
                    time.sleep(COALESCE)  # let acknowledgements pile up: fewer wake-ups
        except OSError:
            return

    def wait(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` PUBACKs have arrived."""
        deadline = time.monotonic() + timeout
        while self.acked < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True


@dataclass(slots=True)
class CountResult:
    """What the counting subscriber saw; times are ``time.monotonic()``."""

    count: int = 0
    t_first: float = 0.0
    t_mark: float = 0.0
    count_mark: int = 0
    t_last: float = 0.0


def count_messages(
    sock: socket.socket,
    expected: int,
    *,
    mark: int = 0,
    idle: float = 5.0,
    on_first: Callable[[], None] | None = None,
    ack_bytes: int = 1 << 14,
    coalesce: float = COALESCE,
) -> CountResult:
    """Count PUBLISH packets until ``expected`` arrived or nothing came for ``idle`` seconds.

    QoS 1 messages are acknowledged in batches: PUBACKs are written when ``ack_bytes`` of
    them are waiting or when the socket has nothing more to read. After a short read it
    pauses ``coalesce`` seconds (see :data:`COALESCE`).
    ``mark``: the time and count when the count first reaches it are recorded (warm-up).
    """
    res = CountResult()
    buf = bytearray(BUFFER)
    mv = memoryview(buf)
    start = end = count = 0
    marked = mark <= 0
    acks = bytearray()
    sock.settimeout(idle)
    monotonic = time.monotonic
    recv_into = sock.recv_into
    try:
        while count < expected:
            if end == BUFFER or (BUFFER - end < 65536 and start):
                buf[: end - start] = mv[start:end]
                end -= start
                start = 0
            try:
                got = recv_into(mv[end:], 0, _DONTWAIT)
            except BlockingIOError:  # caught up: acknowledge, then wait
                if acks:
                    sock.sendall(acks)
                    acks = bytearray()
                try:
                    got = recv_into(mv[end:])
                except TimeoutError:
                    break
            if not got:
                break
            now = monotonic()
            if not res.t_first:
                res.t_first = now
                if on_first is not None:
                    on_first()
            end += got
            pos = start
            while end - pos >= 2:
                head = buf[pos]
                length = buf[pos + 1]
                i = pos + 2
                if length & 0x80:  # multi-byte remaining length
                    length &= 0x7F
                    shift = 7
                    while True:
                        if i >= end:
                            length = -1
                            break
                        byte = buf[i]
                        i += 1
                        length |= (byte & 0x7F) << shift
                        shift += 7
                        if not byte & 0x80:
                            break
                    if length < 0:
                        break
                stop = i + length
                if stop > end:
                    break
                if head & 0xF0 == 0x30:
                    count += 1
                    if head & 0x06:
                        m = i + 2 + (buf[i] << 8 | buf[i + 1])
                        acks += _PUBACK_HEAD
                        acks += mv[m : m + 2]
                pos = stop
            start = pos
            if start == end:
                start = end = 0
            if len(acks) >= ack_bytes:
                sock.sendall(acks)
                acks = bytearray()
            if coalesce and got < 16384:
                time.sleep(coalesce)
            res.t_last = now
            if not marked and count >= mark:
                marked = True
                res.t_mark, res.count_mark = now, count
        if acks:
            sock.sendall(acks)
    finally:
        sock.settimeout(None)
    res.count = count
    if not res.t_mark:
        res.t_mark, res.count_mark = res.t_first, 0
    return res

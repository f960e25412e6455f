"""The service's MQTT 3.1.1 connection: a lean asyncio protocol for high-rate intake.

Measured under the benchmark (``mqtt-anomaly bench --profile``), gmqtt spent 5–6 µs of CPU per
received message before our code ran (copies while unpacking, a properties dict, a coroutine
check per message) and wrote one PUBACK per message (5–8 µs more): two thirds of the service's
cost per reading. This connection does only what the detector service needs, in one pass per
``data_received``:

- every PUBLISH in the received bytes is handed to ``on_batch`` as one list of
  ``(topic, payload, received_at)``, so the pipeline runs once per network read;
- the PUBACKs of that read are written in one ``write`` **after** ``on_batch`` returned, so a
  reading is acknowledged to the broker only once it was processed; with ``hold_acks`` they
  are kept instead, until the owner hands them back with :meth:`LeanClient.send_acks` (once
  what the readings produced is durable: :mod:`mqtt_anomaly.delivery`);
- reading from the socket can be paused and resumed (back-pressure: the broker then keeps
  the messages);
- QoS 1 publishes (alerts, health, dead letters) are tracked until their PUBACK and sent again
  after a reconnect (with DUP when the broker kept our session, as new messages when it did
  not, so nothing is lost). At most ``broker.max_inflight`` of them are on the wire
  unacknowledged; the rest wait in order in a local queue and go out as PUBACKs free the
  window (a full window never raises). While disconnected they wait in the same queue,
  bounded by ``buffer_size`` (the oldest are dropped). When the queue passes
  ``broker.max_queued`` the intake is held (see :attr:`LeanClient.intake_held`);
- persistent session (clean session off), keepalive pings, reconnect with the pauses of a
  :class:`~mqtt_anomaly.retry.Backoff` (by default the fixed ``broker.reconnect_delay``), TLS
  and username/password from :class:`~mqtt_anomaly.config.BrokerSettings`.

It implements the client side of MQTT 3.1.1 for QoS 0/1 subscriptions and QoS 0/1 publishing
(an incoming QoS 2 message is received with PUBREC/PUBCOMP). Its packets are built and parsed
by :mod:`.codec`; TLS, refusal messages and the retry of the first connection come from
:mod:`.connection`, shared with the gmqtt-based client of the simulator (:mod:`.client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import BrokerSettings
from ..console import RateLimitedLog
from ..errors import BrokerError
from ..retry import Backoff
from .codec import (
    CONNACK,
    DISCONNECT,
    DISCONNECT_PACKET,
    MQTT_5,
    MQTT_311,
    PINGREQ_PACKET,
    PUBACK,
    PUBACK_HEAD,
    PUBCOMP,
    PUBCOMP_HEAD,
    PUBLISH,
    PUBREC,
    PUBREC_HEAD,
    PUBREL,
    PUBREL_HEAD,
    RECEIVE_MAXIMUM,
    SESSION_EXPIRY,
    SUBACK,
    TOPIC_ALIAS,
    TOPIC_ALIAS_MAXIMUM,
    USER_PROPERTY,
    MalformedPacketError,
    Will,
    connect,
    decode_connack,
    decode_properties,
    decode_suback,
    decode_varint,
    encode_properties,
    publish,
    reason_text,
    subscribe,
)
from .connection import (
    ClientStats,
    await_suback,
    closed_before_connack,
    connect_with_retry,
    fixed_retry,
    refusal,
    ssl_context,
    tls_failure,
)
from .outgoing import OutgoingTracker

log = logging.getLogger(__name__)

Batch = list[tuple[str, bytes, float]]
_Out = tuple[str, bytes, int, bool, int, bytes]  # topic, payload, qos, retain, serial, MQTT 5 props


def _tcp_options(sock: Any) -> Callable[[], None] | None:
    """TCP_NODELAY on (our small writes — alerts, PUBACKs — go out at once, not after the
    broker's delayed ACK) and, on Linux, a function that re-arms TCP_QUICKACK.

    Linux delays the ACK of received data (up to 40 ms; "quick-ack" only for a while after the
    connection was idle). A broker with Nagle's algorithm on (Mosquitto's default: no
    ``set_tcp_nodelay``) holds each small write to us until the previous one is acknowledged,
    so every reading behind a delayed ACK waits for it. TCP_QUICKACK makes the kernel
    acknowledge at once, but it is not sticky: it has to be set again after each read.
    None when the socket is not TCP or the platform has no TCP_QUICKACK.
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is None:
        return None
    setsockopt = sock.setsockopt
    try:
        setsockopt(socket.IPPROTO_TCP, quickack, 1)
    except OSError:
        return None

    level = socket.IPPROTO_TCP

    def rearm() -> None:
        try:  # noqa: SIM105
            setsockopt(level, quickack, 1)
        except OSError:  # closing: never fail the read path (cheaper than suppress())
            pass

    return rearm


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: LeanClient) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        self.quickack: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.quickack = _tcp_options(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        if self.quickack is not None:
            self.quickack()  # acknowledge the next segment at once, too (not sticky)
        if self.rest:
            data = self.rest + data
        self.rest = self.owner._parse(data, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, exc)


@dataclass(frozen=True, slots=True)
class HeldAcks:
    """Acknowledgements taken from a connection (:meth:`LeanClient.take_acks`), to be written
    with :meth:`LeanClient.send_acks` once what their messages produced is durable."""

    packets: bytes
    """The PUBACKs (and, for QoS 2, PUBRECs and PUBCOMPs), ready for one write."""
    count: int
    """How many messages they acknowledge."""
    connection: object | None
    """The connection the messages came on (compared by identity): after a reconnect the
    broker sends them again, so these must not be written to the new one."""


class AckHold:
    """The acknowledgements a connection holds (``hold_acks``): those of one connection, in
    the order their messages came; a new connection's replace them (the broker sends the old
    ones' messages again)."""

    __slots__ = ("_connection", "_packets", "count")

    def __init__(self) -> None:
        self._packets: list[bytes] = []
        self.count = 0
        """How many messages the held acknowledgements acknowledge."""
        self._connection: object | None = None

    def hold(self, connection: object, packets: bytes, count: int) -> None:
        """Hold ``packets`` (acknowledging ``count`` messages) that came on ``connection``."""
        if connection is not self._connection:  # messages of a new connection
            self._packets, self.count, self._connection = [], 0, connection
        self._packets.append(packets)
        self.count += count

    def take(self) -> HeldAcks:
        """Everything held so far, in one :class:`HeldAcks`; nothing is held after."""
        held = HeldAcks(b"".join(self._packets), self.count, self._connection)
        self._packets, self.count = [], 0
        return held

    def give_back(self, held: HeldAcks, current: object | None) -> None:
        """Hold ``held`` again, before what was held since, if it came on the connection
        held for and that is still the ``current`` one."""
        conn = held.connection
        if held.packets and conn is self._connection and conn is current:
            self._packets.insert(0, held.packets)
            self.count += held.count

    def drop(self, connection: object) -> None:
        """Forget what is held for ``connection`` (it was lost: the broker sends again)."""
        if connection is self._connection:
            self._packets, self.count, self._connection = [], 0, None


class LeanClient:
    """One MQTT connection for the detector service (see the module docstring)."""

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        on_batch: Callable[[Batch], None],
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        buffer_size: int = 100_000,
        name: str = "",
        clock: Callable[[], float] = time.time,
        hold_acks: bool = False,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.backoff = backoff or fixed_retry(settings)  # pauses between connection attempts
        self.client_id = client_id
        self.name = name or client_id
        self.stats = ClientStats()
        self._on_batch = on_batch
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._clock = clock
        # (topic, payload, qos, retain, serial): serial numbers QoS 1 publishes in issue order
        # waiting for the in-flight window (or, while disconnected, for the connection)
        self._queue: deque[_Out] = deque()
        self._buffer_size = buffer_size
        self._inflight: dict[int, _Out] = {}  # on the wire, not yet acknowledged, in order
        self._window = settings.max_inflight
        self._window2 = settings.max_inflight_qos2
        self._inflight2 = 0  # of which QoS 2 (PUBLISH or PUBREL on the wire)
        self._released: set[int] = set()  # QoS 2 packet ids whose PUBREC came (PUBREL sent)
        self.on_qos2_sent: Callable[[int, int], None] | None = None
        """Called with (serial, packet id) of a QoS 2 publish before its packet is written."""
        self.on_qos2_received: Callable[[list[int]], None] | None = None
        """Called with the packet ids whose PUBREC came, before their PUBRELs are written."""
        self._max_queued = settings.max_queued
        self.peak_inflight = 0  # the most QoS 1 publishes ever unacknowledged at once
        self.acked = 0  # PUBACKs of our publishes received
        # intake held while the outgoing queue is too long: (batch, acks, connection) parked
        self._parked: list[tuple[Batch, list[bytes], _Protocol]] = []
        self._intake_held = False
        self.intake_holds = 0
        self.parked_reads = 0
        self._outgoing = OutgoingTracker()  # serials of QoS 1 publishes, their waiters
        self._next_mid = 0
        self._filters: list[tuple[str, int]] = []
        self._proto: _Protocol | None = None
        self._connected = asyncio.Event()
        self._connack: asyncio.Future[tuple[bool, int]] | None = None
        self._suback: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._closing = False
        self._last_refusal = ""
        self._last_in = self._last_out = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.hold_acks = hold_acks
        self._acks = AckHold()  # PUBACKs of processed messages, not yet sent
        self._paused = False
        self._intake = True
        self.will: Will | None = None  # sent in every CONNECT (the Sparkplug host's STATE)
        self.on_properties: Callable[[str, str | None, str | None], None] | None = None
        """MQTT 5: called with ``(topic, unit, asset)`` of an incoming PUBLISH that carries
        either user property (``broker.unit_property``, ``broker.asset_property``), before
        the batch holding it goes to ``on_batch``. None (the default): not read."""
        self._property_blocks: dict[str, tuple[bytes, str | None, str | None]] = {}
        # MQTT 5 (broker.protocol = "5"): the broker's receive maximum bounds the window;
        # outgoing topic aliases, up to the broker's topic alias maximum, per connection
        self.level = MQTT_5 if settings.protocol == "5" else MQTT_311
        self._aliases: dict[str, int] = {}
        self._alias_max = 0
        self.reason_log = RateLimitedLog(log)

    # ---- receiving ------------------------------------------------------------------
    def _parse(self, data: bytes, proto: _Protocol) -> bytes:
        """Handle every whole packet in ``data``; return the incomplete tail.

        This is :func:`.codec.split` and :func:`.codec.decode_publish` inlined for PUBLISH: it
        is the service's receive loop, and a packet object, a decoded message and their calls
        per message cost five times the whole loop (1,000 QoS 1 PUBLISH packets of 120 bytes
        in one read: 0.43 ms inlined, 2.15 ms with ``split`` and ``decode_publish``; best of
        15 interleaved runs on 2 shared cores). Everything else (packet types, acknowledgement
        headers, remaining lengths of more than one byte, CONNACK and SUBACK) is the codec's.
        A malformed packet drops the connection with one error line.
        """
        self._last_in = time.monotonic()
        v5 = self.level == MQTT_5
        pos, n = 0, len(data)
        batch: Batch = []
        acks: list[bytes] = []
        now = self._clock()
        try:
            while n - pos >= 2:
                head = data[pos]
                length = data[pos + 1]
                i = pos + 2
                if length >= 0x80:  # a remaining length of more than one byte
                    got = decode_varint(data, pos + 1)
                    if got is None:
                        break
                    length, i = got
                end = i + length
                if end > n:
                    break
                kind = head >> 4
                if kind == PUBLISH and self._intake:
                    tl = (data[i] << 8) | data[i + 1]
                    p = i + 2 + tl
                    topic = data[i + 2 : p].decode("utf-8", "replace")
                    qos = (head >> 1) & 3
                    if qos:
                        mid = data[p : p + 2]
                        p += 2
                        acks.append((PUBACK_HEAD if qos == 1 else PUBREC_HEAD) + mid)
                    if v5:  # the property block: empty (one test) or read for user properties
                        plen = data[p]
                        if plen < 0x80:
                            start = p + 1
                        else:
                            got = decode_varint(data, p)
                            if got is None:
                                raise MalformedPacketError("PUBLISH properties truncated")
                            plen, start = got
                        p = start + plen
                        if plen and self.on_properties is not None and p <= end:
                            self._user_properties(topic, data[start:p])
                    if p > end:  # the topic (or packet id) runs past the packet
                        raise MalformedPacketError(f"PUBLISH packet truncated ({length} bytes)")
                    batch.append((topic, data[p:end], now))
                elif kind == PUBACK:  # of our QoS 1 publish
                    out = self._inflight.pop((data[i] << 8) | data[i + 1], None)
                    if out is not None:
                        self.acked += 1
                        self._outgoing.completed(out[4])
                        if length > 2 and data[i + 2] >= 0x80:  # MQTT 5: refused
                            self._refused(out[0], data[i + 2], data[i + 3 : end])
                elif kind in (PUBREC, PUBCOMP):  # of our QoS 2 publish
                    self._qos2_ack(kind, (data[i] << 8) | data[i + 1], data[i + 2 : end])
                elif kind == PUBREL:  # of an incoming QoS 2 message
                    acks.append(PUBCOMP_HEAD + data[i : i + 2])
                elif kind == SUBACK:
                    suback = decode_suback(data[i:end], self.level)
                    fut = self._suback.get(suback.packet_id)
                    if fut is not None and not fut.done():
                        fut.set_result(suback.return_codes)
                elif kind == CONNACK and self._connack is not None and not self._connack.done():
                    connack = decode_connack(data[i:end], self.level)
                    self._negotiated(connack.properties)
                    self._connack.set_result((connack.session_present, connack.return_code))
                elif kind == DISCONNECT and length:  # MQTT 5: the broker says why
                    log.error(
                        "broker %s disconnected %s: %s",
                        self.settings.address,
                        self.name,
                        reason_text(data[i], data[i + 2 : end] if length > 1 else b""),
                    )
                pos = end
        except (MalformedPacketError, IndexError) as exc:
            why = str(exc) if isinstance(exc, MalformedPacketError) else "truncated packet"
            self._protocol_error(proto, why)
            return b""
        return self._finish(data[pos:], batch, acks, proto)

    def _user_properties(self, topic: str, block: bytes) -> None:
        """MQTT 5: an incoming PUBLISH's unit and asset user properties (names in
        ``broker.unit_property`` and ``broker.asset_property``) to ``on_properties``. A
        topic's block the same as its last one is not decoded again."""
        last = self._property_blocks.get(topic)
        if last is not None and last[0] == block:
            unit, asset = last[1], last[2]
        else:
            unit, asset = self._read_properties(block)
            if len(self._property_blocks) >= 100_000:
                self._property_blocks.clear()  # bounded whatever topics come
            self._property_blocks[topic] = (block, unit, asset)
        if (unit is not None or asset is not None) and self.on_properties is not None:
            self.on_properties(topic, unit, asset)

    def _read_properties(self, block: bytes) -> tuple[str | None, str | None]:
        s = self.settings
        unit = asset = None
        for pid, value in decode_properties(block):
            if pid == USER_PROPERTY and isinstance(value, tuple):
                name, text = value
                if not name or not text:
                    continue
                if name == s.unit_property:
                    unit = text
                elif name == s.asset_property:
                    asset = text
        return unit, asset

    def _negotiated(self, properties: bytes) -> None:
        """MQTT 5: what the broker's CONNACK allows (receive maximum, topic aliases)."""
        self._window = self.settings.max_inflight
        self._alias_max = 0
        self._aliases.clear()
        if not properties:
            return
        for pid, value in decode_properties(properties):
            if pid == RECEIVE_MAXIMUM and isinstance(value, int):
                self._window = min(self._window, value)
            elif pid == TOPIC_ALIAS_MAXIMUM and isinstance(value, int):
                self._alias_max = value

    def _refused(self, topic: str, code: int, properties: bytes) -> None:
        """MQTT 5: the broker refused one of our publishes (one line per reason, rate-limited)."""
        why = reason_text(code, properties[1:] if properties else b"")
        self.reason_log.warning(
            f"puback-{code}",
            "broker %s refused a publish on %s: %s",
            self.settings.address,
            topic,
            why,
        )

    def _qos2_ack(self, kind: int, mid: int, reason: bytes = b"") -> None:
        """PUBREC: the broker has our QoS 2 message (it delivers it on our PUBREL), PUBCOMP:
        done. Neither is the same step twice: a repeated PUBREC gets its PUBREL again."""
        out = self._inflight.get(mid)
        if out is None or out[2] != 2:
            if kind == PUBREC:  # not ours any more (completed): let the broker finish
                self._write(PUBREL_HEAD + mid.to_bytes(2, "big"))
            return
        refused = kind == PUBREC and len(reason) > 0 and reason[0] >= 0x80  # MQTT 5: ends here
        if kind == PUBREC and not refused:
            if self.on_qos2_received is not None and mid not in self._released:
                self.on_qos2_received([mid])
            self._released.add(mid)
            self._write(PUBREL_HEAD + mid.to_bytes(2, "big"))
            return
        if refused:
            self._refused(out[0], reason[0], reason[1:])
        else:
            self.acked += 1
        del self._inflight[mid]
        self._released.discard(mid)
        self._inflight2 -= 1
        self._outgoing.completed(out[4])

    def _finish(self, rest: bytes, batch: Batch, acks: list[bytes], proto: _Protocol) -> bytes:
        if self._queue and self._room(self._queue[0][2]):  # PUBACKs freed the window
            self._pump()
        if (self._intake_held or self._parked) and (batch or acks):
            self._parked.append((batch, acks, proto))  # processed once the queue is shorter
            self.parked_reads += 1
            return rest
        self._deliver(batch, acks, proto)
        return rest

    def _deliver(self, batch: Batch, acks: list[bytes], proto: _Protocol) -> None:
        """Hand one read's messages to ``on_batch``, then acknowledge (or hold) them."""
        if batch:
            self.stats.received += len(batch)
            try:
                self._on_batch(batch)
            except Exception:  # the pipeline must never take the connection down
                log.exception("processing a batch of %d messages failed", len(batch))
        if acks and proto.transport is not None and not proto.transport.is_closing():
            if self.hold_acks:
                self._acks.hold(proto, b"".join(acks), len(acks))
            else:
                proto.transport.write(b"".join(acks))
                self._last_out = time.monotonic()

    # ---- held acknowledgements and back-pressure ----------------------------------------
    @property
    def held_acks(self) -> int:
        """Messages processed and not yet acknowledged (``hold_acks``)."""
        return self._acks.count

    def take_acks(self) -> HeldAcks:
        """The acknowledgements held so far, for :meth:`send_acks`."""
        return self._acks.take()

    def return_acks(self, held: HeldAcks) -> None:
        """Hold the acknowledgements ``held`` again (their round failed), before those
        received since, if their connection is still the current one."""
        self._acks.give_back(held, self._proto)

    def send_acks(self, held: HeldAcks) -> bool:
        """Write acknowledgements taken with :meth:`take_acks`, if their connection is still
        the current one (after a reconnect the broker sends those messages again)."""
        if not held.packets or held.connection is not self._proto:
            return False
        self._write(held.packets)
        return True

    def stop_intake(self) -> None:
        """Ignore incoming messages from now on, without acknowledging them (the broker
        keeps them for the next session); everything else goes on (at shutdown)."""
        self._intake = False
        self._parked.clear()  # not processed, not acknowledged: the broker sends them again

    # ---- outgoing back-pressure -----------------------------------------------------------
    @property
    def intake_held(self) -> bool:
        """True while the outgoing queue is over ``max_queued``: reads of the socket go on
        (PUBACKs of our publishes must come in to shorten it), but the messages received are
        parked unprocessed and unacknowledged until the queue is back under half."""
        return self._intake_held

    @property
    def queued(self) -> int:
        """Publishes waiting for the in-flight window or for the connection."""
        return len(self._queue)

    @property
    def inflight(self) -> int:
        """QoS 1 publishes on the wire and not yet acknowledged."""
        return len(self._inflight)

    def _hold_intake(self) -> None:
        if not self._intake_held:
            self._intake_held = True
            self.intake_holds += 1
            log.warning(
                "%d outgoing messages wait for the broker: holding the intake until under %d",
                len(self._queue),
                self._max_queued // 2,
            )

    def _release_intake(self) -> None:
        self._intake_held = False
        log.info("outgoing queue under %d: intake resumed", self._max_queued // 2)
        if self._parked:
            asyncio.get_running_loop().call_soon(self._unpark)

    def _unpark(self) -> None:
        """Process the parked reads in order, until the intake is held again."""
        while self._parked and not self._intake_held:
            batch, acks, proto = self._parked.pop(0)
            if proto is self._proto and self._intake:
                self._deliver(batch, acks, proto)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_reading(self) -> None:
        """Stop reading from the broker (it keeps what it cannot send us). Acknowledgements of
        our own publishes cannot arrive meanwhile: :meth:`wait_outgoing` returns at once."""
        self._paused = True
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.pause_reading()
        self._outgoing.release_all()

    def resume_reading(self) -> None:
        self._paused = False
        self._last_in = time.monotonic()  # the keepalive watchdog was off while paused
        proto = self._proto
        if proto is not None and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.resume_reading()

    def _protocol_error(self, proto: _Protocol, why: str) -> None:
        log.error(
            "broker %s sent a malformed packet (%s): reconnecting", self.settings.address, why
        )
        if proto.transport is not None:
            proto.transport.abort()

    # ---- connection -----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def connect(self, *, timeout: float | None = None, retry: bool = True) -> None:
        """Connect; while the broker is unreachable retry (until ``timeout``; None = forever).

        A refusal by the broker raises :class:`BrokerError` at once.
        """
        self._closing = False
        await connect_with_retry(
            self._open, self.settings, timeout=timeout, retry=retry, backoff=self.backoff
        )
        self._spawn(self._keepalive())

    async def _open(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        ctx = ssl_context(s)
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Protocol(self),
                    s.host,
                    s.port,
                    ssl=ctx,
                    server_hostname=s.host if ctx else None,
                ),
                timeout=10,
            )
        except ssl.SSLError as exc:
            raise BrokerError(tls_failure(s.address, exc)) from exc
        self._connack = loop.create_future()
        proto.transport.write(self._connect_packet())  # type: ignore[union-attr]
        try:
            session_present, rc = await asyncio.wait_for(self._connack, timeout=10)
        except TimeoutError as exc:
            proto.transport.abort()  # type: ignore[union-attr]
            raise TimeoutError("no CONNACK in 10 s") from exc
        if rc != 0:
            proto.transport.abort()  # type: ignore[union-attr]
            raise BrokerError(refusal(s, self.name, rc, self.level))
        self._proto = proto
        if self._paused:
            proto.transport.pause_reading()  # type: ignore[union-attr]
        self._last_in = self._last_out = time.monotonic()
        self.stats.connects += 1
        self._connected.set()
        self._resume(session_present)
        if self._on_connect is not None:
            self._on_connect(session_present)

    def _connect_packet(self) -> bytes:
        s = self.settings
        username = s.username or None
        return connect(
            self.client_id,
            clean_session=False,
            keepalive=s.keepalive,
            username=username,
            password=s.secret_password() if username else None,
            will=self.will,
            level=self.level,
            properties=encode_properties([(SESSION_EXPIRY, s.session_expiry)])
            if self.level == MQTT_5
            else b"",
        )

    def _resume(self, session_present: bool) -> None:
        """After CONNACK: re-send unacknowledged publishes, re-subscribe, send the queue."""
        pending = list(self._inflight.items())
        released = self._released
        if session_present:  # QoS 2: the broker drops a PUBLISH it has, finishes a PUBREL
            level = self.level
            self._write(
                b"".join(
                    PUBREL_HEAD + mid.to_bytes(2, "big")
                    if mid in released
                    else publish(
                        topic,
                        payload,
                        qos=qos,
                        retain=retain,
                        dup=True,
                        packet_id=mid,
                        level=level,
                        properties=props if level == MQTT_5 else b"",
                    )
                    for mid, (topic, payload, qos, retain, _, props) in pending
                )
            )
        else:  # the broker forgot them: new messages, ahead of those queued since
            for mid, (*_, serial, _) in pending:
                if mid in released:  # the broker had it: completed (it was lost with the session)
                    self._outgoing.completed(serial)
            pending = [(mid, out) for mid, out in pending if mid not in released]
            self._inflight.clear()
            self._released.clear()
            self._inflight2 = 0
            if self._filters:
                self._send_subscribe(self._filters)
            self._queue.extendleft(reversed([out for _, out in pending]))
        self._pump()

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if self._connack is not None and not self._connack.done():
            # closed before CONNACK: a refusal (e.g. of our client certificate, which TLS 1.3
            # reports after the handshake), not an unreachable broker
            reason = closed_before_connack(self.settings, self.name, exc)
            self._connack.set_exception(BrokerError(reason))
        if proto is not self._proto:
            return
        self._proto = None
        self._acks.drop(proto)  # the broker sends those messages again
        self._parked = [p for p in self._parked if p[2] is not proto]  # sent again, too
        if self._connected.is_set():
            self.stats.disconnects += 1
        self._connected.clear()
        if self._on_disconnect is not None:
            self._on_disconnect()
        if not self._closing:
            self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        pauses = self.backoff.delays()  # from the first pause again after every outage
        while not self._closing and not self.connected:
            pause = next(pauses)
            await asyncio.sleep(pause)
            if self._closing:
                return
            try:
                await self._open()
                log.info("reconnected to %s", self.settings.address)
                self._last_refusal = ""
            except BrokerError as exc:
                if str(exc) != self._last_refusal:  # e.g. our certificate expired meanwhile
                    log.error("reconnect refused: %s; retrying", exc)
                    self._last_refusal = str(exc)
            except (OSError, TimeoutError) as exc:
                log.debug(
                    "reconnect to %s after %.3f s failed: %s", self.settings.address, pause, exc
                )

    async def _keepalive(self) -> None:
        ka = self.settings.keepalive
        while not self._closing:
            await asyncio.sleep(min(1.0, ka / 2))
            proto = self._proto
            if proto is None or proto.transport is None:
                continue
            now = time.monotonic()
            if now - self._last_in > 1.5 * ka and not self._paused:
                log.warning(
                    "no traffic from %s for %.1f s: reconnecting",
                    self.settings.address,
                    now - self._last_in,
                )
                proto.transport.abort()
            elif now - self._last_out >= ka / 2:
                self._write(PINGREQ_PACKET)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- sending --------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        proto = self._proto
        if proto is not None and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.write(data)
            self._last_out = time.monotonic()

    def _mid(self) -> int:
        for _ in range(65535):
            self._next_mid = self._next_mid % 65535 + 1
            if self._next_mid not in self._inflight and self._next_mid not in self._suback:
                return self._next_mid
        raise BrokerError("no free packet identifier: 65,535 messages unacknowledged")

    def _packet(
        self, topic: str, payload: bytes, qos: int, retain: bool, serial: int, props: bytes = b""
    ) -> bytes:
        """The PUBLISH packet, with a packet id taken for QoS 1 and 2 (counted in flight)."""
        mid = 0
        if qos:
            mid = self._mid()
            inflight = self._inflight
            inflight[mid] = (topic, payload, qos, retain, serial, props)
            self.peak_inflight = max(self.peak_inflight, len(inflight))
            if qos == 2:
                self._inflight2 += 1
                if self.on_qos2_sent is not None:
                    self.on_qos2_sent(serial, mid)
        if self.level == MQTT_311:
            return publish(topic, payload, qos=qos, retain=retain, packet_id=mid)
        if self._alias_max:  # MQTT 5 topic aliases: the topic once, then its number
            alias = self._aliases.get(topic)
            if alias is not None:
                props += encode_properties([(TOPIC_ALIAS, alias)])
                topic = ""
            elif len(self._aliases) < self._alias_max:
                alias = self._aliases[topic] = len(self._aliases) + 1
                props += encode_properties([(TOPIC_ALIAS, alias)])
        return publish(
            topic,
            payload,
            qos=qos,
            retain=retain,
            packet_id=mid,
            level=MQTT_5,
            properties=props,
        )

    def _room(self, qos: int) -> bool:
        """Whether a publish of ``qos`` may go on the wire now (the in-flight windows)."""
        if not qos:
            return True
        return len(self._inflight) < self._window and (qos < 2 or self._inflight2 < self._window2)

    def _pump(self) -> None:
        """Send queued publishes while the window has room, in one write."""
        queue = self._queue
        if not self.connected:
            return
        packets = []
        while queue and self._room(queue[0][2]):
            packets.append(self._packet(*queue.popleft()))
        if packets:
            self._write(b"".join(packets))
        self.stats.buffered = len(queue)
        if self._intake_held and len(queue) <= self._max_queued // 2:
            self._release_intake()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: bytes = b"",
    ) -> None:
        """Publish now if connected and the in-flight window has room, else queue (in order).
        ``properties``: an MQTT 5 property block (:func:`.codec.encode_properties`), left out
        at 3.1.1.

        While connected the queue is not bounded, but past ``max_queued`` the intake is held
        (:attr:`intake_held`); while disconnected at most ``buffer_size`` wait (the oldest are
        dropped)."""
        serial = 0
        if qos:
            outgoing = self._outgoing
            outgoing.serial = serial = outgoing.serial + 1
        queue = self._queue
        if self.connected:
            if not queue and self._room(qos):
                self._write(self._packet(topic, payload, qos, retain, serial, properties))
                return
            queue.append((topic, payload, qos, retain, serial, properties))
            if len(queue) > self._max_queued:
                self._hold_intake()
            self.stats.buffered = len(queue)
            return
        if len(queue) >= self._buffer_size:
            self.stats.dropped += 1
            if not queue:
                self._outgoing.completed(serial)
                return
            self._outgoing.completed(queue.popleft()[4])
        queue.append((topic, payload, qos, retain, serial, properties))
        self.stats.buffered = len(queue)

    def resume_qos2(self, packet_id: int, topic: str, payload: bytes, *, released: bool) -> int:
        """Take over a QoS 2 publish of an earlier process under its packet id (before
        :meth:`connect`): sent again with DUP, or its PUBREL when ``released``, if the broker
        kept the session, so the broker never delivers it twice. Returns its new serial."""
        outgoing = self._outgoing
        outgoing.serial = serial = outgoing.serial + 1
        self._inflight[packet_id] = (topic, payload, 2, False, serial, b"")
        self._inflight2 += 1
        if released:
            self._released.add(packet_id)
        return serial

    # ---- tracking what we published -----------------------------------------------------
    def outgoing_mark(self) -> int:
        """A ticket covering every QoS 1 message published so far."""
        return self._outgoing.serial

    def acknowledged_mark(self) -> int:
        """Every QoS 1 message up to this serial is acknowledged by the broker (or dropped)."""
        return self._outgoing.low

    async def wait_outgoing(self, ticket: int) -> None:
        """Wait until the broker acknowledged every QoS 1 message up to ``ticket``, or
        reading is paused."""
        if not self._paused:
            await self._outgoing.wait(ticket)

    def _send_subscribe(self, filters: Sequence[tuple[str, int]]) -> int:
        mid = self._mid()
        self._write(subscribe(mid, filters, level=self.level))
        return mid

    async def subscribe(self, filters: Sequence[str], qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait for SUBACK (re-subscribed after a reconnect that lost the session).

        Raises :class:`BrokerError` if the broker refuses a filter (e.g. an ACL).
        """
        wanted = [(f, min(qos, 1)) for f in filters]
        self._filters.extend(wanted)
        fut: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        mid = self._send_subscribe(wanted)
        self._suback[mid] = fut
        try:
            await await_suback(fut, filters, self.settings, timeout)
        finally:
            self._suback.pop(mid, None)

    @property
    def socket(self) -> Any:
        """The connection's socket (for byte counters), or None while disconnected."""
        proto = self._proto
        if proto is None or proto.transport is None:
            return None
        return proto.transport.get_extra_info("socket")

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker (queued or in flight)."""
        return len(self._queue) + len(self._inflight)

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every QoS 1 message published so far is acknowledged."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_outgoing(self._outgoing.serial), timeout)
        return self.pending == 0

    async def disconnect(self) -> None:
        """Send DISCONNECT and close; no reconnect after this."""
        self._closing = True
        proto = self._proto
        self._write(DISCONNECT_PACKET)
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        self._connected.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT and stop reconnecting."""
        self._closing = True
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.abort()
        self._connected.clear()

    async def __aenter__(self) -> LeanClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

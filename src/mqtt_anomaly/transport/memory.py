"""An MQTT broker and connection in one process: :class:`MemoryBroker`, :class:`MemoryTransport`.

A real implementation of :class:`~.base.Transport`, not a mock: the broker keeps a persistent
session per client id (its subscriptions, the QoS 1 messages not yet delivered and those
delivered but not acknowledged, sent again on the next connection), retained messages, and
records every publish it receives. The connection hands what the broker delivers to
``on_batch`` as batches, one per loop turn (as one network read would), holds or sends the
acknowledgements as :class:`~.lean.LeanClient` does, and tracks its QoS 1 publishes until the
broker acknowledges them (at most ``broker.max_inflight`` unacknowledged, the rest queued in
order). The broker can go down and come back, and can stop acknowledging publishes.

Use it where a broker adds nothing to a test: the service's logic, the order of its effects,
delivery rounds, the HTTP side::

    broker = MemoryBroker()
    service = DetectorService(settings, transport=broker.transport)
    broker.send([("factory/S1/temperature", payload)])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..config import BrokerSettings
from .client import ClientStats
from .lean import AckHold, Batch, HeldAcks
from .outgoing import OutgoingTracker

log = logging.getLogger(__name__)


class Message(NamedTuple):
    """One PUBLISH the broker received."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    client_id: str


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT filter (``+`` one level, ``#`` the rest)."""
    f, t = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


@dataclass
class _Session:
    filters: dict[str, int] = field(default_factory=dict)
    queue: deque[tuple[str, bytes, int]] = field(default_factory=deque)  # not yet delivered
    unacked: dict[int, tuple[str, bytes]] = field(default_factory=dict)  # delivered, no PUBACK
    next_mid: int = 0


class MemoryBroker:
    """The broker side (see the module docstring). ``ack_publishes=False``: the broker takes
    publishes but acknowledges none until :meth:`acknowledge_publishes`."""

    def __init__(self, *, ack_publishes: bool = True) -> None:
        self.ack_publishes = ack_publishes
        self.published: list[Message] = []
        self.retained: dict[str, bytes] = {}
        self.acknowledged = 0  # incoming messages acknowledged by the clients
        self._sessions: dict[str, _Session] = {}
        self._clients: dict[str, MemoryTransport] = {}
        self._up = asyncio.Event()
        self._up.set()

    @property
    def online(self) -> bool:
        return self._up.is_set()

    def transport(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        on_batch: Callable[[Batch], None],
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        name: str = "",
        clock: Callable[[], float] = time.time,
        hold_acks: bool = False,
    ) -> MemoryTransport:
        """A connection to this broker (a :class:`~.base.TransportFactory`)."""
        return MemoryTransport(
            self,
            settings,
            client_id,
            on_batch=on_batch,
            on_connect=on_connect,
            on_disconnect=on_disconnect,
            name=name,
            clock=clock,
            hold_acks=hold_acks,
        )

    # ---- a publisher's side ------------------------------------------------------------
    def send(self, messages: Iterable[tuple[str, bytes]], *, qos: int = 1) -> None:
        """Publish messages from outside (a sensor): queued for every matching session and
        delivered to connected clients as one batch at the next loop turn."""
        for topic, payload in messages:
            self._route(topic, payload, qos)

    def messages(self, topic_filter: str) -> list[Message]:
        """The publishes received on topics matching ``topic_filter``, in order."""
        return [m for m in self.published if matches(topic_filter, m.topic)]

    def payloads(self, topic_filter: str) -> list[bytes]:
        return [m.payload for m in self.messages(topic_filter)]

    def subscriptions(self, client_id: str) -> list[str]:
        """The filters of ``client_id`` while it is connected (else none)."""
        session = self._sessions.get(client_id)
        if session is None or client_id not in self._clients:
            return []
        return list(session.filters)

    # ---- faults ------------------------------------------------------------------------
    def go_down(self) -> None:
        """Drop every connection (sessions are kept); connects wait until :meth:`come_back`."""
        self._up.clear()
        for client in list(self._clients.values()):
            client._lost()
        self._clients.clear()

    def come_back(self) -> None:
        """Accept connections again; clients that lost theirs reconnect (session present)."""
        self._up.set()

    def acknowledge_publishes(self) -> None:
        """Acknowledge what clients published and wait for, and from now on at once."""
        self.ack_publishes = True
        for client in list(self._clients.values()):
            client._puback_all()

    # ---- the clients' side -------------------------------------------------------------
    def _attach(self, client: MemoryTransport) -> bool:
        present = client.client_id in self._sessions
        if not present:
            self._sessions[client.client_id] = _Session()
        old = self._clients.get(client.client_id)
        if old is not None and old is not client:  # a second connection takes the session
            old._lost()
        self._clients[client.client_id] = client
        return present

    def _detach(self, client: MemoryTransport) -> None:
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]

    def _session(self, client_id: str) -> _Session:
        return self._sessions[client_id]

    def _subscribe(self, client: MemoryTransport, filters: Sequence[str], qos: int) -> None:
        session = self._sessions[client.client_id]
        for f in filters:
            session.filters[f] = min(qos, 1)
        for topic, payload in self.retained.items():  # retained messages on subscribing
            if any(matches(f, topic) for f in filters):
                session.queue.append((topic, payload, min(qos, 1)))
        client._schedule()

    def _receive(self, client_id: str, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.published.append(Message(topic, payload, qos, retain, client_id))
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        self._route(topic, payload, qos, sender=client_id)

    def _route(self, topic: str, payload: bytes, qos: int, sender: str = "") -> None:
        for cid, session in self._sessions.items():
            if cid == sender:
                continue
            granted = [q for f, q in session.filters.items() if matches(f, topic)]
            if not granted:
                continue
            q = min(qos, max(granted))
            if q or cid in self._clients:  # QoS 0 is not kept for an absent client
                session.queue.append((topic, payload, q))
                client = self._clients.get(cid)
                if client is not None:
                    client._schedule()

    def _puback(self, client_id: str, mids: Iterable[int]) -> None:
        unacked = self._sessions[client_id].unacked
        for mid in mids:
            if unacked.pop(mid, None) is not None:
                self.acknowledged += 1


class MemoryTransport:
    """A :class:`~.base.Transport` connected to a :class:`MemoryBroker` (module docstring)."""

    def __init__(
        self,
        broker: MemoryBroker,
        settings: BrokerSettings,
        client_id: str,
        *,
        on_batch: Callable[[Batch], None],
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        name: str = "",
        clock: Callable[[], float] = time.time,
        hold_acks: bool = False,
        buffer_size: int = 100_000,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.client_id = client_id
        self.name = name or client_id
        self.stats = ClientStats()
        self.hold_acks = hold_acks
        self._on_batch = on_batch
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._clock = clock
        self._buffer_size = buffer_size
        self._window = settings.max_inflight
        self._conn: object | None = None  # one object per connection: acks belong to it
        self._closing = False
        self._paused = False
        self._intake = True
        self._scheduled = False
        self._reconnecting: asyncio.Task[None] | None = None
        # outgoing: serial numbers QoS 1 publishes in issue order
        self._queue: deque[tuple[str, bytes, int, bool, int]] = deque()
        self._inflight: dict[int, tuple[str, bytes, int, bool, int]] = {}
        self._outgoing = OutgoingTracker()
        self.acked = 0  # PUBACKs of our publishes received
        # incoming acknowledgements held (hold_acks): packet ids, as 2-byte big-endian
        self._acks = AckHold()

    # ---- connection ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def connect(self, *, timeout: float | None = None, retry: bool = True) -> None:
        self._closing = False
        if not self.broker.online:
            if not retry:
                raise OSError(f"memory broker down: {self.name} cannot connect")
            await asyncio.wait_for(self.broker._up.wait(), timeout)
        self._open()

    def _open(self) -> None:
        present = self.broker._attach(self)
        self._conn = object()
        self.stats.connects += 1
        if present:  # the broker kept our session: what it had not acknowledged goes again
            for out in list(self._inflight.values()):
                self._send(out)
        else:
            self._queue.extendleft(reversed(list(self._inflight.values())))
            self._inflight.clear()
        session = self.broker._session(self.client_id)
        if session.unacked:  # delivered on the last connection, never acknowledged
            again = [(t, p, 1) for t, p in session.unacked.values()]
            session.unacked.clear()
            session.queue.extendleft(reversed(again))
        self._pump()
        self._schedule()
        if self._on_connect is not None:
            self._on_connect(present)

    def _lost(self) -> None:
        if self._conn is None:
            return
        self._acks.drop(self._conn)  # sent again, too
        self._conn = None
        self.stats.disconnects += 1
        if self._on_disconnect is not None:
            self._on_disconnect()
        if not self._closing and self._reconnecting is None:
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            await self.broker._up.wait()
            if not self._closing and self._conn is None:
                self._open()
        finally:
            self._reconnecting = None

    async def subscribe(self, filters: Sequence[str], qos: int = 1, timeout: float = 10.0) -> None:
        if self._conn is None:
            raise OSError(f"{self.name}: not connected")
        self.broker._subscribe(self, filters, qos)

    async def drain(self, timeout: float = 10.0) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_outgoing(self._outgoing.serial), timeout)
        return self.pending == 0

    async def disconnect(self) -> None:
        self._closing = True
        self.broker._detach(self)
        self._conn = None
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting

    # ---- incoming ------------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        """One "network read": everything the broker has queued for us, as one batch."""
        self._scheduled = False
        if self._conn is None or self._paused or not self._intake:
            return
        session = self.broker._session(self.client_id)
        if not session.queue:
            return
        now = self._clock()
        batch: Batch = []
        acks: list[bytes] = []
        while session.queue:
            topic, payload, qos = session.queue.popleft()
            if qos:
                session.next_mid = session.next_mid % 65535 + 1
                session.unacked[session.next_mid] = (topic, payload)
                acks.append(session.next_mid.to_bytes(2, "big"))
            batch.append((topic, payload, now))
        self.stats.received += len(batch)
        try:
            self._on_batch(batch)
        except Exception:  # as on a real connection: the pipeline must not take it down
            log.exception("processing a batch of %d messages failed", len(batch))
        if not acks or self._conn is None:
            return
        if self.hold_acks:
            self._acks.hold(self._conn, b"".join(acks), len(acks))
        else:
            self.broker._puback(self.client_id, _mids(b"".join(acks)))

    @property
    def held_acks(self) -> int:
        return self._acks.count

    def take_acks(self) -> HeldAcks:
        return self._acks.take()

    def return_acks(self, held: HeldAcks) -> None:
        self._acks.give_back(held, self._conn)

    def send_acks(self, held: HeldAcks) -> bool:
        if not held.packets or held.connection is not self._conn:
            return False
        self.broker._puback(self.client_id, _mids(held.packets))
        return True

    def stop_intake(self) -> None:
        self._intake = False

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_reading(self) -> None:
        self._paused = True
        self._outgoing.release_all()

    def resume_reading(self) -> None:
        self._paused = False
        self._schedule()

    # ---- outgoing ------------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: bytes = b"",  # MQTT 5 only: the in-process broker speaks 3.1.1
    ) -> None:
        serial = 0
        if qos:
            outgoing = self._outgoing
            outgoing.serial = serial = outgoing.serial + 1
        out = (topic, payload, min(qos, 1), retain, serial)
        if self._conn is not None:
            if not self._queue and (not qos or len(self._inflight) < self._window):
                self._send(out)
            else:
                self._queue.append(out)
            return
        if len(self._queue) >= self._buffer_size:
            self.stats.dropped += 1
            self._outgoing.completed(self._queue.popleft()[4])
        self._queue.append(out)
        self.stats.buffered = len(self._queue)

    def _send(self, out: tuple[str, bytes, int, bool, int]) -> None:
        topic, payload, qos, retain, serial = out
        self.broker._receive(self.client_id, topic, payload, qos, retain)
        if not qos:
            return
        if self.broker.ack_publishes:
            self._inflight.pop(serial, None)
            self.acked += 1
            self._outgoing.completed(serial)
        else:
            self._inflight[serial] = out

    def _pump(self) -> None:
        queue = self._queue
        while self._conn is not None and queue and (len(self._inflight) < self._window):
            self._send(queue.popleft())
        self.stats.buffered = len(queue)

    def _puback_all(self) -> None:
        for serial in list(self._inflight):
            del self._inflight[serial]
            self.acked += 1
            self._outgoing.completed(serial)
        self._pump()

    def outgoing_mark(self) -> int:
        return self._outgoing.serial

    def acknowledged_mark(self) -> int:
        """Every QoS 1 message up to this serial is acknowledged by the broker (or dropped)."""
        return self._outgoing.low

    async def wait_outgoing(self, ticket: int) -> None:
        if not self._paused:
            await self._outgoing.wait(ticket)

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._inflight)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return len(self._inflight)


def _mids(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]

"""The MQTT client the simulator uses: a thin layer over gmqtt.

gmqtt was chosen by measurement: on loopback it receives QoS 1 readings several times faster
than paho-mqtt and aiomqtt for the same CPU (see docs/architecture.md). This wrapper adds what
gmqtt leaves to the application:

- MQTT 3.1.1 with a persistent session by default (stable client id, clean session off), so
  the broker queues QoS 1 messages while we are away;
- a first connection that keeps retrying while the broker is unreachable, but fails at once
  with a clear :class:`~mqtt_anomaly.errors.BrokerError` when the broker refuses us (bad
  credentials, not authorised);
- an outgoing buffer, bounded, for messages published while disconnected (edge-device
  behaviour), flushed in order on reconnect; what the bound drops is counted;
- TLS and username/password from :class:`~mqtt_anomaly.config.BrokerSettings`; the TLS
  context, the refusal messages and the retry are :mod:`.connection`'s, shared with the
  service's own connection (:mod:`.lean`).

gmqtt's own machinery re-sends unacknowledged QoS 1/2 messages after a reconnect and
reconnects by itself after a lost connection; the pauses between its attempts, as between
those of the first connection, follow the client's :class:`~mqtt_anomaly.retry.Backoff` (by
default the fixed ``broker.reconnect_delay``; the fleet gives each sensor a growing one with
jitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

from ..config import BrokerSettings
from ..errors import BrokerError
from ..retry import Backoff, Delays
from .codec import CONNACK_REASONS, Will
from .connection import (
    ClientStats,
    await_suback,
    closed_before_connack,
    connect_with_retry,
    fixed_retry,
    ssl_context,
    tls_failure,
)

__all__ = ["ClientStats", "MessageHandler", "MqttClient", "Will"]

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]


class _GmqttClient(gmqtt.Client):  # type: ignore[misc]
    """gmqtt's client, remembering why its last connection was lost (e.g. a TLS alert), its
    reconnect pauses taken from ``pauses`` (gmqtt's own: one fixed ``reconnect_delay``)."""

    lost_exc: BaseException | None = None
    pauses: Delays | None = None
    name = ""

    async def reconnect(self, delay: bool = False) -> None:
        # gmqtt sleeps config["reconnect_delay"] before a delayed attempt and calls this again
        # after each failed one; _allow_reconnect() is its own check, so a call it ignores
        # (a reconnect already under way) takes no pause
        if delay and self.pauses is not None and self._allow_reconnect():
            pause = next(self.pauses)
            self.set_config({"reconnect_delay": pause})
            log.debug("%s: reconnecting in %.3f s", self.name, pause)
        await super().reconnect(delay=delay)

    async def _create_connection(self, *args: object, **kwargs: object) -> object:
        self.lost_exc = None
        connection = await super()._create_connection(*args, **kwargs)
        protocol = connection._protocol
        original = protocol.connection_lost

        def connection_lost(exc: BaseException | None) -> None:
            self.lost_exc = exc
            original(exc)

        protocol.connection_lost = connection_lost
        return connection


class MqttClient:
    """One MQTT connection. Use as ``async with MqttClient(...) as c:`` or connect/disconnect.

    ``on_message(topic, payload, retain)`` is called in the event loop for every message; it
    must not block.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        clean_session: bool = False,
        will: Will | None = None,
        on_message: MessageHandler | None = None,
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        buffer_size: int = 100_000,
        name: str = "",
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.name = name or client_id
        self.backoff = backoff or fixed_retry(settings)  # pauses between connection attempts
        self.stats = ClientStats()
        self._on_message = on_message
        self._user_on_connect = on_connect
        self._user_on_disconnect = on_disconnect
        self._buffer: deque[tuple[str, bytes, int, bool]] = deque()
        self._buffer_size = buffer_size
        self._connected = asyncio.Event()
        self._filters: list[tuple[str, int]] = []
        will_msg = (
            gmqtt.Message(will.topic, will.payload, qos=will.qos, retain=will.retain)
            if will
            else None
        )
        self._lost_early = asyncio.Event()
        self._client = _GmqttClient(
            client_id, clean_session=clean_session, will_message=will_msg, logger=_quiet_logger
        )
        self._client.set_config(
            {"reconnect_delay": settings.reconnect_delay, "reconnect_retries": -1}
        )
        self._client.pauses = self.backoff.delays()
        self._client.name = self.name
        if settings.username:
            self._client.set_auth_credentials(settings.username, settings.secret_password())
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_subscribe = self._handle_subscribe
        self._suback: dict[int, asyncio.Future[tuple[int, ...]]] = {}

    # ---- gmqtt callbacks -------------------------------------------------------------
    def _handle_connect(self, _c: object, flags: int, rc: int, _props: object) -> None:
        self.stats.connects += 1
        if self._client.pauses is not None:
            self._client.pauses.reset()
        self._connected.set()
        session_present = bool(flags)
        if self._filters and not session_present:
            self._client.subscribe([gmqtt.Subscription(f, qos=q) for f, q in self._filters])
        # after gmqtt's re-send of unacknowledged messages (scheduled by the same CONNACK),
        # so the broker sees them in their original order
        asyncio.get_running_loop().call_soon(self._flush_buffer)
        if self._user_on_connect is not None:
            self._user_on_connect(session_present)

    def _handle_disconnect(self, _c: object, _packet: object, _exc: object = None) -> None:
        if self._connected.is_set():
            self.stats.disconnects += 1
        else:
            self._lost_early.set()
        self._connected.clear()
        if self._user_on_disconnect is not None:
            self._user_on_disconnect()

    def _handle_message(
        self, _c: object, topic: str, payload: bytes, _qos: int, props: dict[str, object]
    ) -> int:
        self.stats.received += 1
        if self._on_message is not None:
            self._on_message(topic, payload, bool(props.get("retain")))
        return 0

    # ---- connection ------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set() and bool(self._client.is_connected)

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def connect(self, *, timeout: float | None = None, retry: bool = True) -> None:
        """Connect; while the broker is unreachable retry (until ``timeout``, None = forever).

        A refusal by the broker raises :class:`BrokerError` at once.
        """
        await connect_with_retry(
            self._attempt, self.settings, timeout=timeout, retry=retry, backoff=self.backoff
        )

    async def _attempt(self) -> None:
        """One attempt, gmqtt's and the TLS layer's refusals translated to BrokerError."""
        s = self.settings
        try:
            await self._connect_once()
        except gmqtt.mqtt.handler.MQTTConnectError as exc:
            code = getattr(exc, "_code", None)
            reason = CONNACK_REASONS.get(code or 0, str(exc))
            with contextlib.suppress(Exception):
                await self._client.disconnect()
            raise BrokerError(f"broker {s.address} refused {self.name}: {reason}") from exc
        except ssl.SSLError as exc:
            raise BrokerError(tls_failure(s.address, exc)) from exc

    async def _connect_once(self) -> None:
        """One attempt; a connection closed before CONNACK is a refusal (e.g. a rejected
        client certificate under TLS 1.3): :class:`BrokerError`, not gmqtt's endless retry."""
        s = self.settings
        self._lost_early.clear()
        attempt = asyncio.ensure_future(
            self._client.connect(
                s.host, s.port, ssl=ssl_context(s) or False, keepalive=s.keepalive, version=MQTTv311
            )
        )
        lost = asyncio.ensure_future(self._lost_early.wait())
        try:
            await asyncio.wait({attempt, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not attempt.done() and self._client._connack_received.is_set():
            # a CONNACK came before the close (a refusal by code): let gmqtt raise it
            await asyncio.wait({attempt}, timeout=5)
        if attempt.done():
            attempt.result()
            return
        attempt.cancel()
        exc = self._client.lost_exc
        self.abort()
        raise BrokerError(closed_before_connack(s, self.name, exc))

    async def subscribe(self, filters: Sequence[str], qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait for the broker's SUBACK (re-subscribed after a lost session).

        Raises :class:`BrokerError` if the broker refuses a filter (e.g. an ACL).
        """
        subs = [gmqtt.Subscription(f, qos=qos) for f in filters]
        self._filters.extend((f, qos) for f in filters)
        mid = self._client.subscribe(subs)
        waiter: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        self._suback[mid] = waiter
        try:
            await await_suback(waiter, filters, self.settings, timeout)
        finally:
            self._suback.pop(mid, None)

    def _handle_subscribe(self, _c: object, mid: int, granted: tuple[int, ...], _p: object) -> None:
        waiter = self._suback.get(mid)
        if waiter is not None and not waiter.done():
            waiter.set_result(tuple(granted))

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish now, or buffer while disconnected (bounded: the oldest are dropped)."""
        if self.connected and not self._buffer:
            self._client.publish(topic, payload, qos=qos, retain=retain)
            return
        if len(self._buffer) >= self._buffer_size:
            if self._buffer_size == 0:
                self.stats.dropped += 1
                return
            self._buffer.popleft()
            self.stats.dropped += 1
        self._buffer.append((topic, payload, qos, retain))
        self.stats.buffered = len(self._buffer)
        if self.connected:
            self._flush_buffer()

    def _flush_buffer(self) -> None:
        while self._buffer and self.connected:
            topic, payload, qos, retain = self._buffer.popleft()
            self._client.publish(topic, payload, qos=qos, retain=retain)
        self.stats.buffered = len(self._buffer)

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker (buffered or in flight)."""
        return len(self._buffer) + len(self._client._persistent_storage.get_all())

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every QoS>0 message published so far is acknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return self.pending == 0

    async def disconnect(self) -> None:
        """Close cleanly (DISCONNECT sent, so no Last Will)."""
        with contextlib.suppress(Exception):
            await self._client.disconnect()
        self._connected.clear()

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a crash would (the Will fires)."""
        self._client.stop_reconnect()
        # stop_reconnect() alone still lets gmqtt make one reconnect attempt (its retry check
        # is ``failed <= retries``, 0 <= 0); an inactive client makes none, as after a crash.
        self._client._is_active = False
        conn = self._client._connection
        if conn is not None:
            transport = getattr(conn, "_transport", None)
            if transport is not None:
                transport.abort()
        self._connected.clear()

    async def __aenter__(self) -> MqttClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()


_quiet_logger = logging.getLogger("mqtt_anomaly.transport.gmqtt")

"""An in-process MQTT broker (amqtt) for ``mqtt-anomaly demo`` on a machine without one.

>>> async def main() -> None:  # doctest: +SKIP
...     async with EmbeddedBroker(host="127.0.0.1", port=0) as broker:
...         print(broker.url)  # mqtt://127.0.0.1:40123 (port 0: a free port)

MQTT 3.1.1 with QoS 0/1/2, retained messages, Last Will and persistent sessions
(``clean_session`` off: subscriptions and QoS 1/2 messages are kept while the client is away,
for ``session_expiry`` seconds). Anyone may connect. Everything lives in memory: a restart
forgets sessions and retained messages.

It runs in the caller's event loop, so its work competes with the application's. It relays
about 3,000-4,500 QoS 1 messages per second from one publisher to one subscriber (measured
on a 2-vCPU VM, where Mosquitto relays 30,000-40,000 to the same Python clients): enough for
a demo fleet; beyond a few thousand readings per second use Mosquitto.

:func:`broker_answers` tells whether a broker is already listening somewhere (a real MQTT
CONNECT/CONNACK exchange, not just an open port).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from .._lifecycle import AsyncClosing
from ..errors import BrokerError
from . import codec

log = logging.getLogger(__name__)

AMQTT_LOGGERS = ("amqtt", "transitions")


class EmbeddedBroker(AsyncClosing):
    """An amqtt broker listening on ``host:port`` (0: a free port) while the context is open.

    ``log_level`` is applied to amqtt's loggers (it is chatty at INFO); None leaves logging
    configuration alone. ``session_expiry`` is how long a disconnected persistent session
    (and its queued messages) is kept; None keeps it until the broker stops.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        session_expiry: int | None = 3600,
        log_level: int | None = logging.WARNING,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._session_expiry = session_expiry
        self._log_level = log_level
        self._shutdown_timeout = shutdown_timeout
        self._noise = _DropNoise()
        self._broker: _Broker | None = None

    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("the embedded broker is not running")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT`` for clients (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._broker is not None

    async def start(self) -> None:
        """Bind and start serving; :class:`BrokerError` if it cannot (e.g. port in use)."""
        if self._broker is not None:
            return
        if self._log_level is not None:
            for name in AMQTT_LOGGERS:
                logging.getLogger(name).setLevel(self._log_level)
        if self._log_level is not None and self._log_level > logging.DEBUG:
            self._noise.install()
        broker = _Broker(self._config())
        try:
            await broker.start()
        except Exception as exc:
            self._noise.remove()
            cause = exc.__cause__ or exc
            raise BrokerError(
                f"cannot start the embedded MQTT broker on {self.host}:{self._requested_port}: "
                f"{cause}"
            ) from exc
        self._port = _listening_port(broker)
        self._broker = broker
        log.info("embedded MQTT broker listening on %s", self.url)

    async def stop(self) -> None:
        """Close every connection and the listener. Idempotent."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        # Connections first: amqtt's own shutdown can wait forever on the reader of a
        # resumed persistent session that is still connected.
        broker.close_listeners()
        broker.abort_connections()
        try:
            await asyncio.wait_for(broker.shutdown(), self._shutdown_timeout)
        except TimeoutError:
            log.warning("embedded MQTT broker: shutdown timed out; tasks cancelled")
            await broker.cancel_tasks()
        except Exception as exc:  # a failed shutdown must not hide the caller's own error
            log.warning("embedded MQTT broker did not shut down cleanly: %s", exc)
            await broker.cancel_tasks()
        self._noise.remove()
        self._port = None

    async def _exit(self, clean: bool) -> None:
        await self.stop()

    def _config(self) -> dict[str, Any]:
        # amqtt splits the bind address at the last colon, so an IPv6 address goes in bare.
        return {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self._requested_port}"},
            },
            "session_expiry_interval": self._session_expiry,
            "plugins": {f"{__name__}.OpenAuthPlugin": {}},
        }


class _DropNoise(logging.Filter):
    """Drops amqtt records that say nothing useful to an operator: connections that never
    spoke MQTT (port probes), acknowledgements arriving after their exchange ended (a client
    leaving with messages in flight: hundreds of lines), and its traceback for a failed start
    (the caller gets a BrokerError instead)."""

    PATTERN = re.compile(
        r"Broker startup failed|No data from|Failed to initialize client session"
        r"|Received PUB(ACK|REC|REL|COMP) for unknown|PUB(ACK|REC|REL|COMP) waiter with Id"
    )
    LOGGERS = ("amqtt.broker", "amqtt.mqtt.protocol.handler")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.PATTERN.match(str(record.msg))

    def install(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)

    def remove(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


def _listening_port(broker: Broker) -> int:
    # amqtt exposes no accessor for the bound address; its listener servers are kept here.
    servers = getattr(broker, "_servers", {})
    for server in servers.values():
        for sock in getattr(server.instance, "sockets", ()) or ():
            return int(sock.getsockname()[1])
    raise BrokerError("embedded MQTT broker: cannot find the port it listens on")


class _Broker(Broker):  # type: ignore[misc]
    """amqtt's broker with fixes, each covered by tests/test_embedded.py:

    - on connect, amqtt sends a client the retained messages matching *every* client's
      subscriptions; here a client gets only those of its own subscriptions;
    - messages queued for an offline persistent session are delivered without the retain
      flag ([MQTT-3.3.1-9]: they are not retained messages);
    - client connections are tracked, so that stopping can drop them first (amqtt's
      shutdown alone can hang on a resumed persistent session that is still connected).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.connections: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        self.connections[writer] = asyncio.current_task()
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            self.connections.pop(writer, None)

    def close_listeners(self) -> None:
        """Stop accepting connections."""
        for server in self._servers.values():
            if server.instance is not None:
                server.instance.close()

    def abort_connections(self) -> None:
        """Drop every client connection at once (no DISCONNECT in MQTT 3.1.1)."""
        for writer in list(self.connections):
            writer.transport.abort()

    async def cancel_tasks(self) -> None:
        """Cancel what a failed shutdown left running."""
        tasks = [t for t in self.connections.values() if t is not None]
        tasks += [t for t in (self._broadcast_task, self._session_monitor_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter = subscription[0]
        subscribers = self._subscriptions.get(topic_filter, ())
        if any(s.client_id == session.client_id for s, _qos in subscribers):
            await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        while not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            publish = handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False)
            tasks.append(asyncio.ensure_future(publish))
        if tasks:
            await asyncio.wait(tasks)


class OpenAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Let every client in, and treat it as a named client rather than an anonymous one.

    amqtt's own anonymous plugin marks sessions anonymous, and amqtt then neither keeps
    their persistent sessions nor queues messages for them while they are offline.
    """

    @dataclass
    class Config:
        """No options."""

    async def authenticate(self, *, session: Session) -> bool:
        return True


# ---- probing -----------------------------------------------------------------------------
async def broker_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when an MQTT broker answers a CONNECT on ``host:port`` within ``timeout``.

    Any well-formed CONNACK counts, even a refusal (a broker wanting credentials is still a
    broker). A closed port, a silent listener or another protocol gives False.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            client_id = f"mqtt-anomaly-probe-{secrets.token_hex(4)}"
            writer.write(codec.connect(client_id, clean_session=True, keepalive=5))
            await writer.drain()
            packets, _ = codec.split(await reader.readexactly(4))  # a CONNACK has 4 bytes
            if not packets or packets[0].kind != codec.CONNACK or packets[0].flags:
                return False
            connack = codec.decode_connack(packets[0].body)
            if connack.accepted:
                writer.write(codec.disconnect())  # leave cleanly
                await writer.drain()
            return connack.accepted or connack.return_code in codec.CONNACK_REASONS
    except (OSError, TimeoutError, asyncio.IncompleteReadError, codec.MalformedPacketError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 0.2)

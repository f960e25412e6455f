"""The embedded amqtt broker, driven by real gmqtt and paho-mqtt clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import gmqtt
import paho.mqtt.client as paho
import pytest
from gmqtt.mqtt.constants import MQTTv311

from mqtt_anomaly.errors import BrokerError
from mqtt_anomaly.transport import codec
from mqtt_anomaly.transport.embedded import EmbeddedBroker, broker_answers

from .helpers import eventually
from .mosquitto import Mosquitto, free_port

HOST = "127.0.0.1"


class Gm:
    """A gmqtt client that records what it receives."""

    def __init__(
        self, client_id: str, *, clean: bool = True, will: gmqtt.Message | None = None
    ) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.session_present: bool | None = None
        self._subacks: dict[int, asyncio.Future[Any]] = {}
        self.client = gmqtt.Client(client_id, clean_session=clean, will_message=will)
        self.client.set_config({"reconnect_retries": 0})
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe

    def _on_message(self, _c: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        self.messages.append((topic, payload, qos, bool(props.get("retain"))))
        return 0

    def _on_connect(self, _c: Any, flags: int, _rc: int, _props: Any) -> None:
        self.session_present = bool(flags)

    def _on_subscribe(self, _c: Any, mid: int, qos: Any, _props: Any) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(qos)

    async def connect(self, port: int) -> Gm:
        await self.client.connect(HOST, port, version=MQTTv311, keepalive=30)
        return self

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        fut = asyncio.get_running_loop().create_future()
        mid = self.client.subscribe(topic, qos=qos)
        self._subacks[mid] = fut
        granted = await asyncio.wait_for(fut, 5)
        assert tuple(granted) == (qos,)

    def payloads(self) -> list[bytes]:
        return [m[1] for m in self.messages]

    async def disconnect(self) -> None:
        await self.client.disconnect()


class Paho:
    """A paho-mqtt client on its own network thread."""

    def __init__(self, client_id: str, *, clean: bool = True) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean,
            protocol=paho.MQTTv311,
        )
        self.client.on_connect = lambda *_a: self.connected.set()
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (m.topic, m.payload, m.qos, bool(m.retain))
        )

    async def connect(self, port: int) -> Paho:
        await asyncio.to_thread(self.client.connect, HOST, port, 30)
        self.client.loop_start()
        assert await asyncio.to_thread(self.connected.wait, 5)
        return self

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos)
        assert await asyncio.to_thread(self.subscribed.wait, 5)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        await asyncio.to_thread(info.wait_for_publish, 5)
        assert info.is_published()

    async def disconnect(self) -> None:
        await asyncio.to_thread(self.client.disconnect)
        self.client.loop_stop()


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(host=HOST, port=0) as b:
        yield b


# ---- lifecycle -----------------------------------------------------------------------
async def test_free_port_and_url() -> None:
    idle = EmbeddedBroker()
    with pytest.raises(RuntimeError):
        _ = idle.url
    async with EmbeddedBroker(port=0) as a, EmbeddedBroker(port=0) as b:
        assert a.port != b.port
        assert a.port > 0
        assert a.url == f"mqtt://127.0.0.1:{a.port}"
        assert a.running
        port = a.port
        assert await broker_answers(HOST, port)
    assert not a.running
    assert not await broker_answers(HOST, port)  # stopped means stopped


async def test_port_in_use_is_a_clear_error(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(
        BrokerError, match=rf"cannot start the embedded MQTT broker on .*:{broker.port}"
    ):
        async with EmbeddedBroker(port=broker.port):
            pass
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []  # no traceback


async def test_explicit_port(broker: EmbeddedBroker) -> None:
    port = free_port()
    async with EmbeddedBroker(port=port) as b:
        assert b.port == port
        assert await broker_answers(HOST, port)


async def test_amqtt_kept_quiet(broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert logging.getLogger("amqtt").getEffectiveLevel() == logging.WARNING
    c = await Gm("quiet").connect(broker.port)
    await c.subscribe("q/#")
    c.client.publish("q/1", b"x", qos=1)
    await eventually(lambda: len(c.messages) == 1)
    await c.disconnect()
    # A port probe and a stray protocol: amqtt would log an ERROR and a WARNING for each.
    for junk in (b"", b"GET / HTTP/1.1\r\n\r\n"):
        _reader, writer = await asyncio.open_connection(HOST, broker.port)
        writer.write(junk)
        await writer.drain()
        writer.close()
    amqtt_broker = broker._broker
    assert amqtt_broker is not None
    await eventually(lambda: not amqtt_broker.connections, what="the probes handled")
    amqtt_records = [r for r in caplog.records if r.name.startswith("amqtt")]
    assert [r for r in amqtt_records if r.levelno < logging.WARNING] == []
    assert [r.getMessage() for r in amqtt_records if r.name == "amqtt.broker"] == []


async def test_late_acknowledgement_is_quiet(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A PUBACK for an exchange the broker already closed (a client leaving mid-stream) is
    logged by amqtt at WARNING, once per message; it must not reach the operator."""
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection(HOST, broker.port)
    writer.write(codec.connect("late-acker", keepalive=5))
    assert (await reader.readexactly(4))[:2] == b"\x20\x02"
    for packet_id in (4242, 4243):
        writer.write(b"\x40\x02" + packet_id.to_bytes(2, "big"))  # PUBACK
    writer.write(b"\xc0\x00")  # PINGREQ: answered after the PUBACKs were read
    await writer.drain()
    assert await reader.readexactly(2) == b"\xd0\x00"
    writer.write(b"\xe0\x00")
    writer.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_any_client_may_connect(broker: EmbeddedBroker) -> None:
    anonymous = await Gm("anon").connect(broker.port)
    named = Gm("named")
    named.client.set_auth_credentials("operator", "whatever")
    await named.connect(broker.port)
    await anonymous.subscribe("a/#")
    named.client.publish("a/1", b"x", qos=1)
    await eventually(lambda: anonymous.payloads() == [b"x"])
    await named.disconnect()
    await anonymous.disconnect()


# ---- delivery ------------------------------------------------------------------------
async def test_gmqtt_qos1_in_order(broker: EmbeddedBroker) -> None:
    sub = await Gm("sub").connect(broker.port)
    await sub.subscribe("factory/+/temperature", qos=1)
    pub = await Gm("pub").connect(broker.port)
    sent = [f"{i}".encode() for i in range(200)]
    for p in sent:
        pub.client.publish("factory/S1/temperature", p, qos=1)
    pub.client.publish("factory/S1/status", b"not matched", qos=1)
    await eventually(lambda: len(sub.messages) >= len(sent), what="200 messages")
    assert sub.payloads() == sent
    assert {(m[0], m[2], m[3]) for m in sub.messages} == {("factory/S1/temperature", 1, False)}
    await pub.disconnect()
    await sub.disconnect()


async def test_qos2_delivered_once(broker: EmbeddedBroker) -> None:
    sub = await Gm("sub2").connect(broker.port)
    await sub.subscribe("q2/#", qos=2)
    pub = await Gm("pub2").connect(broker.port)
    for i in range(20):
        pub.client.publish(f"q2/{i}", b"x", qos=2)
    pub.client.publish("q2/end", b"end", qos=2)
    await eventually(lambda: b"end" in sub.payloads())
    assert sorted(m[0] for m in sub.messages) == sorted([f"q2/{i}" for i in range(20)] + ["q2/end"])
    assert {m[2] for m in sub.messages} == {2}
    await pub.disconnect()
    await sub.disconnect()


async def test_paho_and_gmqtt_interoperate(broker: EmbeddedBroker) -> None:
    p = await Paho("paho-1").connect(broker.port)
    g = await Gm("gm-1").connect(broker.port)
    await p.subscribe("from-gmqtt/#", qos=1)
    await g.subscribe("from-paho/#", qos=1)
    for i in range(50):
        await p.publish(f"from-paho/{i}", f"p{i}".encode(), qos=1)
        g.client.publish(f"from-gmqtt/{i}", f"g{i}".encode(), qos=1)
    await eventually(lambda: len(p.messages) == 50 and len(g.messages) == 50)
    assert [m[1] for m in p.messages] == [f"g{i}".encode() for i in range(50)]
    assert g.payloads() == [f"p{i}".encode() for i in range(50)]
    assert {m[2] for m in p.messages} == {1}
    await p.disconnect()
    await g.disconnect()


async def test_retained_message_reaches_later_subscriber(broker: EmbeddedBroker) -> None:
    pub = await Gm("retainer").connect(broker.port)
    pub.client.publish("factory/S1/health", b"ok", qos=1, retain=True)
    pub.client.publish("factory/S2/health", b"offline", qos=1, retain=True)
    pub.client.publish("factory/S2/health", b"anomalous", qos=1, retain=True)  # replaces
    late = await Paho("late").connect(broker.port)
    await eventually(lambda: len(broker_retained(broker)) == 2, what="retained state")
    await late.subscribe("factory/+/health", qos=1)
    await eventually(lambda: len(late.messages) == 2)
    assert sorted(late.messages) == [
        ("factory/S1/health", b"ok", 1, True),
        ("factory/S2/health", b"anomalous", 1, True),
    ]
    # An empty retained payload clears it: the next subscriber gets only the marker.
    pub.client.publish("factory/S1/health", b"", qos=1, retain=True)
    await eventually(lambda: len(broker_retained(broker)) == 1, what="retained cleared")
    later = await Gm("later").connect(broker.port)
    await later.subscribe("factory/S1/#", qos=1)
    pub.client.publish("factory/S1/marker", b"m", qos=1)
    await eventually(lambda: b"m" in later.payloads())
    assert later.payloads() == [b"m"]
    for c in (pub, later):
        await c.disconnect()
    await late.disconnect()


async def test_retained_only_for_own_subscriptions(broker: EmbeddedBroker) -> None:
    pub = await Gm("r-pub").connect(broker.port)
    pub.client.publish("factory/S1/health", b"ok", qos=1, retain=True)
    other = await Gm("r-other").connect(broker.port)
    await other.subscribe("factory/+/health", qos=1)
    await eventually(lambda: other.payloads() == [b"ok"])
    newcomer = await Gm("r-new").connect(broker.port)  # subscribes to something else
    await newcomer.subscribe("elsewhere/#", qos=1)
    pub.client.publish("elsewhere/marker", b"m", qos=1)
    await eventually(lambda: b"m" in newcomer.payloads())
    assert newcomer.payloads() == [b"m"]
    for c in (pub, other, newcomer):
        await c.disconnect()


def broker_retained(broker: EmbeddedBroker) -> dict[str, Any]:
    assert broker._broker is not None
    return dict(broker._broker.retained_messages)


# ---- Last Will -----------------------------------------------------------------------
DOOMED = """
import sys, threading, paho.mqtt.client as mqtt
up = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="doomed", protocol=mqtt.MQTTv311)
c.will_set("factory/S9/health", b"offline", qos=1, retain=True)
c.on_connect = lambda *a: up.set()
c.connect("127.0.0.1", int(sys.argv[1]), 30)
c.loop_start()
assert up.wait(5)
print("up", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def doomed_client(port: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", DOOMED, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(5)


async def test_last_will_fires_on_abrupt_close(broker: EmbeddedBroker) -> None:
    watcher = await Gm("watcher").connect(broker.port)
    await watcher.subscribe("factory/+/health", qos=1)
    with doomed_client(broker.port) as proc:
        assert proc.stdout is not None
        assert await asyncio.to_thread(proc.stdout.readline) == "up\n"
        assert watcher.messages == []
        proc.kill()  # the socket closes without DISCONNECT
        await eventually(lambda: watcher.payloads() == [b"offline"], what="the will")
    assert watcher.messages[0][0] == "factory/S9/health"
    late = await Gm("late-watcher").connect(broker.port)
    await late.subscribe("factory/S9/health", qos=1)
    await eventually(lambda: late.messages == [("factory/S9/health", b"offline", 1, True)])
    await watcher.disconnect()
    await late.disconnect()


async def test_no_will_after_clean_disconnect(broker: EmbeddedBroker) -> None:
    watcher = await Gm("watcher2").connect(broker.port)
    await watcher.subscribe("w/#", qos=1)
    polite = await Gm("polite", will=gmqtt.Message("w/will", b"gone", qos=1)).connect(broker.port)
    await polite.disconnect()
    other = await Gm("other").connect(broker.port)
    other.client.publish("w/marker", b"m", qos=1)
    await eventually(lambda: b"m" in watcher.payloads())
    assert watcher.payloads() == [b"m"]
    await other.disconnect()
    await watcher.disconnect()


# ---- persistent sessions -------------------------------------------------------------
async def test_persistent_session_keeps_subscription_and_queues(broker: EmbeddedBroker) -> None:
    keeper = await Gm("keeper", clean=False).connect(broker.port)
    assert keeper.session_present is False
    await keeper.subscribe("factory/+/temperature", qos=1)
    await keeper.disconnect()
    pub = await Gm("pub-p").connect(broker.port)
    for i in range(5):
        pub.client.publish("factory/S1/temperature", f"{i}".encode(), qos=1)
    await eventually(lambda: queued_for(broker, "keeper") == 5, what="5 queued messages")
    back = await Gm("keeper", clean=False).connect(broker.port)  # no new SUBSCRIBE
    assert back.session_present is True
    await eventually(lambda: len(back.messages) == 5)
    assert back.payloads() == [f"{i}".encode() for i in range(5)]
    assert {(m[2], m[3]) for m in back.messages} == {(1, False)}  # queued, not retained
    pub.client.publish("factory/S1/temperature", b"live", qos=1)
    await eventually(lambda: b"live" in back.payloads())
    await back.disconnect()
    await pub.disconnect()


async def test_clean_session_forgets(broker: EmbeddedBroker) -> None:
    first = await Gm("forgetful", clean=False).connect(broker.port)
    await first.subscribe("f/#", qos=1)
    await first.disconnect()
    again = await Gm("forgetful", clean=True).connect(broker.port)
    assert again.session_present is False
    pub = await Gm("pub-f").connect(broker.port)
    pub.client.publish("f/1", b"x", qos=1)
    marker = await Gm("marker").connect(broker.port)
    await marker.subscribe("f/#", qos=1)
    pub.client.publish("f/2", b"y", qos=1)
    await eventually(lambda: b"y" in marker.payloads())
    assert again.messages == []
    for c in (again, pub, marker):
        await c.disconnect()


async def test_stop_is_prompt_with_clients_connected() -> None:
    broker = EmbeddedBroker(shutdown_timeout=30)
    await broker.start()
    port = broker.port
    keeper = await Gm("keeper-s", clean=False).connect(port)
    await keeper.subscribe("s/#", qos=1)
    await keeper.disconnect()
    pub = await Gm("pub-s").connect(port)
    pub.client.publish("s/1", b"x", qos=1)
    await eventually(lambda: queued_for(broker, "keeper-s") == 1)
    back = await Gm("keeper-s", clean=False).connect(port)  # a resumed session, left connected
    await eventually(lambda: back.payloads() == [b"x"])
    started = time.monotonic()
    await broker.stop()
    assert time.monotonic() - started < 3.0  # not by the timeout: amqtt alone hangs here
    assert not await broker_answers(HOST, port)
    for c in (pub, back):
        c.client.stop_reconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(c.disconnect(), 1)


def queued_for(broker: EmbeddedBroker, client_id: str) -> int:
    assert broker._broker is not None
    session = broker._broker.sessions[client_id][0]
    return int(session.retained_messages.qsize())


# ---- broker_answers ------------------------------------------------------------------
async def test_broker_answers_embedded(broker: EmbeddedBroker) -> None:
    assert await broker_answers(HOST, broker.port)


async def test_broker_answers_mosquitto(mosquitto: Mosquitto) -> None:
    assert await broker_answers(HOST, mosquitto.port, timeout=2.0)


async def test_broker_answers_closed_port() -> None:
    assert not await broker_answers(HOST, free_port())


@contextlib.asynccontextmanager
async def tcp_server(reply: bytes | None) -> AsyncIterator[int]:
    """A non-MQTT listener: sends ``reply`` (None: echoes what it reads, b"": stays silent)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            if reply is None:
                writer.write(await reader.read(1024))
            elif reply:
                writer.write(reply)
            await writer.drain()
            await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        None,
        b"",
    ],
    ids=["http", "ssh", "echo", "silent"],
)
async def test_broker_answers_false_for_other_listeners(reply: bytes | None) -> None:
    async with tcp_server(reply) as port:
        started = time.monotonic()
        assert not await broker_answers(HOST, port, timeout=0.3)
        assert time.monotonic() - started < 1.5


# ---- throughput ----------------------------------------------------------------------
async def test_relay_rate_qos1(
    broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """QoS 1 messages relayed per second, one publisher to one subscriber (printed).

    Also checks the acknowledgement bookkeeping under load: amqtt registers its PUBACK
    waiter after sending, so a fast PUBACK used to be "unknown" and the send timed out.
    """
    caplog.set_level(logging.WARNING, logger="amqtt")
    n = 3000
    sub = await Gm("rate-sub").connect(broker.port)
    await sub.subscribe("rate/#", qos=1)
    pub = await Gm("rate-pub").connect(broker.port)
    payload = b'{"sensor_id":"S1","ts":1700000000.0,"value":24.5,"seq":1}'
    started = time.perf_counter()
    for i in range(n):
        pub.client.publish(f"rate/S{i % 50}", payload, qos=1)
        if i % 100 == 99:
            await asyncio.sleep(0)  # let the broker run, as a real publisher would
    await eventually(lambda: len(sub.messages) >= n, timeout=60, what=f"{n} messages")
    rate = n / (time.perf_counter() - started)
    assert len(sub.messages) == n
    with capsys.disabled():
        print(f"\nembedded broker relays {rate:.0f} QoS 1 msg/s (1 publisher → 1 subscriber)")
    assert rate > 100
    await pub.disconnect()
    await sub.disconnect()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("amqtt")] == []


async def test_qos2_under_load_to_paho(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """paho hands a QoS 2 message over only on PUBREL: a lost PUBREC must not lose it."""
    caplog.set_level(logging.WARNING, logger="amqtt")
    n = 1000
    sub = await Paho("paho-q2").connect(broker.port)
    await sub.subscribe("load2/#", qos=2)
    pub = await Gm("gm-q2").connect(broker.port)
    for i in range(n):
        pub.client.publish(f"load2/{i % 10}", f"{i}".encode(), qos=2)
        if i % 100 == 99:
            await asyncio.sleep(0)
    await eventually(lambda: len(sub.messages) >= n, timeout=60, what=f"{n} QoS 2 messages")
    assert sorted(int(m[1]) for m in sub.messages) == list(range(n))
    await pub.disconnect()
    await sub.disconnect()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("amqtt")] == []

"""The service's MQTT connection: packet parsing across reads, acks after processing."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from mqtt_anomaly.config import BrokerSettings
from mqtt_anomaly.errors import BrokerError
from mqtt_anomaly.pki import mosquitto_hash
from mqtt_anomaly.transport import codec
from mqtt_anomaly.transport.lean import AckHold, Batch, LeanClient, _Protocol, _tcp_options

from .helpers import eventually
from .mosquitto import Mosquitto, free_port


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        self.aborted = True


def make() -> tuple[LeanClient, _Protocol, FakeTransport, list[Batch]]:
    batches: list[Batch] = []
    client = LeanClient(BrokerSettings(), "t", on_batch=batches.append, clock=lambda: 1.0)
    proto = _Protocol(client)
    transport = FakeTransport()
    proto.connection_made(transport)
    return client, proto, transport, batches


def test_packets_split_anywhere_are_reassembled() -> None:
    _, proto, transport, batches = make()
    big = b"x" * 300  # two-byte remaining length
    stream = (
        codec.publish("factory/S1/temperature", b"24.5", qos=1, packet_id=7)
        + codec.publish("factory/S2/temperature", big, qos=0)
        + codec.publish("factory/S3/temperature", b"{}", qos=2, packet_id=9)
    )
    for cut in range(1, len(stream)):
        batches.clear()
        transport.written.clear()
        proto.rest = b""
        proto.data_received(stream[:cut])
        proto.data_received(stream[cut:])
        got = [m for b in batches for m in b]
        assert [(t, p) for t, p, _ in got] == [
            ("factory/S1/temperature", b"24.5"),
            ("factory/S2/temperature", big),
            ("factory/S3/temperature", b"{}"),
        ]
        acks = b"".join(transport.written)
        assert acks == codec.puback(7) + codec.pubrec(9)


def test_acks_written_once_per_read_after_the_batch() -> None:
    order: list[str] = []
    client, proto, transport, _ = make()
    client._on_batch = lambda b: order.append(f"batch {len(b)}")
    transport.write = lambda data: order.append(f"write {len(data)}")  # type: ignore[method-assign]
    proto.data_received(
        b"".join(codec.publish("a/S/b", b"1", qos=1, packet_id=m) for m in range(1, 101))
    )
    assert order == ["batch 100", "write 400"]


def test_a_failing_batch_does_not_stop_acks() -> None:
    client, proto, transport, _ = make()

    def boom(batch: Batch) -> None:
        raise RuntimeError("bug")

    client._on_batch = boom
    proto.data_received(codec.publish("a/S/b", b"1", qos=1, packet_id=5))
    assert transport.written == [codec.puback(5)]


async def test_refused_and_unreachable_broker(tmp_path: Path) -> None:
    """A broker that refuses our credentials fails the first connect at once with its
    reason; a closed port is "cannot reach" once the timeout is over; the right password
    connects (so the refusals are about the credentials)."""
    passwords = tmp_path / "passwd"
    passwords.write_text(f"detector:{mosquitto_hash('right')}\n")
    port = free_port()
    broker = Mosquitto(
        tmp_path / "auth",
        port=port,
        plaintext=False,
        extra_config=f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {passwords}\n",
    ).start()
    try:
        for credentials in ({}, {"username": "detector", "password": "wrong"}):
            client = LeanClient(
                BrokerSettings(url=broker.url, **credentials), "x", on_batch=lambda b: None
            )
            with pytest.raises(BrokerError) as refused:
                await asyncio.wait_for(client.connect(timeout=30), 5)  # no retry: at once
            assert str(refused.value) == f"broker 127.0.0.1:{port} refused x: not authorised"
            assert not client.connected
        ok = LeanClient(
            BrokerSettings(url=broker.url, username="detector", password="right"),
            "x",
            on_batch=lambda b: None,
        )
        await ok.connect(timeout=5)
        assert ok.connected
        await ok.disconnect()
    finally:
        broker.stop()
    closed = free_port()  # nothing listens there
    unreachable = LeanClient(
        BrokerSettings(url=f"mqtt://127.0.0.1:{closed}"), "x", on_batch=lambda b: None
    )
    with pytest.raises(BrokerError, match=f"^cannot reach broker at 127.0.0.1:{closed}: "):
        await unreachable.connect(timeout=0.5)
    assert not unreachable.connected


async def test_a_malformed_packet_drops_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    """One error line and an aborted connection; nothing of that read is processed or
    acknowledged (the broker sends it again on the next connection)."""
    following = codec.pingresp()
    for bad, why in [
        (b"\x30\xff\xff\xff\xff\x01", "remaining length longer than four bytes"),
        (b"\x90\x02\x00\x01", "SUBACK packet without a return code"),
        (b"\x20\x02\x02\x00", "CONNACK packet: reserved flags set"),
        (b"\x32\x03\x00\x05t" + following, "PUBLISH packet truncated (3 bytes)"),
        (b"\x32\x01\x00", "truncated packet"),  # too short for its topic, at the end
    ]:
        client, proto, transport, batches = make()
        client._connack = asyncio.get_running_loop().create_future()
        caplog.clear()
        proto.data_received(codec.publish("a/S/b", b"1", qos=1, packet_id=5) + bad)
        assert transport.aborted and batches == [] and transport.written == []
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert errors == [f"broker localhost:1883 sent a malformed packet ({why}): reconnecting"]


async def test_publish_buffered_while_down_then_delivered(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "b").start()
    received: list[Batch] = []
    sub = LeanClient(BrokerSettings(url=broker.url), "sub", on_batch=received.append)
    pub = LeanClient(BrokerSettings(url=broker.url), "pub", on_batch=lambda b: None)
    try:
        await sub.connect(timeout=5)
        await sub.subscribe(["t/#"])
        await pub.connect(timeout=5)
        broker.stop()
        await eventually(lambda: not pub.connected, what="publisher notices the outage")
        for i in range(50):
            pub.publish("t/x", str(i).encode())
        assert pub.pending == 50
        broker.start()
        await eventually(lambda: pub.pending == 0, timeout=15, what="buffer delivered")
        await eventually(
            lambda: sum(len(b) for b in received) >= 50, timeout=15, what="all received"
        )
        got = [p for b in received for _, p, _ in b]
        assert got == [str(i).encode() for i in range(50)]
    finally:
        await pub.disconnect()
        await sub.disconnect()
        broker.stop()


def window_client(url: str, client_id: str, window: int = 10) -> LeanClient:
    return LeanClient(
        BrokerSettings(url=url, max_inflight=window), client_id, on_batch=lambda b: None
    )


async def test_window_bounds_unacknowledged_publishes(mosquitto: Mosquitto) -> None:
    """5,000 QoS 1 publishes through a window of 10: all arrive in order, never more than
    10 unacknowledged, and a ticket taken half-way is confirmed only once its messages
    (queued when it was taken) are acknowledged."""
    received: list[Batch] = []
    sub = LeanClient(BrokerSettings(url=mosquitto.url), "window-sub", on_batch=received.append)
    pub = window_client(mosquitto.url, "window-pub")
    try:
        await sub.connect(timeout=5)
        await sub.subscribe(["w/#"])
        await pub.connect(timeout=5)
        for i in range(2500):
            pub.publish("w/x", str(i).encode())
        ticket = pub.outgoing_mark()
        assert pub.inflight == 10 and pub.queued == 2490  # nothing raised, nothing lost
        for i in range(2500, 5000):
            pub.publish("w/x", str(i).encode())
        waiting = asyncio.create_task(pub.wait_outgoing(ticket))
        await asyncio.sleep(0)
        assert not waiting.done()
        await asyncio.wait_for(waiting, 30)
        assert pub.acked >= 2500  # confirmed only after every message up to the ticket
        assert await pub.drain(30)
        assert pub.acked == 5000 and pub.pending == 0
        assert pub.peak_inflight == 10
        await eventually(
            lambda: sum(len(b) for b in received) >= 5000, timeout=30, what="all received"
        )
        got = [p for b in received for _, p, _ in b]
        assert got == [str(i).encode() for i in range(5000)]
    finally:
        await pub.disconnect()
        await sub.disconnect()


async def test_window_queue_survives_a_broker_restart(mosquitto: Mosquitto) -> None:
    """The broker restarts while thousands of publishes wait for the window: none is lost
    (those in flight are sent again, the queue follows)."""
    received: list[Batch] = []
    sub = LeanClient(BrokerSettings(url=mosquitto.url), "restart-sub", on_batch=received.append)
    pub = window_client(mosquitto.url, "restart-pub")
    try:
        await sub.connect(timeout=5)
        await sub.subscribe(["w/#"])
        await pub.connect(timeout=5)
        for i in range(5000):
            pub.publish("w/x", str(i).encode())
        await eventually(lambda: pub.acked >= 100, what="some acknowledged")
        assert pub.queued > 0  # restarted mid-queue
        mosquitto.restart()
        await eventually(lambda: pub.stats.connects == 2, timeout=15, what="reconnected")
        assert await pub.drain(60)
        assert pub.peak_inflight <= 10

        def all_there() -> bool:
            return {p for b in received for _, p, _ in b} == {str(i).encode() for i in range(5000)}

        await eventually(all_there, timeout=30, what="every message at the subscriber")
    finally:
        await pub.disconnect()
        await sub.disconnect()


async def test_long_outgoing_queue_holds_the_intake(mosquitto: Mosquitto) -> None:
    """Past ``max_queued`` the messages received are parked, neither processed nor
    acknowledged, and processed in order once the queue is under half."""
    got: list[bytes] = []
    settings = BrokerSettings(url=mosquitto.url, max_inflight=1, max_queued=10_000)
    client = LeanClient(settings, "hold", on_batch=lambda b: got.extend(p for _, p, _ in b))
    feeder = window_client(mosquitto.url, "feeder", window=1000)
    try:
        await client.connect(timeout=5)
        await client.subscribe(["in/#"])
        await feeder.connect(timeout=5)
        for _ in range(20_000):  # one at a time: seconds of round trips
            client.publish("out/x", b"o")
        assert client.intake_held
        for i in range(50):
            feeder.publish("in/x", str(i).encode())
        assert await feeder.drain(10)
        await eventually(lambda: client.parked_reads > 0, what="reads parked")
        assert client.intake_held and got == []  # received, not processed
        await eventually(lambda: not client.intake_held, timeout=60, what="queue under half")
        assert client.intake_holds == 1 and client.queued <= 5000
        await eventually(lambda: len(got) == 50, timeout=30, what="parked reads processed")
        assert got == [str(i).encode() for i in range(50)]
        assert await client.drain(60)
    finally:
        await feeder.disconnect()
        await client.disconnect()


def test_ack_hold_keeps_one_connection_and_gives_back_in_order() -> None:
    first, second = object(), object()
    hold = AckHold()
    hold.hold(first, b"\x40\x02\x00\x01", 1)
    hold.hold(first, b"\x40\x02\x00\x02\x40\x02\x00\x03", 2)
    taken = hold.take()
    assert (taken.packets, taken.count, taken.connection) == (
        b"\x40\x02\x00\x01\x40\x02\x00\x02\x40\x02\x00\x03",
        3,
        first,
    )
    assert hold.count == 0
    hold.hold(first, b"\x40\x02\x00\x04", 1)
    hold.give_back(taken, first)  # its round failed: ahead of what came since
    again = hold.take()
    assert again.count == 4 and again.packets.startswith(taken.packets)
    hold.give_back(again, second)  # no longer the current connection: dropped
    assert hold.count == 0
    hold.hold(first, b"\x40\x02\x00\x05", 1)
    hold.hold(second, b"\x40\x02\x00\x06", 1)  # a new connection replaces the old one's
    assert hold.take().packets == b"\x40\x02\x00\x06"
    hold.hold(second, b"\x40\x02\x00\x07", 1)
    hold.drop(first)  # not the one held for: kept
    assert hold.count == 1
    hold.drop(second)
    assert hold.count == 0 and hold.take().connection is None


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")
async def test_socket_acknowledges_at_once_after_every_read(mosquitto: Mosquitto) -> None:
    """TCP_NODELAY on our socket, and TCP_QUICKACK (not sticky) set again on every read, so
    a broker with Nagle on does not hold the next readings until our delayed ACK."""
    received: list[Batch] = []
    sub = LeanClient(BrokerSettings(url=mosquitto.url), "quickack-sub", on_batch=received.append)
    pub = window_client(mosquitto.url, "quickack-pub")
    try:
        await sub.connect(timeout=5)
        await sub.subscribe(["q/#"])
        sock = sub.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        proto = sub._proto
        assert proto is not None and proto.quickack is not None
        rearm, calls = proto.quickack, [0]

        def counted() -> None:
            calls[0] += 1
            rearm()

        proto.quickack = counted
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        await pub.connect(timeout=5)
        for i in range(20):
            pub.publish("q/x", str(i).encode())
            await pub.drain(5)
        await eventually(lambda: sum(len(b) for b in received) >= 20, what="all received")
        assert calls[0] >= 1 and calls[0] >= len(received)  # once per read, before the batch
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        rearm()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
    finally:
        await pub.disconnect()
        await sub.disconnect()


def test_no_socket_options_without_a_tcp_socket() -> None:
    _, proto, _, _ = make()  # a transport without a socket
    assert proto.quickack is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        assert _tcp_options(unix) is None

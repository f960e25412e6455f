"""The service's MQTT connection: packet parsing across reads, acks after processing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mqtt_anomaly.bench import wire
from mqtt_anomaly.config import BrokerSettings
from mqtt_anomaly.errors import BrokerError
from mqtt_anomaly.transport.lean import Batch, LeanClient, _Protocol

from .helpers import eventually
from .mosquitto import Mosquitto


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


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
        wire.publish("factory/S1/temperature", b"24.5", qos=1, mid=7)
        + wire.publish("factory/S2/temperature", big, qos=0)
        + wire.publish("factory/S3/temperature", b"{}", qos=2, mid=9)
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
        assert acks == wire.puback(7) + b"\x50\x02\x00\x09"  # PUBACK 7, PUBREC 9


def test_acks_written_once_per_read_after_the_batch() -> None:
    order: list[str] = []
    client, proto, transport, _ = make()
    client._on_batch = lambda b: order.append(f"batch {len(b)}")
    transport.write = lambda data: order.append(f"write {len(data)}")  # type: ignore[method-assign]
    proto.data_received(b"".join(wire.publish("a/S/b", b"1", qos=1, mid=m) for m in range(1, 101)))
    assert order == ["batch 100", "write 400"]


def test_a_failing_batch_does_not_stop_acks() -> None:
    client, proto, transport, _ = make()

    def boom(batch: Batch) -> None:
        raise RuntimeError("bug")

    client._on_batch = boom
    proto.data_received(wire.publish("a/S/b", b"1", qos=1, mid=5))
    assert transport.written == [wire.puback(5)]


async def test_refused_and_unreachable_broker(mosquitto: Mosquitto) -> None:
    with pytest.raises(BrokerError, match="cannot reach"):
        await LeanClient(
            BrokerSettings(url="mqtt://127.0.0.1:1"), "x", on_batch=lambda b: None
        ).connect(timeout=0.5)


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

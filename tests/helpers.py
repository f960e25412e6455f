"""Test helpers: wait on conditions, observe a broker, publish readings, fill a store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec

from mqtt_anomaly.config import BrokerSettings
from mqtt_anomaly.transport.client import MqttClient

if TYPE_CHECKING:
    from mqtt_anomaly.messages import Reading
    from mqtt_anomaly.store import Store


async def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> float:
    """Wait until ``predicate()`` holds; returns the seconds waited; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


class Observer:
    """A plain subscriber that records (topic, payload, retain, time) for assertions."""

    def __init__(self, url: str, filters: Iterable[str], client_id: str = "test-observer") -> None:
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.filters = list(filters)
        self.client = MqttClient(
            BrokerSettings(url=url), client_id, clean_session=True, on_message=self._on
        )

    def _on(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages.append((topic, payload, retain, time.monotonic()))

    async def __aenter__(self) -> Observer:
        await self.client.connect(timeout=10)
        await self.client.subscribe(self.filters, qos=1)
        await asyncio.sleep(0)  # let SUBSCRIBE go out before the test publishes
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.disconnect()

    def on(self, suffix: str) -> list[bytes]:
        return [p for t, p, _, _ in self.messages if t.endswith(suffix)]

    def json(self, suffix: str) -> list[dict[str, object]]:
        return [msgspec.json.decode(p) for p in self.on(suffix)]


def reading_payload(sid: str, value: float, seq: int, ts: float | None = None) -> bytes:
    return msgspec.json.encode(
        {
            "sensor_id": sid,
            "ts": time.time() if ts is None else ts,
            "value": value,
            "unit": "C",
            "seq": seq,
        }
    )


def fill_store(store: Store, readings: Sequence[Reading], chunk: int = 500) -> None:
    """Write ``readings`` to ``store`` in batches of ``chunk`` and wait until they are stored."""
    for k in range(0, len(readings), chunk):
        part = readings[k : k + chunk]
        store.add_readings(
            [r.sensor_id for r in part], [r.ts for r in part], [r.value for r in part],
            [r.seq for r in part],
        )  # fmt: skip
    assert store.flush(10)

"""Server-sent events: every dashboard gets each batch's alerts and health changes live.

:meth:`EventHub.publish` runs once per batch (a service listener). It encodes the batch's
events once and puts one item per batch on each client's bounded queue; readings go only to
clients watching that sensor (``/api/events?sensor=ID``). A client that falls behind by
``sse_queue`` batches is disconnected rather than buffered without bound; the browser's
``EventSource`` reconnects and the dashboard reloads its state. At most ``max_clients``
streams are open at once: a stream takes a slot (:meth:`EventHub.reserve`) before its
response starts and gives it back (:meth:`EventHub.release`) when the response ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..messages import Alert
from ..pipeline import Output
from ..view import PipelineView

_CLOSE = "close"


@dataclass(eq=False)
class Client:
    """One connected event stream."""

    queue: asyncio.Queue[list[str] | str]
    sensor: str | None = None
    dropped: bool = False


def sse(event: str, data: Any) -> str:
    """One event in the ``text/event-stream`` format."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def alert_json(a: Alert) -> dict[str, Any]:
    """An alert event as JSON-ready data."""
    return {
        "sensor_id": a.sensor_id,
        "detector": a.detector,
        "severity": a.severity,
        "state": a.state,
        "value": a.value,
        "score": a.score if a.score == a.score else None,
        "threshold": a.threshold,
        "expected_low": a.expected_low,
        "expected_high": a.expected_high,
        "reading_ts": a.reading_ts,
        "alert_ts": a.alert_ts,
        "message": a.message,
        "suppressed": a.suppressed,
        "asset_id": a.asset_id,
        "contributions": a.contributions,
        "id": a.id,
    }


class EventHub:
    """Fan-out of batch events to the connected dashboards."""

    def __init__(
        self,
        view: PipelineView,
        queue_size: int = 1000,
        heartbeat: float = 15.0,
        max_clients: int = 32,
    ):
        self.view = view
        self.queue_size = queue_size
        self.heartbeat = heartbeat
        self.max_clients = max_clients
        self.slots = 0  # streams admitted and not yet ended (reserve/release)
        self.clients: set[Client] = set()
        self._watched: dict[str, int] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self.clients)

    def reserve(self) -> bool:
        """Take a stream slot; False when all ``max_clients`` are taken."""
        if self.slots >= self.max_clients:
            return False
        self.slots += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by :meth:`reserve` (once per successful reserve)."""
        self.slots = max(0, self.slots - 1)

    def publish(self, out: Output) -> None:
        """Queue one batch's events for every client (called once per batch)."""
        if not self.clients:
            return
        common: list[str] = [sse("alert", alert_json(a)) for a in out.alerts]
        view = self.view
        for sid, state in out.health:  # the pipeline's health, as published on MQTT
            if sid in view:  # not forgotten since
                common.append(sse("health", {"sensor_id": sid, "health": state}))
        if out.new_sensors:
            common.append(sse("sensors", {"added": out.new_sensors}))
        readings: dict[str, list[str]] = {}
        if self._watched:
            for r in out.readings:
                if r.sensor_id in self._watched:
                    data = {"sensor_id": r.sensor_id, "ts": r.ts, "value": r.value, "seq": r.seq}
                    readings.setdefault(r.sensor_id, []).append(sse("reading", data))
        for client in self.clients:
            events = common
            mine = readings.get(client.sensor) if client.sensor is not None else None
            if mine:
                events = common + mine
            if events:
                self._put(client, events)

    def send(self, event: str, data: Any) -> None:
        """Queue one event for every client (e.g. an alert acknowledged)."""
        text = [sse(event, data)]
        for client in self.clients:
            self._put(client, text)

    def _put(self, client: Client, events: list[str]) -> None:
        if client.dropped:
            return
        try:
            client.queue.put_nowait(events)
        except asyncio.QueueFull:
            client.dropped = True

    async def stream(self, sensor: str | None = None) -> AsyncIterator[str]:
        """The event stream of one client, until it disconnects or the hub closes."""
        client = Client(asyncio.Queue(self.queue_size), sensor)
        self.clients.add(client)
        if sensor is not None:
            self._watched[sensor] = self._watched.get(sensor, 0) + 1
        try:
            yield "retry: 2000\n\n" + sse("hello", {"sensor": sensor})
            while not self._closed and not client.dropped:
                try:
                    item = await asyncio.wait_for(client.queue.get(), self.heartbeat)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item == _CLOSE:
                    break
                yield "".join(item)
            if client.dropped:
                yield sse("overflow", {"reason": "client too slow; reload"})
        finally:
            self.clients.discard(client)
            if sensor is not None:
                left = self._watched.get(sensor, 1) - 1
                if left:
                    self._watched[sensor] = left
                else:
                    self._watched.pop(sensor, None)

    def close(self) -> None:
        """End every stream (server shutdown)."""
        self._closed = True
        for client in self.clients:
            try:
                client.queue.put_nowait(_CLOSE)
            except asyncio.QueueFull:
                client.dropped = True

"""The history store as a sink: readings and every alert to a :class:`~mqtt_anomaly.store.Store`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..store.queued import QueuedStore
from .base import BaseSink

if TYPE_CHECKING:
    from ..pipeline import Output
    from ..store.base import Store


class StoreSink(BaseSink):
    """Readings (column by column) and every alert (the flood filter does not apply) to
    ``store``. Durable when the store has a writer that confirms commits (a
    :class:`~mqtt_anomaly.store.queued.QueuedStore`: SQLite, PostgreSQL); ``none://`` keeps
    nothing and has nothing to wait for. The store's owner opens and closes it; this sink
    flushes it at shutdown."""

    name = "store"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.durable = store if isinstance(store, QueuedStore) else None

    def write(self, out: Output) -> None:
        store = self.store
        rs = out.readings
        if rs:
            store.add_readings(
                [r.sensor_id for r in rs],
                [r.ts for r in rs],
                [r.value for r in rs],
                [r.seq for r in rs],
            )
        if out.alerts:
            add = store.add_alert
            for alert in out.alerts:
                add(alert)

    async def close(self, timeout: float) -> None:
        await asyncio.to_thread(self.store.flush, timeout)

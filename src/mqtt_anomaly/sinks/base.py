"""The one contract every output of the detector service implements: :class:`Sink`.

The service hands every processed batch (a :class:`~mqtt_anomaly.pipeline.Output`) to its sinks
in a fixed order with :meth:`Sink.write`, which never blocks the event loop: a sink that must
do I/O queues it (the history store's writer thread, librdkafka, the MQTT connection's
outgoing queue). About once a second the service calls :meth:`Sink.tick` (periodic work: the
flood filter's checks, a console summary). :meth:`Sink.start` runs before the first batch,
:meth:`Sink.close` at shutdown, once the MQTT connection is closed (the store flushes there).

A sink the broker must not forget readings before (the history store, Kafka) says so
explicitly with :attr:`Sink.durable`: the :class:`~mqtt_anomaly.delivery.DurableSink` whose
tickets delivery rounds wait for, or None.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from ..delivery import DurableSink

if TYPE_CHECKING:
    from ..pipeline import Output

__all__ = ["BaseSink", "DurableSink", "Sink"]


class Sink(Protocol):
    """Where the service's output goes (see the module docstring)."""

    @property
    def name(self) -> str:
        """Names the sink in logs (``store``, ``kafka``, ``mqtt``, ``console``, ...)."""
        ...

    @property
    def durable(self) -> DurableSink | None:
        """What delivery rounds wait for before readings are acknowledged; None: nothing."""
        ...

    def write(self, out: Output) -> None:
        """Take one batch's output. Never blocks; never raises for a slow destination."""
        ...

    def tick(self, now: float) -> None:
        """Periodic work, about once a second (``now``: the service's clock)."""
        ...

    async def start(self) -> None:
        """Before the first batch."""
        ...

    async def close(self, timeout: float) -> None:
        """At shutdown: make what was written durable, waiting at most ``timeout``."""
        ...


class BaseSink:
    """Defaults for a :class:`Sink`: not durable, nothing periodic, nothing to start or close;
    an async context manager (``close(10.0)`` on exit)."""

    name = "sink"
    durable: DurableSink | None = None

    def tick(self, now: float) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self, timeout: float) -> None:
        return None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(10.0)

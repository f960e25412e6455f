"""The one contract every output of the detector service implements: :class:`Sink`.

The service hands every processed batch (a :class:`~mqtt_anomaly.pipeline.Output`) to its sinks
in a fixed order with :meth:`Sink.write`, which never blocks the event loop: a sink that must
do I/O queues it (the history store's writer thread, librdkafka, the MQTT connection's
outgoing queue). About once a second the service calls :meth:`Sink.tick` (periodic work: the
flood filter's checks, a console summary). :meth:`Sink.start` runs before the first batch,
:meth:`Sink.close` at shutdown, once the MQTT connection is closed (the store flushes there).

A sink the broker must not forget readings before (the history store, Kafka) says so
explicitly with :attr:`Sink.durable`: the :class:`DurableSink` whose
tickets delivery rounds wait for, or None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .._lifecycle import AsyncClosing

if TYPE_CHECKING:
    from ..pipeline import Output

__all__ = ["BaseSink", "DurableSink", "Sink"]


@runtime_checkable
class DurableSink(Protocol):
    """Something that must hold a reading before the broker may forget it.

    A sink declares it explicitly (:attr:`mqtt_anomaly.sinks.base.Sink.durable`); the service
    does not look for it (``runtime_checkable`` serves tests that check a class has it all)."""

    @property
    def name(self) -> str:
        """Names the sink in logs and metrics (``store``, ``kafka``)."""
        ...

    def mark(self) -> int:
        """A ticket covering everything given to the sink so far; asks for it to be made
        durable soon (without waiting for a batch to fill). Never blocks."""
        ...

    def wait_confirmed(self, ticket: int, timeout: float) -> bool:
        """Block until everything up to ``ticket`` is durable; False when ``timeout`` runs out.
        Called from a worker thread."""
        ...

    @property
    def backlog(self) -> int:
        """Items given to the sink and not yet durable."""
        ...

    @property
    def backlog_limit(self) -> int:
        """Above this backlog the service stops reading from the broker until it falls."""
        ...


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


class BaseSink(AsyncClosing):
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

    async def _exit(self, clean: bool) -> None:
        await self.close(10.0)

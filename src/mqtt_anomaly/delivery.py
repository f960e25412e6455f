"""Delivery tracking: a reading is acknowledged to the broker only once it is durable.

A *durable sink* (the history store, the Kafka bridge) takes what the service gives it without
blocking and makes it durable in the background. The service asks each sink for a ticket
covering everything given so far (:meth:`DurableSink.mark`), waits in a worker thread until the
sink confirms it (:meth:`DurableSink.wait_confirmed`), and only then writes the PUBACKs of the
readings behind that ticket.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class DurableSink(Protocol):
    """Something that must hold a reading before the broker may forget it."""

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

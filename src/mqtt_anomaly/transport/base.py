"""What the detector service needs from its MQTT connection: the :class:`Transport` protocol.

The service takes its connection as a parameter (``DetectorService(..., transport=...)``), a
factory with :class:`~.lean.LeanClient`'s signature: the production connection is
:class:`~.lean.LeanClient`; :class:`~.memory.MemoryTransport` is a real in-process one for
tests of the service's logic that a broker adds nothing to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..config import BrokerSettings
from .client import ClientStats
from .lean import Batch, HeldAcks

__all__ = ["Batch", "HeldAcks", "Transport", "TransportFactory"]


class Transport(Protocol):
    """One MQTT connection of the service: batch intake, held PUBACKs, tracked QoS 1 out."""

    stats: ClientStats

    # ---- connection -----------------------------------------------------------------------
    @property
    def connected(self) -> bool: ...

    async def connect(self, *, timeout: float | None = None, retry: bool = True) -> None:
        """Connect; retry while the broker is unreachable (until ``timeout``)."""
        ...

    async def subscribe(self, filters: Sequence[str], qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait until the broker accepted every filter."""
        ...

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every QoS 1 message published so far is acknowledged."""
        ...

    async def disconnect(self) -> None:
        """Say goodbye and close; no reconnect after this."""
        ...

    # ---- outgoing -------------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: bytes = b"",
    ) -> None:
        """Send now or queue in order; never blocks, never raises for a full window.
        ``properties``: MQTT 5 properties (ignored by a 3.1.1 connection)."""
        ...

    def outgoing_mark(self) -> int:
        """A ticket covering every QoS 1 message published so far."""
        ...

    def acknowledged_mark(self) -> int:
        """Every QoS 1 message up to this serial is acknowledged by the broker (or dropped)."""
        ...

    async def wait_outgoing(self, ticket: int) -> None:
        """Until the broker acknowledged every QoS 1 message up to ``ticket`` (or paused)."""
        ...

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker (queued or in flight)."""
        ...

    @property
    def queued(self) -> int:
        """Publishes waiting for the in-flight window or for the connection."""
        ...

    # ---- incoming: held acknowledgements and back-pressure --------------------------------
    @property
    def held_acks(self) -> int: ...

    def take_acks(self) -> HeldAcks: ...

    def return_acks(self, held: HeldAcks) -> None: ...

    def send_acks(self, held: HeldAcks) -> bool: ...

    def stop_intake(self) -> None:
        """Ignore incoming messages from now on without acknowledging them (shutdown)."""
        ...

    @property
    def paused(self) -> bool: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class TransportFactory(Protocol):
    """Builds the service's connection (:class:`~.lean.LeanClient` is one)."""

    def __call__(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        on_batch: Callable[[Batch], None],
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        name: str = "",
        clock: Callable[[], float] = ...,
        hold_acks: bool = False,
    ) -> Transport: ...

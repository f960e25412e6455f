"""What a connection published at QoS 1 and the broker has acknowledged: :class:`OutgoingTracker`.

Every QoS 1 publish gets the next serial number (issue order); a *ticket* is a serial, and
waiting on it returns once the broker acknowledged every publish up to it. Acknowledgements
come in any order (a reconnect re-sends, a full buffer drops the oldest): the tracker keeps the
highest serial below which everything is done and the done ones above it. Both connections
of the service use it (:class:`~.lean.LeanClient`, :class:`~.memory.MemoryTransport`).
"""

from __future__ import annotations

import asyncio


class OutgoingTracker:
    """Serial numbers of QoS 1 publishes and the waiters for their acknowledgements.

    ``serial`` is public so that a connection's publish can issue the next one inline (it is
    the service's hot path): ``t.serial = serial = t.serial + 1``.
    """

    __slots__ = ("_done", "_waiters", "low", "serial")

    def __init__(self) -> None:
        self.serial = 0
        """QoS 1 publishes issued: the last serial given, a ticket covering all of them."""
        self.low = 0
        """Every publish up to this serial is acknowledged (or dropped)."""
        self._done: set[int] = set()  # acknowledged above ``low``
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def completed(self, serial: int) -> None:
        """The publish ``serial`` is acknowledged (or dropped); 0 (QoS 0) is ignored."""
        if not serial:
            return
        if serial != self.low + 1:
            self._done.add(serial)
            return
        low = serial
        done = self._done
        while low + 1 in done:
            low += 1
            done.discard(low)
        self.low = low
        if self._waiters:
            self._wake(low)

    def release_all(self) -> None:
        """Let every current waiter return (nothing can be acknowledged meanwhile)."""
        self._wake(None)

    def _wake(self, low: int | None) -> None:
        keep = []
        for ticket, fut in self._waiters:
            if low is not None and ticket > low:
                keep.append((ticket, fut))
            elif not fut.done():
                fut.set_result(None)
        self._waiters = keep

    async def wait(self, ticket: int) -> None:
        """Wait until every publish up to ``ticket`` is acknowledged (or released)."""
        if self.low >= ticket:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (ticket, fut)
        self._waiters.append(waiter)
        try:
            await fut
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

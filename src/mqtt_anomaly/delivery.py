"""Delivery tracking: a reading is acknowledged to the broker only once it is durable.

A *durable sink* (the history store, the Kafka bridge) takes what the service gives it without
blocking and makes it durable in the background. The service asks each sink for a ticket
covering everything given so far (:meth:`DurableSink.mark`), waits in a worker thread until the
sink confirms it (:meth:`DurableSink.wait_confirmed`), and only then writes the PUBACKs of the
readings behind that ticket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .console import RateLimitedLog
from .retry import Backoff
from .sinks.base import DurableSink

if TYPE_CHECKING:
    from .transport.base import Transport
    from .transport.lean import HeldAcks

log = logging.getLogger(__name__)

SAVE_RETRY: Final = Backoff.fixed(0.5)
"""The pause before a round is tried again after the state could not be saved (a full disk)."""


class DeliveryTracker:
    """Acknowledge readings in rounds, each once what they produced is safe.

    One round at a time: take the acknowledgements held by the MQTT connection, a ticket from
    every durable sink and from the connection's own QoS 1 publishes (alerts, health), and a
    copy of the detector state — all at one point between two batches, so they describe the
    same readings. Then wait (the sinks in a worker thread) until every ticket is confirmed,
    save the state, and only then write the acknowledgements. A crash at any point leaves the
    unacknowledged readings at the broker, which sends them again; the saved state is the one
    that had seen exactly the acknowledged readings, so processing them again gives the same
    alerts, and the sinks' idempotent writes store them once.

    While a round waits, the next batches are processed and their acknowledgements held for the
    next round, so rounds group many readings (group commit). When a sink's backlog passes its
    limit, reading from the broker pauses until the backlog is back under half of it.
    """

    def __init__(
        self,
        client: Transport,
        sinks: Sequence[DurableSink],
        snapshot: Callable[[], dict[str, Any]],
        save: Callable[[dict[str, Any]], None],
        *,
        min_interval: float = 0.1,
        idle: float = 0.002,
        warn_after: float = 5.0,
        retry: Backoff = SAVE_RETRY,
        kept: str = "unacknowledged at the broker",
    ) -> None:
        self.client = client
        self.sinks = list(sinks)
        self._snapshot = snapshot
        self._save = save
        self._min_interval = min_interval
        self._idle = idle
        self._last_touch = 0.0
        self._last_round_end = time.monotonic()
        self._warn_after = warn_after
        self._retry = retry
        self._kept = kept  # where readings not covered by a saved round wait, for the logs
        self._wake = asyncio.Event()
        self._rl = RateLimitedLog(log, period=10.0)
        self.stats = DeliveryStats()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self, timeout: float = 10.0) -> bool:
        """Finish the current round, then run a last one for what is left (at shutdown).

        False when the sinks did not confirm within ``timeout``: those readings stay
        unacknowledged (the broker sends them again at the next start), and the state saved by
        the last complete round is the one to restore.
        """
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._finish(), timeout)
        except TimeoutError:
            log.warning(
                "not every sink confirmed within %.0f s at shutdown: the readings of the last "
                "%.1f s stay %s and are processed again at the next start",
                timeout,
                time.monotonic() - self._last_round_end,
                self._kept,
            )
            return False
        return True

    async def _finish(self) -> None:
        if self._task is not None:
            await self._task
        if not await self.round():
            raise TimeoutError  # the state could not be saved: as good as unconfirmed

    # ---- called by the service on the event loop ---------------------------------------
    def touch(self) -> None:
        """Something was processed: a round is due; pause intake when a sink is too far
        behind."""
        self._wake.set()
        self._last_touch = time.monotonic()
        if not self.client.paused:
            for sink in self.sinks:
                if sink.backlog > sink.backlog_limit:
                    self.client.pause_reading()
                    self.stats.pauses += 1
                    self._rl.warning(
                        "paused",
                        "%s is behind (%d waiting): reading from the broker paused",
                        sink.name,
                        sink.backlog,
                    )
                    break

    async def _run(self) -> None:
        pauses = self._retry.delays()
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            if await self.round():
                pauses.reset()
                await self._gather()
            else:  # e.g. a full disk: try again in a while, not at once
                await asyncio.sleep(next(pauses))

    async def _gather(self) -> None:
        """Let the next round gather readings for ``min_interval`` (at least ten times the
        last state save, so saving takes at most a tenth of the time), but start it as soon
        as the intake has been quiet for ``idle``: then the broker is not sending (nothing to
        send, or its in-flight window is full of readings that wait for this round)."""
        deadline = time.monotonic() + max(self._min_interval, 10 * self.stats.last_save)
        while not self._stopping:
            now = time.monotonic()
            if now >= deadline or now - self._last_touch >= self._idle:
                return
            await asyncio.sleep(min(self._idle, deadline - now))

    async def round(self) -> bool:
        """One round (see the class docstring); False when the state could not be saved."""
        client = self.client
        token = client.take_acks()
        try:
            await self._round(token)
        except OSError as exc:  # the next round tries again, with these acknowledgements
            client.return_acks(token)
            self.stats.failed_rounds += 1
            self._rl.warning(
                "failed",
                "could not save the detector state (%s); readings stay %s",
                exc,
                self._kept,
            )
            self._wake.set()
            return False
        return True

    async def _round(self, token: HeldAcks) -> None:
        client = self.client
        tickets = [(sink, sink.mark()) for sink in self.sinks]
        outgoing = client.outgoing_mark()
        state = self._snapshot()
        started = time.monotonic()
        await asyncio.gather(
            client.wait_outgoing(outgoing), self._wait_sinks(tickets, started, token.count)
        )
        saving = time.monotonic()
        await asyncio.to_thread(self._save, state)
        self._last_round_end = time.monotonic()
        self.stats.last_save = self._last_round_end - saving
        if client.send_acks(token):
            self.stats.acked += token.count
        self.stats.rounds += 1
        self.stats.last_round = self._last_round_end - started
        if client.paused and all(s.backlog <= s.backlog_limit // 2 for s in self.sinks):
            client.resume_reading()
            log.info("sinks caught up: reading from the broker resumed")

    async def _wait_sinks(
        self, tickets: list[tuple[DurableSink, int]], started: float, readings: int
    ) -> None:
        def confirmed(timeout: float) -> DurableSink | None:
            for sink, ticket in tickets:
                if not sink.wait_confirmed(ticket, timeout):
                    return sink
            return None

        while (late := await asyncio.to_thread(confirmed, self._warn_after)) is not None:
            self.stats.slow_rounds += 1
            self._rl.warning(
                "slow",
                "%s has not confirmed for %.0f s; the readings since the last saved round "
                "(%d held) stay %s",
                late.name,
                time.monotonic() - started,
                readings + self.client.held_acks,
                self._kept,
            )


@dataclass(slots=True)
class DeliveryStats:
    """Counters of the rounds (for metrics)."""

    rounds: int = 0
    acked: int = 0
    slow_rounds: int = 0
    failed_rounds: int = 0
    pauses: int = 0
    last_round: float = 0.0
    last_save: float = 0.0

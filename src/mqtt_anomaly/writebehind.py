"""Write-behind: a bounded in-memory queue, drained in batches by one writer thread.

:class:`WriteBehind` is what a durable sink puts between the event loop and a slow or
unreliable destination (the SQL history stores use it through
:class:`~mqtt_anomaly.store.queued.QueuedStore`); :class:`Confirmations` is the ticket mark
every durable sink shares, including the Kafka sink, whose confirmations come from
librdkafka's delivery reports rather than from a writer thread.

Two lanes
    *Bulk* items (batches of readings) have a weight (their rows); at most ``max_bulk`` rows
    wait, counting those held for a retry, and an item that does not fit is dropped whole.
    *Priority* items (alerts) have their own, larger bound ``max_priority``, so when the
    destination is slow bulk items go first and priority ones only after their own bound.
    :meth:`~WriteBehind.offer_bulk` and :meth:`~WriteBehind.offer` never block; they return
    False for what they dropped, which is counted. After :meth:`~WriteBehind.close` starts,
    everything offered is dropped.

Tickets
    Every accepted item takes a ticket (a running count). :meth:`~WriteBehind.mark` returns
    the latest and asks the writer to write it without waiting for a batch to fill;
    :meth:`~WriteBehind.wait_confirmed` blocks until every ticket up to one is written;
    :meth:`~WriteBehind.flush` until every ticket issued before the call is written by a
    *sync* write (the destination's most durable kind). ``backlog`` counts what is offered
    and not yet written; ``backlog_limit`` is half the bulk bound, so a producer that stops
    at that mark never reaches the drop policy.

The writer thread
    It takes everything queued when ``batch_size`` bulk rows wait, ``flush_interval`` seconds
    after the first item, on a mark, a flush or close, and hands it to ``write(pending,
    sync)``. The callback returns when everything is written, or raises to have it retried:
    whatever it left in ``pending`` (it may remove what it wrote or refused) is held, new
    items join it, and the next attempt comes after a pause of the retry :class:`Backoff`
    (reset by a success); ``on_error`` sees each exception. Between writes the thread runs
    ``idle()`` (e.g. retention), which returns the pause before its next run.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .retry import Backoff

R = TypeVar("R")
A = TypeVar("A")

_POLL: float = 1.0  # a waiter looks at the writer (alive?) at least this often


class Confirmations:
    """A mark that only goes up: "every ticket up to ``value`` is confirmed".

    Whoever confirms calls :meth:`confirm` (any thread); :meth:`wait` blocks until a ticket
    is covered. Cheap to read without a lock (``value`` is one int).
    """

    __slots__ = ("_cond", "value")

    def __init__(self) -> None:
        self.value = 0
        self._cond = threading.Condition(threading.Lock())

    def confirm(self, upto: int) -> None:
        """Every ticket up to ``upto`` is confirmed (a lower one than the mark is ignored)."""
        with self._cond:
            if upto > self.value:
                self.value = upto
                self._cond.notify_all()

    def wake(self) -> None:
        """Let every waiter look again (the confirming thread stopped)."""
        with self._cond:
            self._cond.notify_all()

    def wait(self, ticket: int, timeout: float, alive: Callable[[], bool]) -> bool:
        """Block until ``ticket`` is covered; False when ``timeout`` runs out first or
        ``alive()`` says nothing will confirm it any more."""
        if self.value >= ticket:
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.value < ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not alive():
                    return False
                self._cond.wait(min(remaining, _POLL))
        return True


@dataclass(slots=True)
class Pending(Generic[R, A]):
    """What the writer hands to ``write``: bulk items, priority items, their last ticket."""

    bulk: list[R] = field(default_factory=list)
    priority: list[A] = field(default_factory=list)
    ticket: int = 0


@dataclass(slots=True)
class _Take(Generic[R, A]):
    pending: Pending[R, A]
    sync: bool
    stop: bool


class WriteBehind(Generic[R, A]):
    """A bounded two-lane queue and its writer thread (see the module docstring).

    ``weigh`` gives a bulk item's rows (to recount what is held after a partial write).
    Call :meth:`start` once the callbacks can run.
    """

    def __init__(
        self,
        *,
        name: str,
        write: Callable[[Pending[R, A], bool], None],
        weigh: Callable[[R], int],
        max_bulk: int,
        max_priority: int,
        batch_size: int,
        flush_interval: float,
        retry: Backoff,
        on_error: Callable[[Exception], None] | None = None,
        idle: Callable[[], float] | None = None,
        idle_first: float = 1.0,
        on_stop: Callable[[Pending[R, A]], None] | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self._weigh = weigh
        self.max_bulk = max_bulk
        self.max_priority = max_priority
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._retry = retry
        self._on_error = on_error
        self._idle = idle
        self._idle_first = idle_first
        self._on_stop = on_stop

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits for work on this
        self._bulk: list[R] = []
        self._priority: list[A] = []
        self._bulk_rows = 0  # rows of the queued bulk items
        self._held_rows = 0  # rows of the bulk items the writer holds (being written, retried)
        self._held_priority = 0
        self._first_at = 0.0
        self._issued = 0  # tickets: one per accepted item
        self._commit_target = 0
        self._flush_target = 0
        self.committed = Confirmations()  # every ticket up to this one is written
        self.synced = Confirmations()  # ... by a sync write
        self._closing = False
        self._closed = False
        self.dropped_bulk = 0  # rows
        self.dropped_priority = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, thread_name: str | None = None) -> None:
        """Start the writer thread (named ``thread_name``, by default the queue's name)."""
        if thread_name is not None:
            self._thread.name = thread_name
        self._thread.start()

    # ---- the producer's side -------------------------------------------------------------
    def offer_bulk(self, item: R, rows: int) -> bool:
        """Queue a bulk item of ``rows`` rows; False (and counted) when it does not fit."""
        with self._lock:
            if self._closing or self._bulk_rows + self._held_rows + rows > self.max_bulk:
                self.dropped_bulk += rows
                return False
            self._issue_locked()
            self._bulk.append(item)
            before = self._bulk_rows
            self._bulk_rows = before + rows
            if before < self._batch_size <= before + rows:
                self._wake.notify()
            return True

    def offer(self, item: A) -> bool:
        """Queue a priority item; False (and counted) when its lane is full or closed."""
        with self._lock:
            if not self._closing and len(self._priority) + self._held_priority < self.max_priority:
                self._issue_locked()
                self._priority.append(item)
                return True
            self.dropped_priority += 1
            return False

    def _issue_locked(self) -> None:
        if not (self._bulk or self._priority):
            self._first_at = time.monotonic()
            self._wake.notify()
        self._issued += 1

    def mark(self) -> int:
        """The ticket of everything accepted so far; the writer writes it soon."""
        with self._lock:
            target = self._issued
            if target > self.committed.value and target > self._commit_target:
                self._commit_target = target
                self._wake.notify()
            return target

    def wait_confirmed(self, ticket: int, timeout: float) -> bool:
        """Block until every ticket up to ``ticket`` is written; False on timeout."""
        return self.committed.wait(ticket, timeout, self._thread.is_alive)

    @property
    def backlog(self) -> int:
        """Bulk rows and priority items accepted and not yet written."""
        return self._bulk_rows + len(self._priority) + self._held_rows + self._held_priority

    @property
    def backlog_bulk(self) -> int:
        """Bulk rows accepted and not yet written."""
        return self._bulk_rows + self._held_rows

    @property
    def backlog_limit(self) -> int:
        return self.max_bulk // 2

    def snapshot(self) -> tuple[int, int, int]:
        """``(backlog, dropped_bulk, dropped_priority)`` read together."""
        with self._lock:
            return self.backlog, self.dropped_bulk, self.dropped_priority

    def count_dropped(self, rows: int, priority: int) -> None:
        """Count items ``write`` refused for good (the data itself is at fault)."""
        with self._lock:
            self.dropped_bulk += rows
            self.dropped_priority += priority

    def flush(self, timeout: float) -> bool:
        """Block until everything accepted so far is written by a sync write; False when
        ``timeout`` runs out first."""
        with self._lock:
            target = self._issued
            if self.synced.value >= target:
                return True
            self._flush_target = max(self._flush_target, target)
            self._wake.notify()
        return self.synced.wait(target, timeout, self._thread.is_alive)

    def close(self, timeout: float = 10.0) -> bool:
        """Flush (waiting at most ``timeout``), then stop the writer; False when not
        everything was written. Idempotent; afterwards every offer is dropped."""
        if self._closed:
            return True
        ok = self.flush(timeout) if self._thread.is_alive() else self.synced.value >= self._issued
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._closed = True
        return ok

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        held: Pending[R, A] = Pending()
        delays = self._retry.delays()
        retry_at: float | None = None
        idle_at = time.monotonic() + self._idle_first if self._idle is not None else math.inf
        while True:
            take = self._next(retry_at, idle_at)
            if take is None:
                assert self._idle is not None
                idle_at = time.monotonic() + self._idle()
                continue
            work = take.pending
            held.bulk += work.bulk
            held.priority += work.priority
            held.ticket = work.ticket
            busy = bool(held.bulk or held.priority or take.sync)
            if not busy or self._attempt(held, take.sync):
                retry_at = None
                delays.reset()
                self.committed.confirm(work.ticket)
                if take.sync:
                    self.synced.confirm(work.ticket)
            else:
                retry_at = time.monotonic() + next(delays)
            if take.stop:
                break
        try:
            if self._on_stop is not None:
                self._on_stop(held)
        finally:
            self.committed.wake()
            self.synced.wake()

    def _next(self, retry_at: float | None, idle_at: float) -> _Take[R, A] | None:
        """Wait for something to do: a write, a retry, or the idle work (None)."""
        with self._lock:
            while True:
                now = time.monotonic()
                flush = self._flush_target > self.synced.value
                queued = bool(self._bulk or self._priority)
                commit = self._commit_target > self.committed.value
                if retry_at is not None:  # a failed write is held: only the pause decides
                    if self._closing or now >= retry_at:
                        return self._take_locked(flush)
                    deadline = retry_at
                elif (
                    self._closing
                    or flush
                    or commit
                    or self._bulk_rows >= self._batch_size
                    or (queued and now >= self._first_at + self._flush_interval)
                ):
                    return self._take_locked(flush)
                elif now >= idle_at:
                    return None
                else:
                    deadline = idle_at
                    if queued:
                        deadline = min(deadline, self._first_at + self._flush_interval)
                self._wake.wait(None if math.isinf(deadline) else deadline - now)

    def _take_locked(self, flush: bool) -> _Take[R, A]:
        pending = Pending(self._bulk, self._priority, self._issued)
        take = _Take(
            pending,
            sync=flush or (self._closing and self.synced.value < self._issued),
            stop=self._closing,
        )
        self._held_rows += self._bulk_rows
        self._held_priority += len(self._priority)
        self._bulk, self._priority, self._bulk_rows = [], [], 0
        return take

    def _attempt(self, held: Pending[R, A], sync: bool) -> bool:
        """One write of everything held; True when nothing is left to retry."""
        try:
            self._write(held, sync)
        except Exception as exc:  # the destination cannot be written now: retry later
            rows = sum(self._weigh(b) for b in held.bulk)
            with self._lock:
                self._held_rows, self._held_priority = rows, len(held.priority)
            if self._on_error is not None:
                self._on_error(exc)
            return False
        held.bulk, held.priority = [], []
        with self._lock:
            self._held_rows = self._held_priority = 0
        return True

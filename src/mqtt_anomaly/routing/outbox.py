"""Per receiver, a bounded queue on disk and one thread that delivers it: :class:`Courier`.

The event loop hands a notice over with :meth:`Courier.submit` (an append to a deque: never
blocks, never raises). The courier's thread moves what was submitted into its **outbox**, an
SQLite file under the state dir (``<state_dir>/outbox/<receiver>.sqlite``, one row per
notice, plain JSON: data, never code), then sends the oldest row; it is deleted once the
receiver accepted it. A receiver that fails is retried with the receiver's
:class:`~mqtt_anomaly.retry.Backoff`, the queue holding everything meanwhile, across restarts
too; so a receiver that is down never stalls detection and loses nothing up to ``max_queue``
notices: beyond that the oldest are dropped, and counted (``dropped``). A notice the receiver
refuses for good (an HTTP 4xx other than 408 and 429) is dropped and counted too, instead of
blocking the ones behind it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

from ..retry import Backoff

log = logging.getLogger(__name__)
__all__ = ["Courier", "DeliveryError", "Outbox", "Sender"]


class DeliveryError(Exception):
    """A receiver did not take a notice; ``permanent``: it never will (do not retry)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Sender(Protocol):
    """Sends one stored notice (its JSON bytes) or raises :class:`DeliveryError`."""

    def send(self, body: bytes) -> None: ...


class Outbox:
    """A bounded FIFO of byte strings in one SQLite file (used by one thread at a time)."""

    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self.limit = limit
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (n INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB)"
        )
        with contextlib.suppress(OSError):
            path.chmod(0o600)
        self.depth = self._count()

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def put(self, bodies: list[bytes]) -> int:
        """Append ``bodies``; drop the oldest beyond the limit; returns how many were dropped."""
        over = self.depth + len(bodies) - self.limit
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT INTO outbox (body) VALUES (?)", [(b,) for b in bodies])
            if over > 0:
                self._db.execute(
                    "DELETE FROM outbox WHERE n IN (SELECT n FROM outbox ORDER BY n LIMIT ?)",
                    (over,),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.depth = self._count()
        return max(over, 0)

    def head(self) -> tuple[int, bytes] | None:
        row = self._db.execute("SELECT n, body FROM outbox ORDER BY n LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def remove(self, n: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE n = ?", (n,))
        self.depth = self._count()

    def close(self) -> None:
        self._db.close()


class Courier:
    """Delivers one receiver's notices from its outbox (see the module docstring)."""

    def __init__(self, name: str, sender: Sender, outbox: Outbox, backoff: Backoff) -> None:
        self.name = name
        self.sender = sender
        self.outbox = outbox
        self.backoff = backoff
        self.sent = 0
        self.failed = 0  # attempts that failed (each retry counts)
        self.dropped = 0  # notices lost: the outbox was full, or the receiver refused them
        self._inbox: collections.deque[bytes] = collections.deque()
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"receiver-{name}", daemon=True)

    @property
    def queued(self) -> int:
        """Notices submitted and not yet delivered (or dropped)."""
        return len(self._inbox) + self.outbox.depth

    def start(self) -> None:
        self._thread.start()

    def submit(self, body: bytes) -> None:
        """From the event loop: queue ``body`` for delivery. Never blocks."""
        self._inbox.append(body)
        with self._wake:
            self._wake.notify()

    def _take_inbox(self) -> None:
        bodies = []
        while self._inbox:
            bodies.append(self._inbox.popleft())
        if not bodies:
            return
        try:
            dropped = self.outbox.put(bodies)
        except sqlite3.Error:
            self._inbox.extendleft(reversed(bodies))  # kept in memory, in order
            raise
        if dropped:
            self.dropped += dropped
            log.warning("receiver %s: outbox full, %d oldest dropped", self.name, dropped)

    def _run(self) -> None:
        delays = self.backoff.delays()
        while True:
            try:
                self._take_inbox()
            except sqlite3.Error as exc:  # the disk: the notices stay in memory; retry
                log.error("receiver %s: outbox %s: %s", self.name, self.outbox.path, exc)
                self._wait_retry(next(delays))
                continue
            if self._stop:
                return
            item = self.outbox.head()
            if item is None:
                with self._wake:
                    while not self._stop and not self._inbox:
                        self._wake.wait()
                continue
            n, body = item
            try:
                self.sender.send(body)
            except DeliveryError as exc:
                self.failed += 1
                if exc.permanent:
                    self.dropped += 1
                    self.outbox.remove(n)
                    log.error("receiver %s refused a notice, dropped: %s", self.name, exc)
                    continue
                pause = next(delays)
                log.warning("receiver %s: %s; retrying in %.1f s", self.name, exc, pause)
                self._wait_retry(pause)
                continue
            except Exception:  # a bug in a sender must not kill the thread
                self.failed += 1
                log.exception("receiver %s: sending failed", self.name)
                self._wait_retry(next(delays))
                continue
            self.sent += 1
            self.outbox.remove(n)
            delays.reset()

    def _wait_retry(self, seconds: float) -> None:
        """Pause before a retry; what is submitted meanwhile still goes to the outbox."""
        deadline = time.monotonic() + seconds
        stuck = False  # the outbox refused the inbox: wait out the pause
        while True:
            with self._wake:
                left = deadline - time.monotonic()
                if self._stop or left <= 0:
                    return
                if stuck or not self._inbox:
                    self._wake.wait(left)
            if self._inbox and not stuck:
                try:
                    self._take_inbox()
                except sqlite3.Error:
                    stuck = True

    def close(self, timeout: float) -> None:
        """Stop: what was submitted is written to the outbox (delivered on the next start)."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            with contextlib.suppress(sqlite3.Error):
                self._take_inbox()
            self.outbox.close()

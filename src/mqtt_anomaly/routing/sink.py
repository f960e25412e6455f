"""The routing sink: every batch's alert events into the :class:`~.router.Router`, its notices
to the receivers' couriers (:mod:`.outbox`).

It sits in the service's sink chain after MQTT. :meth:`RoutingSink.write` only feeds the
router (no I/O) and wakes the sink's timer task, which sends the notices when they fall due
(``group_wait``, ``group_interval``, ``repeat_interval``, ``escalate_after``: to the
millisecond, not on the service's one-second tick). Open incidents are saved in
``<state_dir>/routing-state.mqas`` (:mod:`~mqtt_anomaly.statefile`: data only) when they
change, at most every ``save_every`` seconds (written in a worker thread), and at close; a
restart takes them back, so an alert raised before it is resolved after it, in the same
incident.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import StateFileError
from ..retry import Backoff
from ..routeconf import ReceiverSettings, Route
from ..sinks.base import BaseSink
from ..statefile import dump, load, move_aside
from .outbox import Courier, Outbox
from .receivers import make_sender
from .router import Notice, Router

if TYPE_CHECKING:
    from ..pipeline import Output

log = logging.getLogger(__name__)
STATE_FILE = "routing-state.mqas"
__all__ = ["RoutingSink"]


class RoutingSink(BaseSink):
    """Routes alerts to receivers (see the module docstring)."""

    name = "routing"

    def __init__(
        self,
        routes: Sequence[Route],
        receivers: Mapping[str, ReceiverSettings],
        state_dir: Path,
        *,
        tags_of: Callable[[str], Mapping[str, str] | None] = lambda _sid: None,
        group_of: Callable[[str], str] = lambda _sid: "",
        clock: Callable[[], float] = time.time,
        save_every: float = 5.0,
    ) -> None:
        self.router = Router(routes, tags_of=tags_of, group_of=group_of)
        self.receivers = dict(receivers)
        self.state_dir = state_dir
        self.clock = clock
        self.save_every = save_every
        self.couriers: dict[str, Courier] = {}
        self.notices = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dirty = False
        self._saved_at = 0.0
        self._saving: asyncio.Future[None] | None = None

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def write(self, out: Output) -> None:
        if out.alerts:
            self.router.feed(out.alerts, self.clock())
            self._dirty = True
            self._wake.set()

    def stats(self) -> dict[str, tuple[int, int, int, int]]:
        """Per receiver: (sent, failed, dropped, queued)."""
        return {n: (c.sent, c.failed, c.dropped, c.queued) for n, c in self.couriers.items()}

    async def start(self) -> None:
        for name, cfg in self.receivers.items():
            outbox = Outbox(self.state_dir / "outbox" / f"{name}.sqlite", cfg.max_queue)
            backoff = Backoff(cfg.retry_initial, 2.0, cfg.retry_max, jitter=0.1)
            courier = Courier(name, make_sender(name, cfg), outbox, backoff)
            courier.start()
            self.couriers[name] = courier
        self._restore()
        self._task = asyncio.create_task(self._run())

    def _restore(self) -> None:
        path = self.state_path
        try:
            loaded = self.router.load_state_dict(load(path))
        except FileNotFoundError:
            return
        except (StateFileError, ValueError, KeyError, TypeError, msgspec.ValidationError) as exc:
            with contextlib.suppress(OSError):
                move_aside(path, "corrupt")
            log.warning("routing state %s not loaded (%s): starting without incidents", path, exc)
            return
        log.info("restored %d open incidents from %s", loaded, path)

    def _dispatch(self, notices: list[Notice]) -> None:
        for notice in notices:
            body = msgspec.json.encode(notice)
            self.notices += 1
            for name in notice.receivers:
                self.couriers[name].submit(body)
        if notices:
            self._dirty = True

    async def _run(self) -> None:
        while True:
            now = self.clock()
            self._dispatch(self.router.due(now))
            nxt = self.router.next_due(now)
            delay = 60.0 if nxt is None else min(60.0, max(0.002, nxt - self.clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def tick(self, now: float) -> None:
        """Save the incidents when they changed, at most every ``save_every`` seconds: the
        snapshot on the event loop, the file written in a worker thread."""
        saving = self._saving
        if saving is not None and not saving.done():
            return
        if self._dirty and now - self._saved_at >= self.save_every:
            state = self._snapshot()
            self._saving = asyncio.get_running_loop().run_in_executor(None, self._write, state)

    def _snapshot(self) -> dict[str, Any]:
        self._dirty = False
        self._saved_at = self.clock()
        return self.router.state_dict()

    def _write(self, state: dict[str, Any]) -> None:
        try:
            dump(self.state_path, state, sync=False)
        except (OSError, StateFileError) as exc:
            log.error("could not save routing state to %s: %s", self.state_path, exc)

    def save(self) -> None:
        """Save the open incidents now (atomically; a failure is logged)."""
        self._write(self._snapshot())

    async def close(self, timeout: float) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._dispatch(self.router.due(self.clock()))
            if self._saving is not None:  # the last periodic save first: it is older
                with contextlib.suppress(Exception):
                    await self._saving
            self.save()
        couriers, self.couriers = self.couriers, {}
        for courier in couriers.values():
            await asyncio.to_thread(courier.close, timeout)

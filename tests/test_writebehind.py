"""The write-behind queue (mqtt_anomaly.writebehind) on its own, with a list as destination."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from mqtt_anomaly.retry import Backoff
from mqtt_anomaly.writebehind import Confirmations, Pending, WriteBehind

Bulk = list[int]


@dataclass
class Destination:
    """Keeps what it was given; ``fail`` > 0 makes that many writes raise, ``refuse`` a
    value it drops (and counts) from every write, as a database refuses bad data."""

    fail: int = 0
    partial: bool = False  # a failing write first takes the first bulk item
    writes: list[tuple[list[Bulk], list[str], bool]] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, pending: Pending[Bulk, str], sync: bool) -> None:
        with self.lock:
            self.attempts.append(time.monotonic())
            if self.fail > 0:
                self.fail -= 1
                if self.partial and pending.bulk:
                    self.stored += pending.bulk.pop(0)
                raise OSError("destination unavailable")
            self.writes.append(([list(b) for b in pending.bulk], list(pending.priority), sync))
            for b in pending.bulk:
                self.stored += b
            self.alerts += pending.priority


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def dest() -> Destination:
    return Destination()


@pytest.fixture
def make(dest: Destination) -> Iterator[Callable[..., WriteBehind[Bulk, str]]]:
    queues: list[WriteBehind[Bulk, str]] = []
    errors: list[Exception] = []

    def build(**kwargs: object) -> WriteBehind[Bulk, str]:
        options: dict[str, object] = {
            "name": "test-writer",
            "write": dest.write,
            "weigh": len,
            "max_bulk": 100,
            "max_priority": 10,
            "batch_size": 1_000_000,
            "flush_interval": 3600.0,
            "retry": Backoff(0.05, 2.0, 0.2),
            "on_error": errors.append,
        }
        options.update(kwargs)
        wb: WriteBehind[Bulk, str] = WriteBehind(**options)  # type: ignore[arg-type]
        wb.start()
        queues.append(wb)
        return wb

    build.errors = errors  # type: ignore[attr-defined]
    yield build
    for wb in queues:
        wb.close(2.0)


def test_tickets_mark_and_wait_confirmed(
    dest: Destination, make: Callable[..., WriteBehind[Bulk, str]]
) -> None:
    wb = make()
    assert wb.mark() == 0 and wb.wait_confirmed(0, 0)  # nothing given: nothing to wait for
    assert wb.offer_bulk([1, 2, 3], 3)
    assert wb.offer("a")
    assert wb.backlog == 4
    assert not wb.wait_confirmed(1, 0.2)  # not marked, no batch full, no interval: unwritten
    assert dest.writes == []
    ticket = wb.mark()
    assert ticket == 2
    assert wb.wait_confirmed(ticket, 10)
    assert dest.writes == [([[1, 2, 3]], ["a"], False)]
    assert wb.backlog == 0
    assert wb.wait_confirmed(1, 0)  # an earlier ticket is covered
    assert not wb.wait_confirmed(3, 0.1)  # a ticket not issued yet


def test_batch_size_and_interval_start_a_write(
    dest: Destination, make: Callable[..., WriteBehind[Bulk, str]]
) -> None:
    wb = make(batch_size=5)
    wb.offer_bulk([1, 2], 2)
    wb.offer_bulk([3, 4, 5], 3)  # reaches the batch size
    until(lambda: dest.stored == [1, 2, 3, 4, 5])
    slow = make(flush_interval=0.1)
    started = time.monotonic()
    slow.offer("x")
    until(lambda: "x" in dest.alerts)
    assert time.monotonic() - started >= 0.09


def test_flush_is_a_sync_write_and_close_stops(
    dest: Destination, make: Callable[..., WriteBehind[Bulk, str]]
) -> None:
    wb = make()
    wb.offer_bulk([7], 1)
    assert wb.flush(10)
    assert dest.writes[-1] == ([[7]], [], True)
    assert wb.flush(0)  # nothing new: at once
    assert wb.close(5)
    assert wb.closed
    assert not wb.offer_bulk([8], 1) and not wb.offer("late")  # closed: dropped, counted
    assert (wb.dropped_bulk, wb.dropped_priority) == (1, 1)
    assert dest.stored == [7]


def test_failed_writes_are_retried_with_the_backoff(
    dest: Destination, make: Callable[..., WriteBehind[Bulk, str]]
) -> None:
    dest.fail = 4
    wb = make(retry=Backoff(0.05, 2.0, 0.2))
    errors: list[Exception] = make.errors  # type: ignore[attr-defined]
    wb.offer_bulk([1], 1)
    ticket = wb.mark()
    until(lambda: len(dest.attempts) >= 2)
    wb.offer_bulk([2], 1)  # joins what is held
    assert wb.wait_confirmed(wb.mark(), 10)
    assert wb.wait_confirmed(ticket, 0)
    assert dest.stored == [1, 2]
    assert len(errors) == 4 and all(isinstance(e, OSError) for e in errors)
    pauses = [b - a for a, b in zip(dest.attempts, dest.attempts[1:], strict=False)]
    # 0.05, 0.1, 0.2, 0.2 (the cap); a mark or a new item never cuts a pause short
    for got, want in zip(pauses, [0.05, 0.1, 0.2, 0.2], strict=True):
        assert got >= want * 0.9
    assert pauses[2] > pauses[0] * 2


def test_what_a_failed_write_took_is_not_given_again(
    dest: Destination, make: Callable[..., WriteBehind[Bulk, str]]
) -> None:
    dest.fail, dest.partial = 1, True
    wb = make()
    wb.offer_bulk([1, 2], 2)
    wb.offer_bulk([3], 1)
    assert wb.wait_confirmed(wb.mark(), 10)
    assert dest.stored == [1, 2, 3]  # the retry got only [3]
    assert dest.writes == [([[3]], [], False)]


def test_bounds_count_held_rows_and_drop_whole_items(
    dest: Destination, make: Callable[..., WriteBehind[Bulk, str]]
) -> None:
    dest.fail = 1_000_000  # the destination is down
    wb = make(max_bulk=10, max_priority=3)
    assert wb.backlog_limit == 5
    assert wb.offer_bulk(list(range(6)), 6)
    wb.mark()
    until(lambda: len(dest.attempts) >= 1)  # taken by the writer and held for a retry
    assert wb.backlog_bulk == 6
    assert not wb.offer_bulk(list(range(5)), 5)  # 6 held + 5 > 10: dropped whole
    assert wb.offer_bulk(list(range(4)), 4)  # 6 + 4 fits
    assert [wb.offer(a) for a in "abcd"] == [True, True, True, False]  # its own bound
    assert wb.snapshot() == (13, 5, 1)
    assert not wb.flush(0.3)  # cannot be written: the timeout decides
    held: list[Pending[Bulk, str]] = []
    dest2 = Destination(fail=1_000_000)
    down = make(write=dest2.write, on_stop=held.append)
    down.offer_bulk([9], 1)
    down.offer("z")
    assert not down.close(0.3)
    assert held and held[0].bulk == [[9]] and held[0].priority == ["z"]


def test_idle_work_runs_between_writes(make: Callable[..., WriteBehind[Bulk, str]]) -> None:
    runs: list[float] = []

    def idle() -> float:
        runs.append(time.monotonic())
        return 0.02

    make(idle=idle, idle_first=0.0)
    until(lambda: len(runs) >= 5)


def test_waiters_give_up_when_the_writer_is_gone() -> None:
    marks = Confirmations()
    marks.confirm(3)
    marks.confirm(1)  # lower: ignored
    assert marks.value == 3
    assert marks.wait(3, 0, lambda: False)
    started = time.monotonic()
    assert not marks.wait(4, 10, lambda: False)
    assert time.monotonic() - started < 1
    done = threading.Timer(0.05, marks.confirm, args=(5,))
    done.start()
    assert marks.wait(5, 10, lambda: True)

"""OutgoingTracker: serials of QoS 1 publishes and waiting for their acknowledgements."""

from __future__ import annotations

import asyncio

from mqtt_anomaly.transport.outgoing import OutgoingTracker


def issue(t: OutgoingTracker, n: int) -> list[int]:
    out = []
    for _ in range(n):
        t.serial += 1
        out.append(t.serial)
    return out


def test_low_advances_only_over_a_contiguous_run() -> None:
    t = OutgoingTracker()
    issue(t, 5)
    t.completed(2)
    t.completed(3)
    assert t.low == 0  # 1 is still out
    t.completed(1)
    assert t.low == 3
    t.completed(5)
    assert t.low == 3
    t.completed(4)
    assert t.low == 5
    t.completed(0)  # QoS 0: nothing to track
    assert t.low == 5


async def test_waiters_return_once_their_ticket_is_covered() -> None:
    t = OutgoingTracker()
    issue(t, 3)
    first = asyncio.ensure_future(t.wait(1))
    last = asyncio.ensure_future(t.wait(3))
    await asyncio.sleep(0)
    t.completed(1)
    await asyncio.wait_for(first, 1)
    assert not last.done()
    t.completed(3)
    await asyncio.sleep(0)
    assert not last.done()  # 2 is still unacknowledged
    t.completed(2)
    await asyncio.wait_for(last, 1)
    await asyncio.wait_for(t.wait(2), 1)  # already covered: returns at once


async def test_release_all_lets_every_waiter_return() -> None:
    t = OutgoingTracker()
    issue(t, 2)
    waiters = [asyncio.ensure_future(t.wait(k)) for k in (1, 2)]
    await asyncio.sleep(0)
    t.release_all()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert t.low == 0


async def test_a_cancelled_waiter_is_forgotten() -> None:
    t = OutgoingTracker()
    issue(t, 1)
    w = asyncio.ensure_future(t.wait(1))
    await asyncio.sleep(0)
    w.cancel()
    await asyncio.gather(w, return_exceptions=True)
    assert t._waiters == []

"""Connection attempts follow the retry policy: the first connection, the service's reconnects,
gmqtt's reconnects (the simulator) and the fleet's spread of pauses."""

from __future__ import annotations

import logging
import re
from itertools import pairwise

import pytest

from mqtt_anomaly.config import BrokerSettings, load_settings
from mqtt_anomaly.errors import BrokerError
from mqtt_anomaly.retry import Backoff
from mqtt_anomaly.simulate import Fleet
from mqtt_anomaly.simulate.fleet import DELAY_STEPS, RECONNECT_JITTER, _reconnect_policies
from mqtt_anomaly.transport.client import MqttClient
from mqtt_anomaly.transport.lean import LeanClient

from .helpers import eventually
from .mosquitto import Mosquitto, free_port

POLICY = Backoff(0.05, factor=2.0, max=0.2)
WANT = [0.05, 0.1, 0.2, 0.2, 0.2]  # POLICY's first pauses
SLACK = 0.01  # record times are wall-clock, sleeps monotonic


def pauses_logged(caplog: pytest.LogCaptureFixture, pattern: str) -> list[tuple[float, float]]:
    """(record time, pause) of every record whose message matches ``pattern`` (group 1)."""
    found = []
    for record in caplog.records:
        m = re.search(pattern, record.getMessage())
        if m is not None:
            found.append((record.created, float(m.group(1))))
    return found


@pytest.mark.parametrize("kind", ["lean", "gmqtt"])
async def test_first_connection_pauses_grow_and_are_capped(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = BrokerSettings(url=f"mqtt://127.0.0.1:{free_port()}")  # nothing listens
    client: LeanClient | MqttClient
    if kind == "lean":
        client = LeanClient(settings, "t", on_batch=lambda _b: None, backoff=POLICY)
    else:
        client = MqttClient(settings, "t", backoff=POLICY)
    caplog.set_level(logging.DEBUG, logger="mqtt_anomaly.transport.connection")
    with pytest.raises(BrokerError, match="cannot reach broker"):
        await client.connect(timeout=1.5)
    attempts = pauses_logged(caplog, r"next attempt in ([0-9.]+) s")
    pauses = [p for _, p in attempts]
    # 0.05 + 0.1 + 0.2 k ≤ 1.5: at least 7 pauses capped (5 if they kept doubling)
    assert len(pauses) >= 7, pauses
    assert pauses[:5] == pytest.approx(WANT, abs=1e-3)
    assert max(pauses) <= POLICY.max + 1e-3
    times = [t for t, _ in attempts]
    gaps = [b - a for a, b in pairwise(times)]
    for gap, pause in zip(gaps, pauses, strict=False):
        assert gap >= pause - SLACK, (gaps, pauses)
    assert max(gaps) < POLICY.max + 0.5, gaps  # capped, not doubling on
    # one warning for the whole outage, not one per attempt
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len([r for r in warnings if "unreachable" in r.getMessage()]) == 1


async def outage(mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture, pattern: str) -> None:
    """Stop the broker until five failed attempts are logged, then start it again."""
    before = len(pauses_logged(caplog, pattern))
    mosquitto.stop()
    await eventually(
        lambda: len(pauses_logged(caplog, pattern)) >= before + 5, 10, "five failed attempts"
    )
    mosquitto.start()


def check_outages(found: list[tuple[float, float]]) -> None:
    """Two outages of at least five attempts each: both follow POLICY from its start."""
    pauses = [p for _, p in found]
    starts = [i for i, p in enumerate(pauses) if p == pytest.approx(POLICY.initial)]
    assert len(starts) == 2, pauses
    for i in starts:
        assert pauses[i : i + 5] == pytest.approx(WANT, abs=1e-3), pauses
    assert max(pauses) <= POLICY.max + 1e-3


async def test_lean_reconnect_pauses_follow_the_policy_and_start_over(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mqtt_anomaly.transport.lean")
    pattern = r"reconnect to \S+ after ([0-9.]+) s failed"
    client = LeanClient(
        BrokerSettings(url=mosquitto.url), "lean-backoff", on_batch=lambda _b: None, backoff=POLICY
    )
    await client.connect(timeout=10)
    try:
        await outage(mosquitto, caplog, pattern)
        await eventually(lambda: client.stats.connects == 2, 10, "reconnected")
        await outage(mosquitto, caplog, pattern)
        await eventually(lambda: client.stats.connects == 3, 10, "reconnected again")
    finally:
        await client.disconnect()
    found = pauses_logged(caplog, pattern)
    check_outages(found)
    # failed attempts of one outage: each at least its pause after the one before
    times = [t for t, _ in found]
    pauses = [p for _, p in found]
    for i in range(1, len(found)):
        if pauses[i] > POLICY.initial:
            assert times[i] - times[i - 1] >= pauses[i] - SLACK, (times, pauses)


async def test_gmqtt_reconnect_pauses_follow_the_policy_and_start_over(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mqtt_anomaly.transport.client")
    pattern = r"sensor-x: reconnecting in ([0-9.]+) s"
    client = MqttClient(
        BrokerSettings(url=mosquitto.url), "gm-backoff", name="sensor-x", backoff=POLICY
    )
    await client.connect(timeout=10)
    try:
        await outage(mosquitto, caplog, pattern)
        await eventually(lambda: client.stats.connects == 2, 10, "reconnected")
        await outage(mosquitto, caplog, pattern)
        await eventually(lambda: client.stats.connects == 3, 10, "reconnected again")
    finally:
        await client.disconnect()
    found = pauses_logged(caplog, pattern)
    check_outages(found)
    times = [t for t, _ in found]
    pauses = [p for _, p in found]
    for i in range(1, len(found)):  # a pause is logged before its sleep
        if pauses[i] > POLICY.initial:
            assert times[i] - times[i - 1] >= pauses[i - 1] - SLACK, (times, pauses)


def test_a_small_fleet_keeps_the_fixed_delay() -> None:
    broker = BrokerSettings(reconnect_delay=0.3)
    assert _reconnect_policies(broker, 1) == [Backoff.fixed(0.3)]
    assert _reconnect_policies(broker, 99) == [Backoff.fixed(0.3)]


def test_a_large_fleet_spreads_its_first_pauses_and_grows_to_the_longest() -> None:
    broker = BrokerSettings(reconnect_delay=0.5)
    policies = _reconnect_policies(broker, 10_000)  # spread: 10 s
    assert len(policies) == DELAY_STEPS
    initials = [p.initial for p in policies]
    assert initials[0] == 0.5
    assert initials[-1] == pytest.approx(10.5)
    assert initials == sorted(initials)
    assert len(set(initials)) == DELAY_STEPS
    for p in policies:
        assert p.factor == 2.0
        assert p.max == pytest.approx(10.5)
        assert p.jitter == RECONNECT_JITTER
        pauses = p.delays()
        drawn = [next(pauses) for _ in range(12)]
        assert all(p.initial * (1 - RECONNECT_JITTER) <= d <= p.max for d in drawn[:1])
        assert all(d <= p.max for d in drawn)
        assert drawn[-1] >= p.max * (1 - RECONNECT_JITTER)  # it got to the cap
    # with jitter, sensors sharing a step do not pause in step
    a, b = policies[0].delays(), policies[0].delays()
    assert [next(a) for _ in range(5)] != [next(b) for _ in range(5)]


def test_the_fleet_gives_its_sensors_their_step() -> None:
    settings = load_settings(
        overrides={"broker": {"reconnect_delay": 0.5}, "simulator": {"sensors": 200, "seed": 1}}
    )
    fleet = Fleet(settings, console=False)
    policies = _reconnect_policies(settings.broker, 200)
    clients = [fleet._new_client(i) for i in (0, 1, DELAY_STEPS + 1)]
    assert [c.backoff for c in clients] == [policies[0], policies[1], policies[1]]
    assert clients[1].backoff.initial > clients[0].backoff.initial
    assert all(c.settings == settings.broker for c in clients)

"""The package's one retry policy: mqtt_anomaly.retry.Backoff."""

from __future__ import annotations

import random
from itertools import islice

import pytest

from mqtt_anomaly.retry import Backoff


def take(policy: Backoff, n: int, rng: random.Random | None = None) -> list[float]:
    return list(islice(policy.delays(rng), n))


def test_grows_by_the_factor_up_to_the_cap() -> None:
    want = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert take(Backoff(0.1, 2.0, 5.0), 8) == pytest.approx(want)
    assert take(Backoff(0.5, 3.0, 10.0), 4) == pytest.approx([0.5, 1.5, 4.5, 10.0])


def test_deterministic_without_jitter() -> None:
    policy = Backoff(0.25, 2.0, 4.0)
    assert take(policy, 10) == take(policy, 10)


def test_factor_one_is_a_fixed_pause() -> None:
    assert take(Backoff(0.1, 1.0, 0.1), 5) == [0.1] * 5


def test_reset_starts_over() -> None:
    delays = Backoff(1.0, 2.0, 60.0).delays()
    assert not delays.started
    assert [delays.next(), next(delays), next(delays)] == [1.0, 2.0, 4.0]
    assert delays.started
    delays.reset()
    assert not delays.started
    assert next(delays) == 1.0


def test_after_is_the_undisturbed_next_pause() -> None:
    policy = Backoff(0.5, 2.0, 30.0, jitter=0.5)
    assert policy.after(0.5) == 1.0
    assert policy.after(20.0) == 30.0


def test_jitter_stays_within_its_fraction_and_keeps_the_growth() -> None:
    policy = Backoff(1.0, 2.0, 8.0, jitter=0.25)
    plain = take(Backoff(1.0, 2.0, 8.0), 200)
    jittered = take(policy, 200, random.Random(7))
    for d, j in zip(plain, jittered, strict=True):
        assert d * 0.75 <= j <= d
    assert len(set(jittered)) > 100  # really drawn, not one fixed value
    # the same seed gives the same pauses; another one other pauses
    assert take(policy, 20, random.Random(7)) == jittered[:20]
    assert take(policy, 20, random.Random(8)) != jittered[:20]


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"initial": 0.0}, "initial"),
        ({"initial": -1.0}, "initial"),
        ({"initial": 1.0, "factor": 0.5}, "factor"),
        ({"initial": 2.0, "max": 1.0}, "max"),
        ({"initial": 1.0, "jitter": 1.5}, "jitter"),
        ({"initial": 1.0, "jitter": -0.1}, "jitter"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        Backoff(**kwargs)


def test_the_package_policies() -> None:
    from mqtt_anomaly.sinks.kafka import REBUILD_RETRY
    from mqtt_anomaly.store.queued import WRITE_RETRY

    assert take(WRITE_RETRY, 7) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert take(REBUILD_RETRY, 8) == pytest.approx([0.5, 1, 2, 4, 8, 16, 30, 30])

"""The package's one retry policy: exponential backoff with an optional jitter.

A :class:`Backoff` is a frozen description (first pause, growth factor, cap, jitter); its
:meth:`~Backoff.delays` gives a :class:`Delays` that hands out the pauses one by one and
starts over on :meth:`~Delays.reset` (after a success)::

    >>> pauses = Backoff(0.1, 2.0, 0.5).delays()
    >>> [round(next(pauses), 3) for _ in range(5)]
    [0.1, 0.2, 0.4, 0.5, 0.5]
    >>> pauses.reset(); next(pauses)
    0.1

With ``jitter = 0`` (the default) the pauses are deterministic. With ``jitter = j`` each
pause is drawn uniformly from ``[d·(1 − j), d]`` around the undisturbed ``d``, so many
clients that failed together do not retry together; the undisturbed sequence still decides
the growth, so the cap holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pauses ``initial``, ``initial·factor``, ``initial·factor²`` … at most ``max``.

    ``factor = 1`` is a fixed pause. ``jitter`` in ``[0, 1]`` shortens each pause by up to
    that fraction, at random.
    """

    initial: float
    factor: float = 2.0
    max: float = 30.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError(f"Backoff: initial must be > 0, not {self.initial}")
        if not self.factor >= 1:
            raise ValueError(f"Backoff: factor must be >= 1, not {self.factor}")
        if not self.max >= self.initial:
            raise ValueError(f"Backoff: max ({self.max}) must be >= initial ({self.initial})")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff: jitter must be within [0, 1], not {self.jitter}")

    @classmethod
    def fixed(cls, delay: float) -> Backoff:
        """The same pause every time: ``Backoff(delay, factor=1, max=delay)``.

        >>> Backoff.fixed(0.5)
        Backoff(initial=0.5, factor=1.0, max=0.5, jitter=0.0)
        """
        return cls(delay, factor=1.0, max=delay)

    def delays(self, rng: random.Random | None = None) -> Delays:
        """A fresh sequence of pauses (``rng`` draws the jitter; a private one by default)."""
        return Delays(self, rng)

    def after(self, delay: float) -> float:
        """The undisturbed pause that follows ``delay`` (no jitter)."""
        return min(delay * self.factor, self.max)


class Delays:
    """The pauses of one :class:`Backoff`, one per :func:`next`; :meth:`reset` starts over."""

    __slots__ = ("_current", "_rng", "policy")

    def __init__(self, policy: Backoff, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._current: float | None = None
        self._rng = rng if rng is not None or policy.jitter == 0 else random.Random()

    def __iter__(self) -> Delays:
        return self

    def __next__(self) -> float:
        """The next pause (never raises StopIteration: a backoff does not run out)."""
        policy = self.policy
        current = policy.initial if self._current is None else policy.after(self._current)
        self._current = current
        if policy.jitter and self._rng is not None:
            return current * (1.0 - policy.jitter * self._rng.random())
        return current

    def next(self) -> float:
        """The same as ``next(delays)``."""
        return self.__next__()

    def reset(self) -> None:
        """After a success: the next pause is ``initial`` again."""
        self._current = None

    @property
    def started(self) -> bool:
        """True once a pause was handed out since the last reset."""
        return self._current is not None

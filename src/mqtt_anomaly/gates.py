"""Operating-state gates: while a machine is off, its sensors are neither scored nor learned.

A gate (``[[gates]]``) is a :class:`~mqtt_anomaly.routeconf.Selector` of the sensors it
holds and how the machine's state is known:

- a **state topic** (``topic``): the payload is the state; one of ``on_values`` (``on``,
  ``running``, ``1``, ``true``, case-insensitive) means on, anything else off;
- a **rule** on one sensor's readings (``sensor`` with ``below`` and/or ``above``): motor
  current below 2 A means off.

While a gate is off, and for ``warmup`` seconds after it turns on (a machine starting is not
an anomaly), the readings of its sensors are stored but not scored and not learned from
(:meth:`Gates.filter_round`, the pipeline's gate hook), and every alert of its sensors that
is still produced (silence, offline, clears) carries ``suppressed = "gate: <name> off"`` (or
``warming up``). The rule's own sensor is not held by its gate unless the selector names it.
Times are the readings' own (``ts``) for rules, the receive time for state topics; an
alert's reason is the gate's state at that time (the last 256 changes are kept).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .errors import ConfigError
from .messages import Reading
from .routeconf import Selector, SelectorIndex, TagsOf
from .topics import validate_filter

__all__ = ["Gate", "Gates"]

Round = list[tuple[int, Reading, float]]  # as the pipeline's rounds: (slot, reading, received)
HISTORY = 256  # state changes kept per gate (the state of alerts emitted after the fact)


class Gate(Selector):
    """One ``[[gates]]`` entry (see the module docstring)."""

    name: str
    topic: str = ""
    on_values: tuple[str, ...] = ("on", "running", "1", "true")
    sensor: str = ""
    below: float | None = None
    above: float | None = None
    warmup: float = Field(0.0, ge=0, le=86_400)
    initial: Literal["on", "off"] = "on"
    """The state before the first state message or reading of the rule's sensor."""

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, v: str) -> str:
        if v and ("+" in v or "#" in v):
            raise ValueError(f"one topic, without wildcards: {v!r}")
        if v:
            try:
                validate_filter(v, key="topic")
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("topic: ")) from exc
        return v

    @model_validator(mode="after")
    def _check_source(self) -> Gate:
        if bool(self.topic) == bool(self.sensor):
            raise ValueError("a gate needs either topic or sensor (with below or above)")
        if self.sensor and self.below is None and self.above is None:
            raise ValueError(f"gate {self.name}: a rule on {self.sensor} needs below or above")
        if not (self.sensors or self.assets or self.groups or self.tags):
            raise ValueError(f"gate {self.name}: name the sensors it holds (sensors, assets, …)")
        return self

    def is_on(self, value: float) -> bool:
        if self.below is not None and value < self.below:
            return False
        return not (self.above is not None and value > self.above)


class Gates:
    """The gates' states and the pipeline's gate hook (see the module docstring)."""

    def __init__(
        self,
        gates: Sequence[Gate],
        *,
        tags_of: TagsOf = lambda _sid: None,
        group_of: Callable[[str], str] = lambda _sid: "",
    ) -> None:
        self.gates = tuple(gates)
        self._index = SelectorIndex(self.gates, tags_of=tags_of, group_of=group_of)
        self.on = [g.initial == "on" for g in self.gates]
        self.since = [float("-inf")] * len(self.gates)  # when each last turned on
        # per gate its last changes (time, on), oldest first: the state at an earlier time
        self._changes: list[collections.deque[tuple[float, bool]]] = [
            collections.deque(maxlen=HISTORY) for _ in self.gates
        ]
        self.by_topic = {g.topic: i for i, g in enumerate(self.gates) if g.topic}
        self.by_rule: dict[str, list[int]] = {}
        for i, g in enumerate(self.gates):
            if g.sensor:
                self.by_rule.setdefault(g.sensor, []).append(i)
        self.held = 0  # readings not scored (a gate off or warming up)
        self.changes = 0  # state changes seen

    @property
    def topics(self) -> tuple[str, ...]:
        """The state topics to subscribe."""
        return tuple(self.by_topic)

    def _set(self, i: int, on: bool, ts: float) -> None:
        if on != self.on[i]:
            self.on[i] = on
            self.changes += 1
            self._changes[i].append((ts, on))
            if on:
                self.since[i] = ts

    def _state_at(self, i: int, ts: float) -> tuple[bool, float]:
        """Gate ``i``'s state at ``ts`` and since when it was on (from its last changes)."""
        changes = self._changes[i]
        if not changes or changes[-1][0] <= ts:
            return self.on[i], self.since[i]
        on_since = float("-inf")
        state = not changes[0][1]  # before the oldest change kept
        for t, on in changes:
            if t > ts:
                break
            state = on
            if on:
                on_since = t
        return state, on_since

    def on_state(self, topic: str, payload: bytes, ts: float) -> bool:
        """A message of a gate's state topic (True: it was one, and is taken)."""
        i = self.by_topic.get(topic)
        if i is None:
            return False
        text = payload.decode("utf-8", "replace").strip().lower()
        self._set(i, text in {v.lower() for v in self.gates[i].on_values}, ts)
        return True

    def observe(self, sensor: str, value: float, ts: float) -> None:
        """A reading of a rule's sensor."""
        for i in self.by_rule.get(sensor, ()):
            self._set(i, self.gates[i].is_on(value), ts)

    def reason(self, sensor: str, ts: float, received: float | None = None) -> str:
        """``gate: NAME off`` (or ``warming up``) while a gate held ``sensor`` at ``ts`` (the
        reading's time; ``received``: the receive time, the clock of state topics, by default
        ``ts``), else ``""``."""
        for i in self._index.of(sensor):
            g = self.gates[i]
            on, since = self._state_at(i, ts if g.sensor or received is None else received)
            if not on:
                return f"gate: {g.name} off"
            if (ts if g.sensor or received is None else received) < since + g.warmup:
                return f"gate: {g.name} warming up"
        return ""

    def filter_round(self, rnd: Round) -> Round:
        """The pipeline's gate hook: one round of ``(slot, reading, received_at)``, without the
        readings of sensors a gate holds (after taking the rules' readings into account)."""
        rules = self.by_rule
        if rules:
            for _, r, _ in rnd:
                if r.sensor_id in rules:
                    self.observe(r.sensor_id, r.value, r.ts)
        reason = self.reason
        keep = [x for x in rnd if not reason(x[1].sensor_id, x[1].ts, x[2])]
        self.held += len(rnd) - len(keep)
        return keep

    # ---- saved state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "names": [g.name for g in self.gates],
            "on": list(self.on),
            "since": list(self.since),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back the saved states of gates that still exist (by name)."""
        index = {g.name: i for i, g in enumerate(self.gates)}
        for name, on, since in zip(state["names"], state["on"], state["since"], strict=True):
            i = index.get(str(name))
            if i is not None:
                self.on[i] = bool(on)
                self.since[i] = float(since)


def gate_names_unique(gates: Iterable[Gate]) -> None:
    """ValueError for two gates of one name."""
    seen: set[str] = set()
    for g in gates:
        if g.name in seen:
            raise ValueError(f"two gates named {g.name!r}")
        seen.add(g.name)

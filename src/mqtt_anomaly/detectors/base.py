"""The detector protocol: online detectors that score many sensors per call.

A detector keeps its learned state in numpy arrays indexed by a sensor *slot* (a small integer
the service assigns to each sensor). :meth:`Detector.update` scores a batch of readings, one per
slot, and then learns from them: **score first, then learn**, so a score only ever depends on
the reading itself and earlier ones. Slots in one call must be distinct; the caller splits a
batch that holds several readings of one sensor into rounds.

Scores are in [0, 1]. By convention 0.5 is the alert level and 0.3 the clear level, so the
alert state machine treats every detector alike; ``critical_level`` says from which score an
alert is critical. ``low``/``high`` give the band of values the detector expected (NaN when it
has none).

State can be saved and restored (:meth:`Detector.state_dict`, :meth:`Detector.load_state_dict`),
so a restarted service does not relearn.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError
from ._grow import capacity_for, grown

if TYPE_CHECKING:
    from ..config import DetectorSettings

_MISSING = object()
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]


class Scores(NamedTuple):
    """What a detector says about a batch: score in [0, 1] and the expected band."""

    score: FloatArray
    low: FloatArray
    high: FloatArray


class Field(NamedTuple):
    """One per-slot state array: its dtype and the value of a new slot."""

    dtype: type[np.generic]
    fill: float | int | bool


class Detector(ABC):
    """Base of every detector. Subclasses declare ``fields`` and implement ``_update``; their
    constructor takes keyword-only parameters and keeps each as an attribute of the same name
    (that is where :meth:`params` reads them)."""

    name: ClassVar[str]
    raise_level: ClassVar[float] = 0.5
    clear_level: ClassVar[float] = 0.3
    critical_level: ClassVar[float] = 2.0  # above 1: never critical unless a subclass says so

    def __init__(self) -> None:
        self.capacity = 0
        self.state: dict[str, NDArray[Any]] = {
            k: np.empty(0, dtype=f.dtype) for k, f in self.fields().items()
        }

    @abstractmethod
    def fields(self) -> Mapping[str, Field]:
        """The per-slot state arrays this detector keeps."""

    @classmethod
    def installed(cls) -> bool:
        """Whether what this detector needs is installed (an optional extra, say); the
        registry leaves out a detector that is not."""
        return True

    @classmethod
    def from_settings(cls, settings: DetectorSettings) -> Detector:
        """Build from configuration: ``[detector.params.<name>]`` are keyword arguments."""
        return check_params(cls.name, cls, settings.params.get(cls.name, {}))

    def params(self) -> dict[str, Any]:
        """Constructor parameters (saved with the state, checked on restore).

        Read from the attributes named like the parameters of ``__init__``, in their order:
        a detector stores each (converted) parameter as ``self.<parameter>``."""
        out: dict[str, Any] = {}
        for k in init_params(type(self)):
            v = getattr(self, k, _MISSING)
            if v is _MISSING:
                raise TypeError(
                    f"{type(self).__name__} takes {k!r} but has no attribute {k!r}: store each "
                    "constructor parameter as an attribute of the same name"
                )
            out[k] = v
        return out

    @abstractmethod
    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        """Score then learn; ``slots`` are distinct and within capacity."""

    def update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        """Score a batch of readings (one per distinct slot), then learn from it."""
        if len(slots):
            top = int(slots.max()) + 1
            if top > self.capacity:
                self.reserve(top)
        return self._update(slots, values, ts)

    def reserve(self, n: int) -> None:
        """Make room for slots ``0 .. n-1`` (amortised doubling)."""
        if n <= self.capacity:
            return
        cap = capacity_for(n, self.capacity)
        for k, f in self.fields().items():
            self.state[k] = grown(self.state[k], cap, f.fill, shape=())
        self.capacity = cap

    def reset(self, slots: IntArray) -> None:
        """Forget what was learned for ``slots``."""
        for k, f in self.fields().items():
            self.state[k][slots] = f.fill

    def seed_range(self, slot: int, low: float, high: float) -> None:
        """The range a sensor's source declares for it (a Sparkplug birth's ``engLow`` and
        ``engHigh``; NaN: none); a detector that has a use for it takes it. Not saved: the
        source declares it again (a Sparkplug host asks every node for its births after a
        restart)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """A copy of the learned state and the parameters it was learned with."""
        return {
            "name": self.name,
            "params": self.params(),
            "arrays": {k: v.copy() for k, v in self.state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; refuses (ValueError, nothing changed) state of
        another kind or configuration, or arrays of another shape or kind of number."""
        if state.get("name") != self.name or state.get("params") != self.params():
            raise ValueError(f"saved state is for {state.get('name')} {state.get('params')}")
        arrays = state.get("arrays")
        if not isinstance(arrays, Mapping) or set(arrays) != set(self.fields()):
            raise ValueError("saved state has other fields")
        fields = self.fields()
        for k, a in arrays.items():
            if (
                not isinstance(a, np.ndarray)
                or a.ndim < 1
                or not np.can_cast(a.dtype, fields[k].dtype, casting="same_kind")
            ):
                raise ValueError(f"saved state: {k} is not an array of {fields[k].dtype}")
        if len({len(a) for a in arrays.values()}) > 1:
            raise ValueError("saved state: arrays differ in length")
        n = max((len(a) for a in arrays.values()), default=0)
        old = self.capacity, self.state
        self.capacity = 0
        self.state = {k: np.empty(0, dtype=f.dtype) for k, f in fields.items()}
        self.reserve(n)
        if any(a.shape[1:] != self.state[k].shape[1:] for k, a in arrays.items()):
            self.capacity, self.state = old
            raise ValueError("saved state: arrays of another shape")
        for k, a in arrays.items():
            self.state[k][: len(a)] = a

    def expected_band(self, slots: IntArray) -> tuple[FloatArray, FloatArray]:
        """``(low, high)``: the values this detector expects next for each of ``slots``, as it
        stands now (reading it learns nothing); NaN where it gives no bound (a detector without
        a band, a slot not warmed up, no bound on that side). A detector whose band depends on
        the next reading's time (a rate, a season) gives none here."""
        return nan_band(len(slots)), nan_band(len(slots))

    def score_series(self, values: FloatArray, ts: FloatArray | None = None) -> FloatArray:
        """Score one series point by point in slot 0 (for examples and evaluation)."""
        if ts is None:
            ts = np.arange(len(values), dtype=np.float64)
        out = np.empty(len(values))
        slot = np.zeros(1, dtype=np.intp)
        for i in range(len(values)):
            out[i] = self.update(slot, values[i : i + 1], ts[i : i + 1]).score[0]
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


@functools.cache
def init_params(cls: type[Detector]) -> tuple[str, ...]:
    """The names of the parameters of ``cls.__init__`` (without ``self``, ``*args``,
    ``**kwargs``); an attribute of each name must hold its value."""
    sig = inspect.signature(cls.__init__)
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return tuple(p.name for p in list(sig.parameters.values())[1:] if p.kind not in skip)


def nan_band(n: int) -> FloatArray:
    """A band of NaN for detectors that have no expected range."""
    return np.full(n, np.nan)


def check_params(name: str, cls: type[Detector], params: Mapping[str, Any]) -> Detector:
    """Build ``cls(**params)``, turning a bad parameter into a one-line ConfigError."""
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"detector.params.{name}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"detector.params.{name}: {exc}") from exc

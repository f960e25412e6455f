"""Adapter for River's online anomaly models (optional: ``pip install river``).

Runs one River model per sensor slot (River models learn one reading at a time, so this
detector loops over the slots in Python and is much slower than the numpy detectors). Each
reading is given to the model as ``{"x": value}``, optionally behind River's ``MinMaxScaler``
(``scale``; tree-based models such as ``HalfSpaceTrees`` expect features in [0, 1]). The model's
own anomaly score is mapped linearly so that ``alert`` lands on 0.5, clipped to [0, 1]. It is
registered as ``river`` only when River is installed; River is imported when the detector is
built, never at package import.

River models can only be saved as pickles, which run code when loaded. Saved models are
therefore signed with HMAC-SHA256 under :attr:`RiverDetector.state_key` (the service sets its
``state.key``; by default a random key of this process) and unpickled only after every
signature checks out: state with a bad or missing signature is refused and the models relearn.

>>> import numpy as np
>>> d = RiverDetector(model="HalfSpaceTrees", seed=7)  # doctest: +SKIP
>>> s = d.score_series(np.r_[np.random.default_rng(4).normal(0, 1, 600), 40.0])  # doctest: +SKIP
>>> bool(s[-1] > np.median(s[300:600]))  # doctest: +SKIP
True
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import pickle
import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..errors import StateFileError
from ..statefile import sign, verify_all
from .base import Detector, Field, FloatArray, IntArray, Scores, nan_band

log = logging.getLogger(__name__)
_PROCESS_KEY = secrets.token_bytes(32)  # until a state key is set: in-process round trips only


def river_available() -> bool:
    """Whether River can be imported."""
    return importlib.util.find_spec("river") is not None


class RiverDetector(Detector):
    """One River anomaly model per slot; ``model`` names a class of ``river.anomaly``."""

    name: ClassVar[str] = "river"

    def __init__(
        self,
        *,
        model: str = "HalfSpaceTrees",
        seed: int = 42,
        scale: bool = True,
        alert: float = 0.8,
    ) -> None:
        if not 0 < alert <= 1e12:
            raise ValueError("alert must be positive")
        try:
            anomaly = importlib.import_module("river.anomaly")
        except ImportError as exc:
            raise ValueError("the river detector needs River: pip install river") from exc
        cls = getattr(anomaly, model, None)
        if not isinstance(cls, type):
            raise ValueError(f"river.anomaly has no model {model!r}")
        self._cls: Any = cls
        self.model = model
        self.seed = int(seed)
        self.scale = bool(scale)
        self.alert = float(alert)
        self.models: list[Any] = []
        self.state_key: bytes = _PROCESS_KEY
        super().__init__()

    @classmethod
    def installed(cls) -> bool:
        return river_available()

    def fields(self) -> Mapping[str, Field]:
        return {"n": Field(np.int64, 0)}

    def _new_model(self) -> Any:
        kwargs = {"seed": self.seed} if "seed" in inspect.signature(self._cls).parameters else {}
        model = self._cls(**kwargs)
        if self.scale:
            preprocessing = importlib.import_module("river.preprocessing")
            model = preprocessing.MinMaxScaler() | model
        return model

    def reserve(self, n: int) -> None:
        super().reserve(n)
        while len(self.models) < self.capacity:
            self.models.append(self._new_model())

    def reset(self, slots: IntArray) -> None:
        super().reset(slots)
        for s in slots.tolist():
            self.models[s] = self._new_model()

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        raw = np.empty(len(values))
        for i, (s, v) in enumerate(zip(slots.tolist(), values.tolist(), strict=True)):
            model = self.models[s]
            features = {"x": float(v)}
            raw[i] = float(model.score_one(features))
            model.learn_one(features)
        self.state["n"][slots] += 1
        score = np.clip(0.5 * np.nan_to_num(raw) / self.alert, 0.0, 1.0)
        return Scores(score, nan_band(len(values)), nan_band(len(values)))

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        key = self.state_key
        out["models"] = [sign(key, pickle.dumps(m)) for m in self.models]
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counts and the models; ValueError (nothing changed) when a model's
        signature does not match :attr:`state_key`: nothing is unpickled then."""
        signed = state.get("models", [])
        if type(signed) is not list or not all(type(b) is bytes for b in signed):
            raise ValueError("saved River models are not a list of signed blobs")
        try:
            blobs = verify_all(self.state_key, signed)
        except StateFileError as exc:
            log.warning("refusing saved River models (%s): relearning", exc)
            raise ValueError(f"saved River models refused: {exc}") from exc
        saved = [pickle.loads(b) for b in blobs]  # signed by this service: our own pickles
        old = self.capacity, self.state
        super().load_state_dict(state)
        if len(saved) > self.capacity:
            self.capacity, self.state = old
            raise ValueError("saved state has more River models than slots")
        self.models = saved + [self._new_model() for _ in range(self.capacity - len(saved))]

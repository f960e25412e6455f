"""Healthy sensor signals: a per-sensor base level, a slow daily cycle and measurement noise.

Everything is drawn from the run's seed, so the same seed gives the same fleet. Noise comes in
*rounds*: round ``k`` holds the noise of reading ``k`` of every sensor, drawn from its own
seed sequence, so a sensor's values do not depend on which other sensors happened to be due
in the same tick.

>>> sig = SignalModel(3, seed=7)
>>> bool(((sig.base >= 20) & (sig.base <= 30)).all())
True
>>> z = sig.round_noise(0)
>>> v = sig.clean(np.arange(3), np.zeros(3), z)
>>> bool(np.array_equal(v, SignalModel(3, seed=7).clean(np.arange(3), np.zeros(3), z)))
True
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

DAY = 86_400.0
BASE_RANGE = (20.0, 30.0)  # °C, the level of a healthy sensor
CYCLE_RANGE = (0.5, 2.0)  # °C, amplitude of the daily cycle
NOISE_RANGE = (0.05, 0.25)  # °C, standard deviation of the measurement noise

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# spawn keys keep the seed's streams apart: sensor parameters, noise rounds, fault rounds
PARAMS_STREAM = 0
NOISE_STREAM = 1
FAULT_STREAM = 2


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for one stream (and round) of a seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class SignalModel:
    """The healthy signal of ``n`` sensors: ``base + cycle(t) + noise``."""

    def __init__(self, n: int, seed: int) -> None:
        rng = rng_for(seed, PARAMS_STREAM)
        self.n = n
        self.seed = seed
        self.base: FloatArray = rng.uniform(*BASE_RANGE, n)
        self.amplitude: FloatArray = rng.uniform(*CYCLE_RANGE, n)
        self.noise: FloatArray = rng.uniform(*NOISE_RANGE, n)
        # where in the day the run starts, and a small per-sensor offset (sun, machines)
        self.day_offset = float(rng.uniform(0.0, DAY))
        self.cycle_phase: FloatArray = rng.normal(0.0, 0.3, n)

    def round_noise(self, k: int) -> FloatArray:
        """Standard normal draws for reading ``k`` of every sensor."""
        return rng_for(self.seed, NOISE_STREAM, k).standard_normal(self.n)

    def clean(self, idx: IntArray, t: FloatArray, z: FloatArray) -> FloatArray:
        """Healthy values of sensors ``idx`` at run times ``t`` (s) with standard noise ``z``."""
        angle = (t + self.day_offset) * (2.0 * math.pi / DAY) + self.cycle_phase[idx]
        out: FloatArray = self.base[idx] + self.amplitude[idx] * np.sin(angle)
        out += self.noise[idx] * z
        return out

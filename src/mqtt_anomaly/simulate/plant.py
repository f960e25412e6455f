"""Simulated assets as data: a run of an :class:`~.assets.AssetModel` as arrays, row labels,
the labels file and one CSV file per asset. No network.

:func:`generate` steps a model ``readings`` times and keeps everything (values per reading,
asset and sensor; the active fault; the faults that ended). :class:`AssetCsv` writes what a
plant's historian would export: one file per asset, ``timestamp`` (UTC epoch seconds), one
column per sensor and an ``anomaly`` column (1 while the asset has a fault, else 0).

>>> from mqtt_anomaly.simulate.assets import AssetModel
>>> m = AssetModel("pump", 2, interval=1.0, seed=3, rates={}, warmup=0.0)
>>> m.inject("valve_restriction", asset=1, at=5.0, duration=10.0)
5
>>> run = generate(m, 30)
>>> run.values.shape, int(run.labels[:, 1].sum()), int(run.labels[:, 0].sum())
((30, 2, 8), 10, 0)
>>> [(f.asset, f.kind, f.start_k, f.end_k) for f in run.faults]
[(1, 'valve_restriction', 5, 14)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .._lifecycle import Closing
from ..errors import ConfigError
from .assets import AssetFault, AssetModel, AssetStep
from .labels import Label
from .signals import FloatArray, IntArray

BoolArray = np.ndarray[Any, np.dtype[np.bool_]]
LABEL_COLUMN = "anomaly"


@dataclass(frozen=True, eq=False)
class AssetRun:
    """``readings`` readings of every asset: ``t`` run times ``(readings, n)``, ``values``
    ``(readings, n, sensors)``, ``fault`` the active fault's index (-1: none) and ``faults``
    every fault, ended (cut at the last reading if still active)."""

    ids: list[str]
    sensors: list[str]
    fault_names: list[str]
    t: FloatArray
    values: FloatArray
    fault: IntArray
    faults: list[AssetFault]

    @property
    def labels(self) -> BoolArray:
        """Per reading and asset: inside a fault."""
        return self.fault >= 0


def generate(model: AssetModel, readings: int) -> AssetRun:
    """Step ``model`` ``readings`` times (see the module docstring)."""
    steps: list[AssetStep] = [model.step() for _ in range(readings)]
    faults = [f for s in steps for f in s.ended] + model.stop()
    faults.sort(key=lambda f: (f.start_k, f.asset))
    n, k = model.n, model.kind.k
    t = np.stack([s.t for s in steps]) if steps else np.zeros((0, n))
    values = np.stack([s.values for s in steps]) if steps else np.zeros((0, n, k))
    fault = np.stack([s.fault for s in steps]) if steps else np.zeros((0, n), np.int64)
    return AssetRun(model.ids, model.sensor_names, model.fault_names, t, values, fault, faults)


def fault_label(model: AssetModel, fault: AssetFault, started_at: float) -> Label:
    """The labels file's line for an ended fault: the asset's id, its first and last reading's
    epoch times, the sensors it moves."""
    end_k = fault.start_k if fault.end_k is None else fault.end_k
    asset = model.ids[fault.asset]
    start = round(started_at + model.time_of(fault.asset, fault.start_k), 3)
    end = round(started_at + model.time_of(fault.asset, end_k), 3)
    return Label(asset, fault.kind, start, end, asset=asset, sensors=fault.sensors)


class AssetCsv(Closing):
    """One CSV file per asset in ``directory`` (``{asset}.csv``); with ``follow`` each reading
    is flushed as it is written, so the files can be followed while the simulator runs."""

    def __init__(self, directory: Path, model: AssetModel, *, follow: bool = True) -> None:
        self.directory = directory
        self.follow = follow
        self._decimals = [s.decimals for s in model.kind.sensors]
        self.paths = [directory / f"{a}.csv" for a in model.ids]
        self._files: list[IO[str]] = []
        header = ",".join(["timestamp", *model.sensor_names, LABEL_COLUMN]) + "\n"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for p in self.paths:
                fh = p.open("w", newline="")
                self._files.append(fh)
                fh.write(header)
        except OSError as exc:
            self.close()
            raise ConfigError(f"--csv {directory}: {exc.strerror or exc}") from exc
        self.rows = 0

    def write(self, ts: FloatArray, values: FloatArray, fault: IntArray) -> None:
        """One reading of every asset: epoch ``ts`` ``(n,)``, ``values`` ``(n, sensors)``."""
        decimals = self._decimals
        for fh, t, row, f in zip(
            self._files, ts.tolist(), values.tolist(), fault.tolist(), strict=True
        ):
            cells = [f"{v:.{d}f}" for v, d in zip(row, decimals, strict=True)]
            fh.write(f"{t:.3f},{','.join(cells)},{int(f >= 0)}\n")
            if self.follow:
                fh.flush()
        self.rows += 1

    def close(self) -> None:
        for fh in self._files:
            fh.close()
        self._files = []

"""``bench --only assets``: asset rows per second on one core, bytes of state per asset.

Everything runs in this process on one core, no broker: the cost of the work, not of the
network. Assets of 8 sensors (the simulator's pump) are commissioned on normal rows, then
timed in monitoring (CPU time, best of ``repeat``):

- **detector**: the default asset detector's (``assets.method``)
  :meth:`~mqtt_anomaly.mvdetectors.AssetDetector.update` on every asset at once, one row each
  per call;
- **pipeline, one message per asset row**: ``Pipeline.process`` on MQTT messages of a
  ``factory/{asset}`` mapping rule with the 8 values in one JSON payload (a PLC's message), the
  baseline the same messages with assets off (``assets.template = ""``), so the ratio is what
  the assets cost on top of decoding and the per-sensor detectors;
- **pipeline, one message per sensor**: ``factory/{asset}/{sensor}``, 8 messages a row, and
  its baseline.

State: the detector's fixed arrays per asset (:meth:`AssetDetector.bytes_per_asset`) and the
saved state file of the pipeline's assets divided by their number (layout included).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import msgspec
import numpy as np

from .. import statefile
from ..config import AssetSettings, Settings
from ..mvdetectors.offline import create
from ..pipeline import Pipeline
from ..simulate.assets import AssetModel

SENSORS = 8
COMMISSION = 400


def _rows(assets: int, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` normal rows of ``assets`` simulated pumps: ``(n, assets, 8)``."""
    model = AssetModel("pump", assets, interval=1.0, seed=seed, rates={})
    out = np.empty((n, assets, SENSORS))
    for k in range(n):
        out[k] = model.step().values
    return model.sensor_names, out


def _cpu(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _settings(per_sensor: bool, names: list[str], assets_on: bool) -> Settings:
    if per_sensor:
        rule: dict[str, Any] = {
            "topic": "factory/{asset}/{sensor}",
            "value": "$.v",
            "timestamp": "$.ts",
        }
    else:
        rule = {
            "topic": "factory/{asset}",
            "values": {n: f"$.{n}" for n in names},
            "timestamp": "$.ts",
        }
    return Settings.model_validate(
        {
            "mapping": {"rules": [rule]},
            "service": {"max_sensors": 1_000_000},
            "assets": {"commission_rows": COMMISSION, **({} if assets_on else {"template": ""})},
        }
    )


def _messages(
    per_sensor: bool, ids: list[str], names: list[str], rows: np.ndarray, t0: float
) -> list[list[tuple[str, bytes, float]]]:
    """One batch per row of every asset."""
    enc = msgspec.json.encode
    batches = []
    for k, row in enumerate(rows):
        ts = t0 + k
        batch: list[tuple[str, bytes, float]] = []
        for i, asset in enumerate(ids):
            if per_sensor:
                batch += [
                    (f"factory/{asset}/{n}", enc({"v": float(row[i, j]), "ts": ts}), ts)
                    for j, n in enumerate(names)
                ]
            else:
                doc = {n: float(row[i, j]) for j, n in enumerate(names)}
                batch.append((f"factory/{asset}", enc({**doc, "ts": ts}), ts))
        batches.append(batch)
    return batches


def _feeder(p: Pipeline, runs: Iterator[list[list[tuple[str, bytes, float]]]]) -> Any:
    """One timed pass: the next unseen rows (each pass is new data, in time order)."""

    def go() -> None:
        for b in next(runs):
            p.process(b)

    return go


def _pipeline(
    per_sensor: bool, assets: int, names: list[str], rows: np.ndarray, timed: int, repeat: int
) -> dict[str, Any]:
    ids = [f"PUMP-{i:04d}" for i in range(assets)]
    warm = _messages(per_sensor, ids, names, rows[:COMMISSION], 1.7e9)
    out: dict[str, Any] = {}
    for on in (True, False):
        p = Pipeline(_settings(per_sensor, names, on))
        for b in warm:
            p.process(b)
        k = COMMISSION
        timed_batches = []
        for _ in range(repeat):
            timed_batches.append(_messages(per_sensor, ids, names, rows[k : k + timed], 1.7e9 + k))
            k += timed
        cpu = _cpu(_feeder(p, iter(timed_batches)), repeat)
        key = "assets" if on else "baseline"
        out[f"{key}_rows_per_s"] = round(assets * timed / cpu)
        if on:
            out["monitoring"] = p.assets.monitoring()
            with TemporaryDirectory() as wd:
                path = Path(wd) / "assets.mqas"
                statefile.dump(path, {"assets": p.assets.state_dict()}, sync=False)
                out["state_file_bytes_per_asset"] = round(path.stat().st_size / assets)
    out["ratio"] = round(out["assets_rows_per_s"] / out["baseline_rows_per_s"], 3)
    return out


def measure(assets: int = 200, timed: int = 50, repeat: int = 3) -> dict[str, Any]:
    """The asset figures (see the module docstring)."""
    names, rows = _rows(assets, COMMISSION + timed * repeat, seed=7)
    method = AssetSettings().method
    det = create(SENSORS, method, commission_rows=COMMISSION)
    slots = np.arange(assets, dtype=np.intp)
    for k in range(COMMISSION):
        det.update(slots, rows[k])
    mon = rows[COMMISSION:]

    def detector_pass() -> None:
        for k in range(len(mon)):
            det.update(slots, mon[k])

    cpu = _cpu(detector_pass, repeat)
    return {
        "assets": assets,
        "method": method,
        "sensors_per_asset": SENSORS,
        "detector_rows_per_s": round(assets * len(mon) / cpu),
        "state_bytes_per_asset": det.bytes_per_asset(),
        "message_per_row": _pipeline(False, assets, names, rows, timed, repeat),
        "message_per_sensor": _pipeline(True, assets, names, rows, timed, repeat),
    }


if __name__ == "__main__":  # pragma: no cover - a quick look by hand
    print(msgspec.json.encode(measure()).decode())

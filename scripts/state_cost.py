"""Time saving and loading the detector state: the state file against pickle.

    .venv/bin/python scripts/state_cost.py [SENSORS ...]

Builds a pipeline with the default detectors and SENSORS sensors (default 1,000 and
100,000) with full dedup windows, then times, best of 5: the snapshot (``state_dict``), the
state file's encode + write, its read + decode, and ``pickle`` dump and load of the same tree.
"""

from __future__ import annotations

import pickle
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mqtt_anomaly import statefile
from mqtt_anomaly.config import load_settings
from mqtt_anomaly.pipeline import Pipeline


def pipeline(n: int) -> Pipeline:
    pipe = Pipeline(load_settings(None, {"service": {"max_sensors": max(n, 1)}}))
    t0 = 1.7e9
    batch = [
        (
            f"factory/S{i:06d}/temperature",
            b'{"sensor_id": "S%06d", "value": %d, "ts": %f, "unit": "C", "seq": 1}'
            % (i, i % 50, t0),
            t0,
        )
        for i in range(n)
    ]
    pipe.process(batch)
    assert len(pipe.sensor_ids) == n
    rng = random.Random(1)
    pipe.seq.top = [5000] * n
    pipe.seq.mask = [rng.getrandbits(1024) | (1 << 1023) for _ in range(n)]  # full windows
    return pipe


def best(fn: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def row(n: int, path: Path, pkl: Path) -> str:
    pipe = pipeline(n)
    snap = pipe.state_dict()
    copy = best(pipe.state_dict)
    save = best(lambda: statefile.dump(path, snap, sync=False))
    load = best(lambda: statefile.load(path))

    def pdump() -> None:
        with pkl.open("wb") as fh:
            pickle.dump(snap, fh, protocol=pickle.HIGHEST_PROTOCOL)

    pdump_ms = best(pdump)
    pload_ms = best(lambda: pickle.loads(pkl.read_bytes()))
    assert Pipeline(pipe.settings).load_state_dict(statefile.load(path)) == []
    return (
        f"{n:>7} sensors: snapshot {copy:6.2f} ms | state file save {save:6.2f} ms, "
        f"load {load:6.2f} ms, {path.stat().st_size / 1e6:5.1f} MB | pickle dump "
        f"{pdump_ms:6.2f} ms, load {pload_ms:6.2f} ms, {pkl.stat().st_size / 1e6:5.1f} MB"
    )


def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            print(row(n, Path(tmp) / "state", Path(tmp) / "state.pkl"))


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 100_000])

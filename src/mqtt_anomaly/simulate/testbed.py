"""Exports shaped like a pump testbed's: one experiment a file, one fault an experiment.

A public pump testbed's exports have this shape: 8 sensors, a reading a second, 1,000-1,200
rows a file, ``;`` as the delimiter, a ``datetime`` column, an ``anomaly`` column and a
``changepoint`` column (1 where a fault starts and where it ends), the first 400 rows normal
(the commissioning), then one fault that starts some rows later and lasts a long part of the
file (about half of the rows after the commissioning). :func:`write_testbed` writes such
files from the machine simulator (:mod:`.assets`, ``pump`` by default: physical faults), each
file its own machine and seed, the faults taken in turn from the kind's faults. Score them as
a plant's export::

    python -m mqtt_anomaly.simulate.testbed DIR --files 16 --seed 100
    mqtt-anomaly evaluate csv DIR/*.csv --train-rows 400 --exclude-column changepoint

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     files = write_testbed(Path(d), files=2, seed=3)
...     lines = files[0].read_text().splitlines()
>>> lines[0].split(";")[:3], lines[0].split(";")[-2:], 1000 <= len(lines) - 1 <= 1200
(['datetime', 'flow', 'suction_pressure'], ['anomaly', 'changepoint'], True)
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .assets import AssetModel
from .plant import generate
from .signals import rng_for

TESTBED_STREAM = 12
COMMISSION = 400  # normal rows at the start of every file
START = datetime(2020, 3, 9, 10, 0, 0, tzinfo=UTC)


def write_testbed(
    directory: Path, *, files: int, seed: int, kind: str = "pump", commission: int = COMMISSION
) -> list[Path]:
    """Write ``files`` experiment files into ``directory`` (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = rng_for(seed, TESTBED_STREAM)
    out: list[Path] = []
    for n in range(files):
        rows = int(rng.integers(1000, 1201))
        scored = rows - commission
        # the fault: a long part of the rows after the commissioning, ending before the end
        length = round(scored * rng.uniform(0.45, 0.65))
        tail = int(rng.integers(0, max(scored // 8, 1)))
        start = max(commission + 30, rows - tail - length)
        model = AssetModel(
            kind, 1, interval=1.0, seed=seed * 1000 + n, rates={}, warmup=float(commission)
        )
        fault = model.fault_names[n % len(model.fault_names)]
        model.inject(fault, asset=0, at=float(start), duration=float(length))
        run = generate(model, rows)
        anomaly = run.labels[:, 0].astype(int)
        change = np.zeros(rows, dtype=int)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], anomaly, [0]))))
        change[np.minimum(edges, rows - 1)] = 1
        decimals = [s.decimals for s in model.kind.sensors]
        path = directory / f"{n:02d}-{fault}.csv"
        with path.open("w", newline="") as fh:
            fh.write(";".join(["datetime", *run.sensors, "anomaly", "changepoint"]) + "\n")
            for k in range(rows):
                when = datetime.fromtimestamp(START.timestamp() + 86400 * n + k, UTC)
                cells = [f"{v:.{d}f}" for v, d in zip(run.values[k, 0], decimals, strict=True)]
                stamp = when.strftime("%Y-%m-%d %H:%M:%S")
                fh.write(f"{stamp};{';'.join(cells)};{anomaly[k]};{change[k]}\n")
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a command by hand
    p = argparse.ArgumentParser(prog="python -m mqtt_anomaly.simulate.testbed")
    p.add_argument("directory", type=Path)
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--kind", default="pump")
    a = p.parse_args(argv)
    paths = write_testbed(a.directory, files=a.files, seed=a.seed, kind=a.kind)
    print(f"{len(paths)} files in {a.directory}")


if __name__ == "__main__":  # pragma: no cover
    main()

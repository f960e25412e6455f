"""Time `Journal.append`: the intake journal's cost per reading, without and with fsync.

    .venv/bin/python scripts/journal_cost.py [BATCH] [DIR]

Appends batches of BATCH JSON readings (default 500, about one network read under load) to a
journal in a temporary directory under DIR (default: the current directory, so the disk the
state dir would be on) and prints the best of 5 passes per batch and per reading.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import msgspec

from mqtt_anomaly.journal import Journal


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    where = sys.argv[2] if len(sys.argv) > 2 else "."
    batch = []
    for i in range(size):
        sid = f"S{i % 1000:05d}"
        payload = {"sensor_id": sid, "ts": 1.7e9 + i, "value": 20.0, "seq": i}
        batch.append((f"factory/{sid}/temperature", msgspec.json.encode(payload), 1.7e9))
    for fsync in (False, True):
        with tempfile.TemporaryDirectory(dir=where) as d, Journal(Path(d), fsync=fsync) as j:
            n = 50 if fsync else 200
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(n):
                    j.append(batch)
                best = min(best, (time.perf_counter() - started) / n)
        print(
            f"fsync {'on ' if fsync else 'off'}: {best * 1e3:.3f} ms per batch of {size}, "
            f"{best / size * 1e6:.3f} µs per reading"
        )


if __name__ == "__main__":
    main()

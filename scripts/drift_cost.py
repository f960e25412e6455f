"""What the drift books cost per reading: `Pipeline.process` with and without them, interleaved.

    .venv/bin/python scripts/drift_cost.py [SENSORS] [READINGS_PER_SENSOR] [BATCH] [PASSES]

The readings of `scripts/pipeline_cost.py` (default 1,000 sensors × 100 readings, in order,
with seq, batches of 500), fed to fresh pipelines with the default detectors, one pass with the
drift books and one with them replaced by a book that does nothing, alternately, PASSES
times (default 15). On a shared machine the two trees of `pipeline_cost.py` run minutes apart
under other load; passes interleaved in one process see the same load. Prints the minimum and
median CPU time per reading of each and the difference of the minima.

With 100 readings per sensor every sensor is in its warm-up; with more than ``warmup +
min_readings`` (600 by default) per sensor most readings are scored once commissioned, the
usual case of a running service (e.g. ``500 1500 500``).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import msgspec

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.pipeline import Pipeline


class NoDrift:
    """A drift book that does nothing (the pipeline without drift)."""

    def admit(self, slot: int) -> None:
        return None

    def reset(self, slot: int) -> None:
        return None

    def update(self, *args: Any) -> None:
        return None


def main() -> None:
    sensors = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    per_sensor = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    passes = int(sys.argv[4]) if len(sys.argv) > 4 else 15
    t0 = 1.7e9
    messages = []
    for k in range(per_sensor):
        for i in range(sensors):
            sid = f"S{i:05d}"
            payload = {"sensor_id": sid, "ts": t0 + k, "value": 20.0 + (i % 7) * 0.1, "seq": k + 1}
            messages.append((f"factory/{sid}/temperature", msgspec.json.encode(payload), t0 + k))
    settings = load_settings(None, {"service": {"max_sensors": max(sensors, 1)}})
    times: dict[str, list[float]] = {"with drift": [], "without": []}
    for _ in range(passes):
        for mode, runs in times.items():
            pipeline = Pipeline(settings)
            if mode == "without":
                pipeline.drift = NoDrift()  # type: ignore[assignment]
            started = time.process_time()
            for j in range(0, len(messages), batch):
                pipeline.process(messages[j : j + batch])
            runs.append(time.process_time() - started)
    n = len(messages)
    best = {}
    for mode, runs in times.items():
        best[mode] = min(runs) / n * 1e6
        median = statistics.median(runs) / n * 1e6
        print(f"{mode:>10}: min {best[mode]:.3f} µs per reading, median {median:.3f}")
    extra = best["with drift"] - best["without"]
    print(
        f"{n:,} readings, batches of {batch}: drift adds {extra:.3f} µs per reading "
        f"({extra / best['without'] * 100:+.1f} %)"
    )


if __name__ == "__main__":
    main()

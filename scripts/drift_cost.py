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

Then the time of one model health report (what ``GET /api/models/health`` and a Prometheus
scrape compute) over 200,000 commissioned sensors: best of 5, wall clock.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import msgspec
import numpy as np

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.drift import DriftBook
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


def report_cost(n: int = 200_000) -> None:
    book = DriftBook(load_settings(None, {"drift": {"warmup": 0, "min_readings": 50}}).drift)
    for slot in range(n):
        book.admit(slot)
    rng = np.random.default_rng(0)
    slots = np.arange(n)
    for k in range(60):  # commissioned after 50
        book.update(slots, rng.uniform(0, 0.1, n), np.full(n, 1.7e9 + k))
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        report = book.report(1.7e9 + 60, n)
        best = min(best, time.perf_counter() - started)
    assert report.learning == 0
    print(f"model health report of {n:,} sensors: {best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
    report_cost()

"""Time `Pipeline.process` on a steady fleet: the cost of the processing core per reading.

    .venv/bin/python scripts/pipeline_cost.py [SENSORS] [READINGS_PER_SENSOR] [BATCH]

Builds JSON readings (default 1,000 sensors × 100 readings, in order, with seq) and feeds them
to a fresh pipeline with the default detectors in batches of BATCH messages (default 500, about
one network read under load). Prints the minimum and median CPU time (`time.process_time`) of
15 passes. To compare two trees, run it with each on PYTHONPATH, alternately.
"""

from __future__ import annotations

import sys
import time

import msgspec

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.pipeline import Pipeline


def main() -> None:
    sensors = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    per_sensor = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    t0 = 1.7e9
    messages = []
    for k in range(per_sensor):
        for i in range(sensors):
            sid = f"S{i:05d}"
            payload = {"sensor_id": sid, "ts": t0 + k, "value": 20.0 + (i % 7) * 0.1, "seq": k + 1}
            messages.append((f"factory/{sid}/temperature", msgspec.json.encode(payload), t0 + k))
    times = []
    for _ in range(15):
        pipeline = Pipeline(load_settings(None, {"service": {"max_sensors": max(sensors, 1)}}))
        started = time.process_time()
        for j in range(0, len(messages), batch):
            pipeline.process(messages[j : j + batch])
        times.append(time.process_time() - started)
    times.sort()
    n = len(messages)
    print(
        f"{n:,} readings, batches of {batch}: min {times[0] * 1e3:.1f} ms "
        f"({times[0] / n * 1e6:.2f} µs per reading), median {times[7] * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()

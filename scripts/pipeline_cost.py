"""Time `Pipeline.process` on a steady fleet: the cost of the processing core per reading.

    .venv/bin/python scripts/pipeline_cost.py [SENSORS] [READINGS_PER_SENSOR] [BATCH] [shadow]

Builds JSON readings (default 1,000 sensors × 100 readings, in order, with seq) and feeds them
to a fresh pipeline with the default detectors in batches of BATCH messages (default 500, about
one network read under load). Prints the minimum and median CPU time (`time.process_time`) of
15 passes. To compare two trees, run it with each on PYTHONPATH, alternately. With ``shadow``,
a shadow candidate (the default detectors, ``zscore`` with ``alpha = 0.05``) scores beside
the pipeline, as ``[shadow]`` does in the service (its alerts to nowhere).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import msgspec

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.pipeline import Output, Pipeline


def main() -> None:
    sensors = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    per_sensor = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    shadow = len(sys.argv) > 4 and sys.argv[4] == "shadow"
    t0 = 1.7e9
    messages = []
    for k in range(per_sensor):
        for i in range(sensors):
            sid = f"S{i:05d}"
            payload = {"sensor_id": sid, "ts": t0 + k, "value": 20.0 + (i % 7) * 0.1, "seq": k + 1}
            messages.append((f"factory/{sid}/temperature", msgspec.json.encode(payload), t0 + k))
    times = []
    for _ in range(15):
        settings = load_settings(None, {"service": {"max_sensors": max(sensors, 1)}})
        pipeline = Pipeline(settings)
        after: Callable[[Output], None] = lambda _out: None  # noqa: E731
        if shadow:
            from mqtt_anomaly.config import ShadowSettings
            from mqtt_anomaly.shadow import ShadowRun

            candidate = {"enabled": True, "detector": {"params": {"zscore": {"alpha": 0.05}}}}
            run = ShadowRun(
                pipeline,
                settings.model_copy(update={"shadow": ShadowSettings(**candidate)}),
                publish=lambda _topic, _payload: None,
            )
            run.attach()
            after = run.after
        started = time.process_time()
        for j in range(0, len(messages), batch):
            after(pipeline.process(messages[j : j + batch]))
        times.append(time.process_time() - started)
    times.sort()
    n = len(messages)
    print(
        f"{n:,} readings, batches of {batch}: min {times[0] * 1e3:.1f} ms "
        f"({times[0] / n * 1e6:.2f} µs per reading), median {times[7] * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()

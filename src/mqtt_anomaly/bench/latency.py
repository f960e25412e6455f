"""Publish-to-alert latency at a fixed rate, with spikes injected.

The publisher sends readings at ``rate`` (QoS ``qos``) and a 98.2 °C spike every
``spike_every`` readings; the service raises an alert for each spike and publishes it (QoS 1).
Two figures per spike:

- **publish → alert received** (the headline): time the first raised alert for the spike
  reached a subscriber on ``factory/+/alerts`` in the publisher's process, minus the
  reading's ``ts``, which the publisher set just before writing it — one clock, one process;
- **publish → detection**: time the service's pipeline produced the alert (its listener runs
  right after the batch is scored and the alert is handed to the MQTT client), minus ``ts``.

Before it, in the same run, the **harness floor**: the same publisher and the same subscriber,
no detector; the subscriber is on the readings topic and times each reading's own arrival
(publisher → broker → subscriber). ``floor_*``: over the spike readings (the same selection
as the alerts); ``floor_all_*``: over every reading; ``over_floor_*``: the service's figure
minus the floor's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .loadgen import spike_period
from .throughput import Env, Step, consumer, wait_for_profile

METHOD = (
    "alert arrival at a QoS 1 subscriber on factory/+/alerts in the publisher's process "
    "minus the reading's ts (set by the publisher just before the write); same clock"
)


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    """p50 / p99 / p99.9 / max in milliseconds (None when there are no samples)."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    arr = np.asarray(values) * 1000.0
    p50, p99, p999 = np.percentile(arr, [50, 99, 99.9])
    return {
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "p999_ms": round(float(p999), 3),
        "max_ms": round(float(arr.max()), 3),
    }


def run(
    env: Env, qos: int, rate: float, seconds: float, spikes_per_s: float, step: Step
) -> dict[str, Any]:
    """One fixed-rate run into a fresh service; latency percentiles and service CPU."""
    step(f"latency QoS {qos} at {rate:,.0f} readings/s")
    every = spike_period(rate, spikes_per_s, env.fleet.sensors)
    profile = None
    if env.profile_dir:
        profile = str(Path(env.profile_dir) / f"service-latency-qos{qos}-{time.time_ns()}.txt")
    env.publisher.send("paced", qos, rate, seconds, every, "readings")
    floor = env.publisher.expect("result", seconds + 60)
    child = consumer(env, "service", None, profile=profile)
    try:
        env.publisher.send("paced", qos, rate, seconds, every)
        pub = env.publisher.expect("result", seconds + 60)
        child.send("stop")
        res = child.expect("result", 60)
    finally:
        child.close()
    detections = {(s, ts): lat for s, ts, lat in res["detections"]}
    service_lat = [detections[k] for k in map(tuple, pub["spike_keys"]) if k in detections]
    alert_lat = pub["latencies"]
    served = {f"service_{k}": v for k, v in percentiles_ms(service_lat).items()}
    alerted = percentiles_ms(alert_lat)
    floored = percentiles_ms(floor["latencies"])
    over = {
        f"over_floor_{k}": None
        if alerted[k] is None or floored[k] is None
        else round(alerted[k] - floored[k], 3)  # type: ignore[operator]
        for k in ("p50_ms", "p99_ms", "p999_ms")
    }
    cpu_us = res["cpu_s"] / max(res["count"], 1) * 1e6
    return {
        "qos": qos,
        "rate": rate,
        "achieved_rate": round(pub["rate"], 1),
        "seconds": round(pub["seconds"], 2),
        "spike_every": every,
        "spikes": pub["spikes"],
        "samples": len(alert_lat),
        **alerted,
        **served,
        "floor_spikes": floor["spikes"],
        "floor_samples": len(floor["latencies"]),
        "floor_achieved_rate": round(floor["rate"], 1),
        **{f"floor_{k}": v for k, v in floored.items()},
        **{f"floor_all_{k}": v for k, v in percentiles_ms(floor["all_latencies"]).items()},
        **over,
        "service_cpu_percent": round(100.0 * res["cpu_s"] / max(pub["seconds"], 1e-9), 1),
        "service_cpu_s_per_10k": round(cpu_us / 100, 4),
        "service_readings_per_batch": round(res["readings_per_batch"], 2),
        "method": METHOD,
        "profile": wait_for_profile(Path(profile), cpu_us) if profile else None,
    }

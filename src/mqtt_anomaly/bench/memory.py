"""Memory per sensor and per-reading cost as the fleet grows: the pipeline fed directly.

No broker: a fresh process builds one :class:`~mqtt_anomaly.pipeline.Pipeline` with the
user's detector settings and feeds it the payloads sensors publish. For each fleet size:

- grow the fleet to that size (one reading per new sensor), collect garbage, read RSS;
- time ``pipeline.process`` on batches of 1,000 readings from distinct random sensors
  (process CPU time, input built before the clock starts): µs per reading.

Then **aged**: every sensor's duplicate window is filled as after 4,096 readings (what a sensor
that has run for a while carries), RSS and cost measured again at the largest size.

Reported: RSS growth per sensor between the smallest and the largest fleet (fresh and aged),
detector state bytes per sensor (the detectors' and alert books' per-slot arrays), the drift
books' bytes per sensor, and the per-reading cost at each size.
"""

from __future__ import annotations

import gc
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from .children import quiet_child, report_errors
from .sysinfo import rss_bytes

BATCH = 1000
_BOOK_FIELDS = ("active", "critical", "above", "below")


def memory_main(
    conn: Connection, workdir: str, sizes: list[int], timed: int, config: str | None
) -> None:
    """The memory measurement's process."""
    quiet_child(workdir, "memory")
    report_errors(conn, "memory", lambda: measure(sizes, timed, config))


class _Feeder:
    """Readings as sensors publish them, with per-sensor ``seq``."""

    def __init__(self, pipeline: Any) -> None:
        from ..messages import Reading, encode

        self.topic = pipeline.readings_topic
        self.reading = Reading
        self.encode = encode
        self.seq: list[int] = []
        self.ids: list[str] = []
        self.rng = np.random.default_rng(7)

    def grow(self, n: int) -> None:
        while len(self.ids) < n:
            self.ids.append(f"SENSOR-{len(self.ids) + 1:06d}")
            self.seq.append(0)

    def batch(self, slots: list[int]) -> list[tuple[str, bytes, float]]:
        now = time.time()
        out = []
        for s in slots:
            self.seq[s] += 1
            sid = self.ids[s]
            value = round(25.0 + float(self.rng.normal(0.0, 0.5)), 2)
            payload = self.encode(self.reading(sid, now, value, "C", self.seq[s]))
            out.append((self.topic.format(sid), payload, now))
        return out


def _rss_after_gc() -> int:
    gc.collect()
    return rss_bytes()


def _cost_us(pipeline: Any, feed: _Feeder, size: int, timed: int, repeat: int = 3) -> float:
    """CPU µs per reading: ``timed`` readings in batches of distinct random sensors, built
    before the clock starts; best of ``repeat`` passes (each with new readings)."""
    per = min(BATCH, size)
    best = float("inf")
    for _ in range(repeat):
        batches = [
            feed.batch(feed.rng.choice(size, per, replace=False).tolist())
            for _ in range(max(1, timed // per))
        ]
        n = sum(len(b) for b in batches)
        gc.collect()
        t0 = time.process_time()
        for b in batches:
            pipeline.process(b)
        best = min(best, (time.process_time() - t0) / n * 1e6)
        del batches
    return best


def _age(pipeline: Any) -> int:
    """Fill every sensor's duplicate window, as after 4,096 readings; bytes per window."""
    from ..pipeline import SEQ_WINDOW

    full = (1 << SEQ_WINDOW) - 1
    window = pipeline.seq
    window.mask = [full - (i & 1) for i in range(len(window.mask))]
    return sys.getsizeof(full) + sys.getsizeof(1 << 40)


def measure(sizes: list[int], timed: int, config: str | None = None) -> dict[str, Any]:
    """Grow a pipeline through ``sizes`` sensors; RSS and per-reading cost at each size."""
    from ..config import load_settings
    from ..pipeline import Pipeline

    settings = load_settings(
        Path(config) if config else None,
        {"service": {"max_sensors": max(sizes)}, "store": {"url": "none://"}},
    )
    pipeline = Pipeline(settings)
    feed = _Feeder(pipeline)
    rows: list[dict[str, Any]] = []
    base_rss = _rss_after_gc()
    for size in sorted(sizes):
        have = len(feed.ids)
        feed.grow(size)
        for lo in range(have, size, BATCH):
            pipeline.process(feed.batch(list(range(lo, min(size, lo + BATCH)))))
        rss = _rss_after_gc()
        cost = _cost_us(pipeline, feed, size, timed)
        rows.append({"sensors": size, "rss_mib": round(rss / 2**20, 2), "us_per_reading": cost})
    largest = max(sizes)
    window_bytes = _age(pipeline)
    aged_rss = _rss_after_gc()
    aged_cost = _cost_us(pipeline, feed, largest, timed)
    first, last = rows[0], rows[-1]
    span = last["sensors"] - first["sensors"]
    per_sensor = (last["rss_mib"] - first["rss_mib"]) * 2**20 / span if span else 0.0
    aged_per_sensor = (aged_rss - first["rss_mib"] * 2**20) / span if span else 0.0
    # a row per sensor: a table field (a profile, a hashed context table) counts whole
    det = sum(a.itemsize * a[:1].size for d in pipeline.detectors for a in d.state.values())
    books = sum(getattr(b, f).itemsize for b in pipeline.books.values() for f in _BOOK_FIELDS)
    for r in rows:
        r["us_per_reading"] = round(r["us_per_reading"], 3)
    return {
        "sizes": rows,
        "rss_bytes_per_sensor": round(per_sensor),
        "rss_bytes_per_sensor_aged": round(aged_per_sensor),
        "aged_us_per_reading": round(aged_cost, 3),
        "detector_state_bytes_per_sensor": det + books,
        "detector_arrays_bytes_per_sensor": det,
        "alert_book_bytes_per_sensor": books,
        "drift_state_bytes_per_sensor": pipeline.drift.bytes_per_sensor(),
        "dedup_window_bytes_per_sensor_aged": window_bytes,
        "cost_growth": round(last["us_per_reading"] / first["us_per_reading"], 3),
        "base_rss_mib": round(base_rss / 2**20, 2),
        "detectors": [d.name for d in pipeline.detectors],
    }

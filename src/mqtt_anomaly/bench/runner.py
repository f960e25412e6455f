"""The library entry point: :func:`run_bench` runs the selected measurements in order.

Order: memory (no broker), then throughput per QoS, latency per QoS, and the HTTP comparison,
all against one broker (a private Mosquitto unless ``broker`` is given) and one publisher
process. Everything temporary lives in one directory, removed at the end.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..config import load_settings
from . import httpcompare, latency, throughput
from .broker import Mosquitto
from .children import Child
from .loadgen import Fleet, publisher_main
from .memory import memory_main
from .payloads import baseline_filters
from .report import targets
from .sysinfo import machine

SECTIONS = ("memory", "throughput", "latency", "delivery", "http", "assets")
Step = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to measure and how big; :meth:`quick` is the smoke size."""

    broker: str | None = None
    broker_nodelay: bool = False  # the private Mosquitto: stock (Nagle on); True: set_tcp_nodelay
    broker_inflight: int = 0  # the private Mosquitto's max_inflight_messages (stock: 20)
    sensors: int = 1000
    readings: int = 100_000
    pairs: int = 3
    rate: float = 0.0  # throughput trials: 0 = flat out
    qos: tuple[int, ...] = (1, 0)
    store: str = "sqlite"  # a fresh SQLite file per service process; or a store URL
    config: str | None = None
    latency_rate: float = 5000.0
    latency_seconds: float = 6.0
    spikes_per_s: float = 100.0
    memory_sizes: tuple[int, ...] = (1000, 10_000, 100_000)
    memory_timed: int = 50_000
    sections: tuple[str, ...] = ("memory", "throughput", "latency", "delivery")
    http_sensors: int = 100
    http_hz: float = 10.0
    http_seconds: float = 15.0
    http_spikes_per_s: float = 5.0
    quick: bool = False
    profile_dir: str | None = None  # record each service process with py-spy into this dir
    payload: str = "flat"  # the throughput workload: flat, nested-json, sparkplug (payloads.py)

    def quick_size(self) -> BenchOptions:
        """The smoke size: every measurement, seconds each."""
        return replace(
            self,
            sensors=200,
            readings=20_000,
            pairs=1,
            latency_seconds=2.0,
            spikes_per_s=50.0,
            memory_sizes=(1000, 5000),
            memory_timed=10_000,
            http_sensors=20,
            http_seconds=3.0,
            quick=True,
        )


def _nothing(_: str) -> None:
    return None


def run_bench(opts: BenchOptions, step: Step = _nothing) -> dict[str, Any]:
    """Run the measurements ``opts.sections`` names; the result as plain data (JSON-ready)."""
    t0 = time.monotonic()
    load_start = os.getloadavg()[0]
    info = machine()
    result: dict[str, Any] = {
        "version": 1,
        "machine": info,
        "config": {
            **{k: v for k, v in asdict(opts).items() if k not in ("broker", "store")},
            "broker": opts.broker
            or f"private Mosquitto {info['mosquitto']} on loopback, "
            + (
                "set_tcp_nodelay true (--broker-nodelay)"
                if opts.broker_nodelay
                else "stock settings: Nagle on (no set_tcp_nodelay)"
            )
            + f", max_inflight_messages {opts.broker_inflight}",
            "store": opts.store,
        },
        "throughput": [],
        "latency": [],
        "memory": None,
        "delivery": None,
        "http_comparison": None,
        "assets": None,
    }
    with tempfile.TemporaryDirectory(prefix="mqtt-anomaly-bench-") as wd:
        if "memory" in opts.sections:
            step("memory and per-reading cost by fleet size (no broker)")
            child = Child(
                "memory", memory_main, wd, list(opts.memory_sizes), opts.memory_timed, opts.config
            )
            try:
                result["memory"] = child.expect("result", 600)
            finally:
                child.close()
        if set(opts.sections) & {"throughput", "latency", "delivery", "http"}:
            _with_broker(opts, wd, result, step)
        if "assets" in opts.sections:
            step("assets: rows/s on one core and state per asset (no broker)")
            from .assets import measure as measure_assets

            result["assets"] = measure_assets(
                assets=50 if opts.quick else 200, timed=20 if opts.quick else 50
            )
    result["targets"] = targets(result)
    result["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
    result["duration_s"] = round(time.monotonic() - t0, 1)
    return result


def _with_broker(opts: BenchOptions, wd: str, result: dict[str, Any], step: Step) -> None:
    broker = (
        None
        if opts.broker
        else Mosquitto(
            Path(wd) / "broker", nodelay=opts.broker_nodelay, max_inflight=opts.broker_inflight
        )
    )
    if broker is not None:
        broker.start()
    try:
        url = opts.broker or (broker.url if broker else "")
        settings = load_settings(Path(opts.config) if opts.config else None)
        topics = settings.topics
        fleet = Fleet(opts.sensors, topics.readings, topics.alerts, payload=opts.payload)
        publisher = Child("publisher", publisher_main, url, fleet)
        env = throughput.Env(
            url=url,
            workdir=wd,
            publisher=publisher,
            fleet=fleet,
            filters=baseline_filters(opts.payload, topics.filters),
            store_url=opts.store,
            config=opts.config,
            max_sensors=opts.sensors if opts.sensors > settings.service.max_sensors else None,
            broker_pid=broker.pid if broker else None,
            profile_dir=opts.profile_dir,
        )
        try:
            if "throughput" in opts.sections:
                for qos in opts.qos:
                    result["throughput"].append(
                        throughput.run(env, qos, opts.readings, opts.pairs, opts.rate, step)
                    )
            if "latency" in opts.sections:
                for qos in opts.qos:
                    result["latency"].append(
                        latency.run(
                            env,
                            qos,
                            opts.latency_rate,
                            opts.latency_seconds,
                            opts.spikes_per_s,
                            step,
                        )
                    )
            if "delivery" in opts.sections:
                result["delivery"] = throughput.run_delivery(env, opts.readings, opts.pairs, step)
            if "http" in opts.sections:
                result["http_comparison"] = httpcompare.run(
                    env,
                    opts.http_sensors,
                    opts.http_hz,
                    opts.http_seconds,
                    opts.http_spikes_per_s,
                    step,
                )
        finally:
            publisher.send("quit")
            publisher.close()
    finally:
        if broker is not None:
            broker.stop()

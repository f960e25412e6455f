"""Throughput: the service against the counting baseline, alternated in one run.

A trial starts a fresh consumer process (baseline or service), waits until it is subscribed,
has the publisher write ``n`` pre-encoded readings flat out, and waits until the consumer has
counted (baseline) or scored (service) all of them. The **sustained rate** is measured at the
consumer over the readings after the first 10 % (warm-up: the service learns its sensors
there): ``(count − count at the mark) / (time of the last − time of the mark)``. Trials
alternate baseline, service, baseline, service, … and the figure is the ratio of the medians.

Beside it, the rate **end to end**, warm-up and tail included: readings / (first publish →
the end), where the end is, for the service, the arrival of the alert for the run's last
reading (a spike) at a subscriber in the publisher's process, and for the counting baseline
its last reading counted (it raises no alerts).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .children import Child
from .consumers import ConsumerSpec, baseline_main, service_main
from .loadgen import Fleet
from .payloads import service_overrides
from .sysinfo import cpu_seconds

Step = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Env:
    """What every measurement shares: the broker, the publisher process, the settings."""

    url: str
    workdir: str
    publisher: Child
    fleet: Fleet
    filters: tuple[str, ...]
    store_url: str
    config: str | None
    max_sensors: int | None
    broker_pid: int | None = None
    profile_dir: str | None = None


def consumer(
    env: Env,
    kind: str,
    expected: int | None,
    mark: int = 0,
    profile: str | None = None,
    ack_after: str | None = None,
) -> Child:
    """Start a baseline or service process and wait until it is subscribed."""
    service = kind == "service"
    spec = ConsumerSpec(
        url=env.url,
        workdir=env.workdir,
        expected=expected,
        mark=mark,
        filters=env.filters,
        store_url=env.store_url if service else "none://",
        config=env.config,
        max_sensors=env.max_sensors,
        profile=profile,
        ack_after=ack_after,
        overrides=service_overrides(env.fleet.payload) if service else None,
    )
    child = Child(kind, baseline_main if kind == "baseline" else service_main, spec)
    try:
        child.expect("ready", 60)
    except BaseException:
        child.close(1)
        raise
    return child


def trial(
    env: Env, kind: str, qos: int, n: int, rate: float, ack_after: str | None = None
) -> dict[str, Any]:
    """One run of ``n`` readings (flat out when ``rate`` is 0) into a fresh consumer."""
    profile = None
    if env.profile_dir and kind == "service":
        profile = str(Path(env.profile_dir) / f"service-qos{qos}-{int(time.time() * 1000)}.txt")
    # the service counts readings (values per message × messages), the baseline messages
    # (with the Sparkplug births)
    expected = n * env.fleet.values if kind == "service" else n + _births(env.fleet)
    child = consumer(env, kind, expected, mark=n // 10, profile=profile, ack_after=ack_after)
    broker_cpu = _cpu(env.broker_pid)
    publisher_cpu = _cpu(env.publisher.pid)
    try:
        env.publisher.send("flat", qos, n, rate, kind == "service")
        pub = env.publisher.expect("result", 60 + n / 1000)
        res: dict[str, Any] = child.expect("result", 90 + n / 1000)
    finally:
        child.close()
    broker_cpu = _cpu(env.broker_pid) - broker_cpu
    publisher_cpu = _cpu(env.publisher.pid) - publisher_cpu
    window = res["t_last"] - res["t_mark"]
    count = res["count"]
    end = pub["t_alert"] if kind == "service" else res["t_last"]
    return {
        "kind": kind,
        "count": count,
        "lost": max(0, expected - count),
        "rate": (count - res["count_mark"]) / window if window > 0 else 0.0,
        # None: the service's alert for the last reading never arrived
        "end_to_end_rate": None if end is None else n / max(end - pub["t_start"], 1e-9),
        "end_to_end_s": None if end is None else end - pub["t_start"],
        "publisher_rate": pub["rate"],
        "cpu_s_per_10k": res["cpu_s"] / max(count, 1) * 10_000,
        "rss_mib": res["rss"] / 2**20,
        "broker_cpu_s_per_10k": broker_cpu / max(count, 1) * 10_000,
        "publisher_cpu_s_per_10k": publisher_cpu / n * 10_000,
        **{
            k: res[k]
            for k in ("store_written", "store_dropped", "dead_letters", "readings_per_batch")
            if k in res
        },
        **({"store_flush_s": res["store_flush_s"]} if "store_flush_s" in res else {}),
        "profile": wait_for_profile(Path(profile), res["cpu_s"] / max(count, 1) * 1e6)
        if profile
        else None,
    }


def wait_for_profile(path: Path, cpu_us: float) -> dict[str, Any] | None:
    """py-spy writes its file when the recorded process has exited: wait for it."""
    from .profile import breakdown

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            time.sleep(0.2)
            return breakdown(path, cpu_us)
        time.sleep(0.1)
    return None


def _births(fleet: Fleet) -> int:
    return 2 * fleet.sensors if fleet.payload == "sparkplug" else 0


def _cpu(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def run(env: Env, qos: int, n: int, pairs: int, rate: float, step: Step) -> dict[str, Any]:
    """``pairs`` × (baseline, service) at ``qos``; medians and their ratio."""
    env.publisher.send("prepare", qos, n, rate)
    env.publisher.expect("prepared", 120)
    trials: list[dict[str, Any]] = []
    for i in range(pairs):
        for kind in ("baseline", "service"):
            step(f"throughput QoS {qos}: {kind} {i + 1}/{pairs}")
            trials.append(trial(env, kind, qos, n, rate))
    base = [t for t in trials if t["kind"] == "baseline"]
    serv = [t for t in trials if t["kind"] == "service"]
    b_med = statistics.median(t["rate"] for t in base)
    s_med = statistics.median(t["rate"] for t in serv)
    s_cpu = statistics.median(t["cpu_s_per_10k"] for t in serv)
    k = env.fleet.values
    return {
        "qos": qos,
        "payload": env.fleet.payload,
        "values_per_message": k,
        "readings": n,
        "offered_rate": rate or None,
        "sensors": env.fleet.sensors,
        "baseline_rates": [round(t["rate"]) for t in base],
        "service_rates": [round(t["rate"]) for t in serv],
        "baseline_median": round(b_med),
        "service_median": round(s_med),
        # per message: the service's readings/s over its values per message, against the
        # baseline's messages/s (the same for one value per message)
        "service_messages_median": round(s_med / k),
        "ratio": round(s_med / k / b_med, 3) if b_med else 0.0,
        "service_end_to_end_median": _median_end_to_end(serv),
        "baseline_end_to_end_median": _median_end_to_end(base),
        "publisher_median": round(statistics.median(t["publisher_rate"] for t in trials)),
        "service_cpu_s_per_10k": round(s_cpu, 4),
        # what one core could score if the service had it to itself (CPU-bound estimate)
        "service_one_core_rate": round(10_000 / s_cpu) if s_cpu else None,
        "baseline_cpu_s_per_10k": round(statistics.median(t["cpu_s_per_10k"] for t in base), 4),
        "broker_cpu_s_per_10k": round(
            statistics.median(t["broker_cpu_s_per_10k"] for t in trials), 4
        ),
        "publisher_cpu_s_per_10k": round(
            statistics.median(t["publisher_cpu_s_per_10k"] for t in trials), 4
        ),
        "service_rss_mib": round(max(t["rss_mib"] for t in serv), 1),
        "service_readings_per_batch": round(
            statistics.median(t["readings_per_batch"] for t in serv), 1
        ),
        "lost": sum(t["lost"] for t in trials),
        "store_written": sum(t.get("store_written", 0) for t in serv),
        "store_dropped": sum(t.get("store_dropped", 0) for t in serv),
        "dead_letters": sum(t.get("dead_letters", 0) for t in serv),
        "profile": next((t["profile"] for t in reversed(serv) if t.get("profile")), None),
        "trials": trials,
    }


def _median_end_to_end(trials: list[dict[str, Any]]) -> int | None:
    rates = [t["end_to_end_rate"] for t in trials if t["end_to_end_rate"] is not None]
    return round(statistics.median(rates)) if rates else None


def run_delivery(env: Env, n: int, pairs: int, step: Step) -> dict[str, Any]:
    """What delivery tracking costs: ``pairs`` × the service at QoS 1 acknowledging after
    processing, after the durable sinks confirmed, once journaled, and once journaled with
    ``service.fsync``, alternately; medians and their ratio to the first."""
    env.publisher.send("prepare", 1, n, 0.0)
    env.publisher.expect("prepared", 120)
    trials: dict[str, list[dict[str, Any]]] = {
        "processed": [],
        "durable": [],
        "journaled": [],
        "journaled+fsync": [],
    }
    for i in range(pairs):
        for mode, runs in trials.items():
            step(f"delivery tracking: ack after {mode} {i + 1}/{pairs}")
            runs.append(trial(env, "service", 1, n, 0.0, ack_after=mode))
    off = statistics.median(t["rate"] for t in trials["processed"])
    on = statistics.median(t["rate"] for t in trials["durable"])
    return {
        "readings": n,
        "store": env.store_url,
        "untracked_rates": [round(t["rate"]) for t in trials["processed"]],
        "tracked_rates": [round(t["rate"]) for t in trials["durable"]],
        "untracked_median": round(off),
        "tracked_median": round(on),
        "ratio": round(on / off, 3) if off else 0.0,
        "untracked_cpu_s_per_10k": round(
            statistics.median(t["cpu_s_per_10k"] for t in trials["processed"]), 4
        ),
        "tracked_cpu_s_per_10k": round(
            statistics.median(t["cpu_s_per_10k"] for t in trials["durable"]), 4
        ),
        "modes": {
            mode: {
                "median": round(statistics.median(t["rate"] for t in runs)),
                "cpu_s_per_10k": round(statistics.median(t["cpu_s_per_10k"] for t in runs), 4),
                "ratio": round(statistics.median(t["rate"] for t in runs) / off, 3) if off else 0.0,
            }
            for mode, runs in trials.items()
        },
        "lost": sum(t["lost"] for runs in trials.values() for t in runs),
        "trials": [t for runs in trials.values() for t in runs],
    }

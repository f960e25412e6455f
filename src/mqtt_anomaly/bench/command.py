"""``mqtt-anomaly bench``: registered by the CLI with ``app.command("bench")(bench)``.

Heavy imports happen inside the function so that ``mqtt-anomaly --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from .runner import BenchOptions, Step

_SECTIONS = ("memory", "throughput", "latency", "delivery", "http", "assets")


def bench(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML configuration of the service under test.",
            show_default=False,
        ),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            "-b",
            help="Use this broker (mqtt://host:port) instead of a private Mosquitto.",
            show_default=False,
        ),
    ] = None,
    broker_nodelay: Annotated[
        bool,
        typer.Option(
            "--broker-nodelay",
            help="Private Mosquitto with set_tcp_nodelay true (default: Mosquitto's stock "
            "settings, Nagle's algorithm on, as most installations run it).",
        ),
    ] = False,
    broker_inflight: Annotated[
        int,
        typer.Option(
            "--broker-inflight",
            help="Private Mosquitto's max_inflight_messages: 0 = no limit, as "
            "deploy/mosquitto/mosquitto.conf (default); 20 = Mosquitto's stock window.",
            min=0,
            max=65535,
        ),
    ] = 0,
    sensors: Annotated[
        int | None,
        typer.Option(
            "--sensors", "-n", help="Sensors in the fleet (default 1000).", show_default=False
        ),
    ] = None,
    readings: Annotated[
        int | None,
        typer.Option(help="Readings per throughput trial (default 100000).", show_default=False),
    ] = None,
    rate: Annotated[
        float,
        typer.Option(help="Throughput trials: total readings/s; 0 = flat out."),
    ] = 0.0,
    trials: Annotated[
        int | None,
        typer.Option(
            help="Baseline/service pairs per QoS, alternated (default 3).", show_default=False
        ),
    ] = None,
    qos: Annotated[
        list[int] | None,
        typer.Option(
            help="QoS of the readings, 0 or 1 (repeatable; default 1 and 0).", show_default=False
        ),
    ] = None,
    store: Annotated[
        str,
        typer.Option(
            help="History store of the service: sqlite (a fresh file per run), none, or a URL."
        ),
    ] = "sqlite",
    latency_rate: Annotated[float, typer.Option(help="Readings/s of the latency runs.")] = 5000.0,
    latency_seconds: Annotated[
        float | None,
        typer.Option(help="Length of each latency run (default 6 s).", show_default=False),
    ] = None,
    spikes: Annotated[
        float | None,
        typer.Option(
            help="Injected spikes per second in the latency runs (default 100).", show_default=False
        ),
    ] = None,
    fleet_size: Annotated[
        list[int] | None,
        typer.Option(
            help="Fleet sizes for memory per sensor and per-reading cost (repeatable; "
            "default 1000, 10000, 100000).",
            show_default=False,
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only these: memory, throughput, latency, delivery, http, assets "
            "(repeatable).",
            show_default=False,
        ),
    ] = None,
    compare_http: Annotated[
        bool,
        typer.Option(
            "--compare-http", help="Also measure MQTT push against HTTP POST + 1 s polling."
        ),
    ] = False,
    http_sensors: Annotated[
        int | None,
        typer.Option(
            help="Sensors in the HTTP comparison, 10 readings/s each (default 100).",
            show_default=False,
        ),
    ] = None,
    http_seconds: Annotated[
        float | None,
        typer.Option(help="Length of each HTTP comparison run (default 15 s).", show_default=False),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="Record each service process in the throughput trials with py-spy into "
            "this directory, and show where its time goes (needs py-spy; slows the service).",
            show_default=False,
        ),
    ] = None,
    payload: Annotated[
        str,
        typer.Option(
            help="Throughput workload: flat (one JSON reading per message), nested-json (4 "
            "values per message through a mapping rule) or sparkplug (Sparkplug B DDATA of 4 "
            "metrics by alias); the ratio is per message.",
        ),
    ] = "flat",
    quick: Annotated[
        bool, typer.Option("--quick", help="Smoke size: every measurement, in seconds.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Instead: 1, 2 and 4 workers of detect --cluster on a private 3-node NATS "
            "cluster (throughput, CPU per reading per worker, hand-off time).",
        ),
    ] = False,
) -> None:
    """Measure the detector service on a real broker against a baseline.

    Starts a private Mosquitto with its stock settings on a free loopback
    port (unless --broker),
    a publisher process (pre-encoded readings written in large batches)
    and, alternately, a subscriber that only counts and the detector
    service as `detect` runs it (default detectors, alerting, SQLite
    history). Reports sustained readings/s with the ratio to the counting
    baseline measured in the same run (sustained and end to end: first
    publish to last alert), publish-to-alert latency at a fixed rate with
    injected spikes beside the harness floor (the same publisher and
    subscriber, no detector), CPU seconds per 10,000 readings, memory per
    sensor from 1k to 100k sensors; QoS 1 and QoS 0. --compare-http adds
    MQTT push against HTTP POST + 1 s polling (bytes per reading, latency).

    About a minute with the defaults; --quick takes seconds.

    Example: mqtt-anomaly bench --compare-http
    """
    from ..console import err, fail, out
    from ..errors import MqttAnomalyError
    from .report import tables
    from .runner import BenchOptions, run_bench

    if cluster:
        from .cluster import cluster_table, run_cluster_bench

        try:
            result = run_cluster_bench(
                workers=(1, 2) if quick else (1, 2, 4),
                sensors=sensors or 256,
                readings=readings or (10_000 if quick else 100_000),
            )
        except MqttAnomalyError as exc:
            fail(str(exc))
        if as_json:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
        else:
            out.print(cluster_table(result))
        return

    opts = BenchOptions().quick_size() if quick else BenchOptions()
    try:
        opts = _apply(
            opts,
            config=config,
            broker=broker,
            broker_nodelay=broker_nodelay,
            broker_inflight=broker_inflight,
            sensors=sensors,
            readings=readings,
            rate=rate,
            trials=trials,
            qos=qos,
            store=store,
            latency_rate=latency_rate,
            latency_seconds=latency_seconds,
            spikes=spikes,
            fleet_size=fleet_size,
            only=only,
            compare_http=compare_http,
            http_sensors=http_sensors,
            http_seconds=http_seconds,
            profile=profile,
            payload=payload,
        )
        with _progress(opts, err) as step:
            result = run_bench(opts, step)
    except MqttAnomalyError as exc:
        fail(str(exc))
    except KeyboardInterrupt as exc:
        raise SystemExit(130) from exc
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        sys.stdout.flush()
    else:
        out.print(tables(result))


def _apply(opts: BenchOptions, **o: Any) -> BenchOptions:
    """Command-line values over ``opts``; a bad value raises ConfigError naming the option."""
    from ..config import BrokerSettings, StoreSettings, load_settings
    from ..errors import ConfigError

    def bad(option: str, why: str) -> ConfigError:
        return ConfigError(f"{option}: {why}")

    changes: dict[str, Any] = {
        "broker_nodelay": o["broker_nodelay"],
        "broker_inflight": o["broker_inflight"],
    }
    if o["config"] is not None:
        load_settings(o["config"])  # a broken file stops here, with its own message
        changes["config"] = str(o["config"])
    if o["broker"] is not None:
        try:
            changes["broker"] = BrokerSettings(url=o["broker"]).url
        except ValueError as exc:
            raise bad("--broker", str(exc).splitlines()[-1].strip()) from exc
    for name, low in (("sensors", 1), ("readings", 1), ("trials", 1), ("http_sensors", 1)):
        value = o[name]
        if value is not None:
            if value < low:
                raise bad(f"--{name.replace('_', '-')}", f"must be at least {low}")
            changes["pairs" if name == "trials" else name] = value
    for name in ("latency_seconds", "http_seconds", "spikes"):
        value = o[name]
        if value is not None:
            if value <= 0:
                raise bad(f"--{name.replace('_', '-')}", "must be positive")
            changes["spikes_per_s" if name == "spikes" else name] = value
    if o["rate"] < 0:
        raise bad("--rate", "must be positive, or 0 for flat out")
    changes["rate"] = o["rate"]
    if o["latency_rate"] <= 0:
        raise bad("--latency-rate", "must be positive")
    changes["latency_rate"] = o["latency_rate"]
    if o["qos"]:
        if any(q not in (0, 1) for q in o["qos"]):
            raise bad("--qos", "0 or 1")
        changes["qos"] = tuple(dict.fromkeys(o["qos"]))
    store = o["store"]
    if store not in ("sqlite", "none"):
        try:
            StoreSettings(url=store)
        except ValueError as exc:
            wanted = "sqlite, none, sqlite:///PATH, postgresql://… or none://"
            raise bad("--store", wanted) from exc
    changes["store"] = "none://" if store == "none" else store
    if o["fleet_size"]:
        if any(not 1 <= n <= 1_000_000 for n in o["fleet_size"]):
            raise bad("--fleet-size", "between 1 and 1,000,000")
        changes["memory_sizes"] = tuple(sorted(set(o["fleet_size"])))
    sections = list(o["only"] or opts.sections)
    unknown = [s for s in sections if s not in _SECTIONS]
    if unknown:
        raise bad("--only", f"unknown {unknown[0]!r} (choose from {', '.join(_SECTIONS)})")
    if o["compare_http"] and "http" not in sections:
        sections.append("http")
    changes["sections"] = tuple(sections)
    from .payloads import PAYLOADS

    if o["payload"] not in PAYLOADS:
        raise bad("--payload", f"unknown {o['payload']!r} (choose from {', '.join(PAYLOADS)})")
    if o["payload"] != "flat" and set(sections) - {"throughput", "memory"}:
        raise bad("--payload", "applies to the throughput trials: add --only throughput")
    changes["payload"] = o["payload"]
    if o["profile"] is not None:
        from .profile import py_spy

        if py_spy() is None:
            raise bad("--profile", "needs py-spy (pip install py-spy)")
        o["profile"].mkdir(parents=True, exist_ok=True)
        changes["profile_dir"] = str(o["profile"].resolve())
    return replace(opts, **changes)


def _steps(opts: BenchOptions) -> int:
    n = 0
    if "memory" in opts.sections:
        n += 1
    if "throughput" in opts.sections:
        n += 2 * opts.pairs * len(opts.qos)
    if "latency" in opts.sections:
        n += len(opts.qos)
    if "delivery" in opts.sections:
        n += 2 * opts.pairs
    if "http" in opts.sections:
        n += 2
    if "assets" in opts.sections:
        n += 1
    return n


@contextmanager
def _progress(opts: BenchOptions, console: Any) -> Iterator[Step]:
    """A progress bar on stderr (only on a terminal); yields the step callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task("starting", total=_steps(opts))
        started = False

        def step(what: str) -> None:
            nonlocal started
            if started:
                bar.advance(task)
            started = True
            bar.update(task, description=what)

        yield step

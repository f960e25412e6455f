"""``mqtt-anomaly simulate``: the virtual sensor fleet on the command line.

Registered by the CLI with ``app.command("simulate")(simulate)``. Heavy imports (numpy, the
MQTT client) happen inside the function so that ``mqtt-anomaly --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..cli.options import AssetKindOpt, AssetsOpt, BrokerOpt, ConfigOpt

INJECT_HELP = (
    "Force a fault: KIND@SECONDS[+DURATION][:SENSOR] (repeatable). KIND: spike, level_shift, "
    "drift, stuck, noise_burst, dropout, crash. SECONDS after the start; DURATION in seconds "
    "(defaults: spike one reading, crash 15, others 30–120); SENSOR an id or a number from 1 "
    "(default: the first sensor). E.g. spike@5, stuck@10+30:3, crash@20:SENSOR-02."
)


def simulate(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    sensors: Annotated[
        int | None,
        typer.Option("--sensors", "-n", help="Number of sensors (default 5).", show_default=False),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between two readings of a sensor (default 1).", show_default=False
        ),
    ] = None,
    qos: Annotated[
        int | None,
        typer.Option(help="MQTT QoS of the readings: 0, 1 or 2 (default 1).", show_default=False),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Random seed: the same seed gives the same values and faults.",
            show_default=False,
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(help="Stop after N readings per sensor.", metavar="N", show_default=False),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after S seconds.", metavar="S", show_default=False),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Append every injected fault to this JSON Lines file (ground truth).",
            show_default=False,
        ),
    ] = None,
    inject: Annotated[
        list[str] | None,
        typer.Option(
            "--inject", "-i", help=INJECT_HELP, metavar="KIND@SECONDS", show_default=False
        ),
    ] = None,
    rate: Annotated[
        list[str] | None,
        typer.Option(
            help="Random fault rate per sensor per hour, e.g. spike=10 (repeatable).",
            metavar="KIND=RATE",
            show_default=False,
        ),
    ] = None,
    no_faults: Annotated[
        bool, typer.Option("--no-faults", help="No random faults (--inject still applies).")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print every reading, whatever the fleet size.")
    ] = False,
    assets: AssetsOpt = None,
    asset_kind: AssetKindOpt = "pump",
    csv: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            help="With --assets: also write one CSV file per asset here (timestamp, sensors, "
            "anomaly).",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="With --assets: no broker; write --count readings to --csv/--labels at once.",
        ),
    ] = False,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="json: one connection and JSON readings per sensor; sparkplug: Sparkplug B "
            "edge nodes (births, deaths, aliases, seq) of --per-node sensors each.",
        ),
    ] = "json",
    per_node: Annotated[
        int, typer.Option("--per-node", help="Sensors per Sparkplug edge node (one device).")
    ] = 4,
    group: Annotated[str, typer.Option("--group", help="The Sparkplug group id.")] = "plant",
) -> None:
    """Simulate a fleet of temperature sensors publishing readings over MQTT.

    Each sensor has its own MQTT connection (client id sim-SENSOR-01, ...)
    with a retained Last Will "offline" on factory/{sensor_id}/status, and
    publishes JSON readings {"sensor_id", "ts", "value", "unit", "seq"} on
    factory/{sensor_id}/temperature: 20-30 °C, noise, a slow daily cycle.
    Random faults are injected at the configured rates: spike (98.2 °C),
    level_shift, drift, stuck, noise_burst, dropout, crash. --inject forces
    one at a given time; --labels records every fault as ground truth.

    Up to 10 sensors (or with --verbose) every reading is printed, else a
    summary every 5 s. While the broker is down, readings are buffered and
    sent on reconnect. Ctrl-C or SIGTERM stops cleanly ("offline" sent).

    With --assets N, N machines of --asset-kind (pump: flow, pressures,
    motor current, vibration, bearing temperature, voltage; compressor) are
    simulated instead: sensors driven by shared hidden causes, faults that
    break their relations while every sensor stays in its normal range
    (pump: cavitation, valve_restriction, bearing_wear, loose_coupling;
    compressor: intake_clogging, cooler_fouling, internal_leak,
    bearing_wear). Each asset publishes JSON readings on
    factory/{asset}/{sensor}; --inject FAULT@SECONDS[+DURATION][:ASSET] and
    --rate FAULT=RATE name its faults; the first 10 minutes are fault-free
    (commissioning). --csv DIR writes one file per asset, --offline writes
    them (and --labels) without a broker, --count readings at once.

    Example: mqtt-anomaly simulate -n 3 --seed 42 --inject spike@5
    Example: mqtt-anomaly simulate --assets 4 --offline --count 21600 --csv plant
    """
    from ..cli.settings import settings_from_cli
    from ..console import fail, run, setup_logging
    from ..errors import ConfigError
    from .faults import NO_FAULTS, FaultKind, parse_injection
    from .fleet import run_fleet

    if count is not None and count < 1:
        fail("--count must be at least 1")
    if format not in ("json", "sparkplug"):
        fail(f"--format must be json or sparkplug, got {format!r}")
    if format == "sparkplug" and labels is not None:
        fail("--labels: not written by the Sparkplug fleet (use --format json)")
    if duration is not None and duration <= 0:
        fail("--duration must be positive")
    if assets is not None:
        if format != "json":
            fail("--assets publishes JSON readings (use --format json)")
        _simulate_assets(
            config,
            broker,
            assets=assets,
            kind=asset_kind,
            interval=interval,
            qos=qos,
            seed=seed,
            count=count,
            duration=duration,
            labels=labels,
            csv=csv,
            offline=offline,
            inject=inject or [],
            rate=rate or [],
            no_faults=no_faults,
            sensors=sensors,
        )
        return
    if csv is not None or offline:
        fail("--csv and --offline need --assets N")
    try:
        injections = [parse_injection(text) for text in inject or ()]
        rates: dict[str, Any] = NO_FAULTS.model_dump() if no_faults else {}
        rates.update(_rates(rate or [], lambda kind: str(FaultKind.parse(kind))))
    except ConfigError as exc:
        fail(str(exc))
    settings = settings_from_cli(
        config,
        {
            "broker": {"url": broker, "qos": qos},
            "simulator": {
                "sensors": sensors,
                "interval": interval,
                "seed": seed,
                "labels_file": labels,
                "faults": rates or None,
            },
        },
    )
    setup_logging(False)
    if format == "sparkplug":
        from .sparkplug import run_sparkplug_fleet

        run(
            lambda: run_sparkplug_fleet(
                settings,
                group=group,
                per_node=per_node,
                injections=injections,
                count=count,
                duration=duration,
            )
        )
        return
    run(
        lambda: run_fleet(
            settings, injections=injections, count=count, duration=duration, verbose=verbose
        )
    )


def _rates(items: list[str], parse: Callable[[str], str]) -> dict[str, float]:
    """``--rate KIND=RATE`` items, each kind canonicalised by ``parse``."""
    from ..errors import ConfigError

    rates: dict[str, float] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--rate {item!r}: expected KIND=RATE, e.g. spike=10")
        try:
            rates[parse(kind)] = float(value)
        except ValueError as exc:
            raise ConfigError(f"--rate {item!r}: {value!r} is not a number") from exc
        except ConfigError as exc:
            raise ConfigError(f"--rate {item!r}: {exc}") from exc
    return rates


def _simulate_assets(
    config: Path | None,
    broker: str | None,
    *,
    assets: int,
    kind: str,
    interval: float | None,
    qos: int | None,
    seed: int | None,
    count: int | None,
    duration: float | None,
    labels: Path | None,
    csv: Path | None,
    offline: bool,
    inject: list[str],
    rate: list[str],
    no_faults: bool,
    sensors: int | None,
) -> None:
    """``simulate --assets N``: machines over MQTT, or with ``--offline`` straight to files."""
    import secrets

    from ..cli.settings import settings_from_cli
    from ..console import emit, fail, run, setup_logging
    from ..errors import ConfigError
    from .assetfleet import build_model, record_offline, run_asset_fleet
    from .assets import check_rates, default_rates, kind_of, parse_asset_injection

    if not 1 <= assets <= 10_000:
        fail("--assets must be between 1 and 10000")
    if sensors is not None:
        fail("--sensors and --assets exclude each other: an asset has its kind's sensors")
    if offline and (count is None or duration is not None):
        fail("--offline needs --count N (readings per asset) and no --duration")
    if offline and csv is None and labels is None:
        fail("--offline writes files only: give --csv DIR and/or --labels FILE")
    try:
        name = kind_of(kind).name
        injections = [parse_asset_injection(text, name) for text in inject]
        chosen = {} if no_faults else default_rates(name)
        chosen.update(check_rates(name, _rates(rate, str), key="--rate"))
    except ConfigError as exc:
        fail(str(exc))
    settings = settings_from_cli(
        config,
        {
            "broker": {"url": broker, "qos": qos},
            "simulator": {"interval": interval, "seed": seed, "labels_file": labels},
        },
    )
    sim = settings.simulator
    try:
        model = build_model(
            name,
            assets,
            interval=sim.interval,
            seed=sim.seed if sim.seed is not None else secrets.randbelow(2**31),
            rates=chosen,
            injections=injections,
        )
    except ConfigError as exc:
        fail(str(exc))
    setup_logging(False)
    if offline:
        assert count is not None
        try:
            faults = record_offline(model, count, labels=sim.labels_file, csv_dir=csv)
        except ConfigError as exc:
            fail(str(exc))
        where = ", ".join(str(p) for p in (csv, sim.labels_file) if p is not None)
        emit(
            f"[INFO] {assets} {name}s, {count} readings each ({count * sim.interval:g} s), "
            f"{faults} faults, seed {model.seed}: {where}"
        )
        return
    run(
        lambda: run_asset_fleet(
            settings, model, labels=sim.labels_file, csv_dir=csv, count=count, duration=duration
        )
    )

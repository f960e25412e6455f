"""``mqtt-anomaly replay``: what a detector configuration would have raised on recorded readings.

Registered by the CLI with ``app.command("replay")(replay)``; heavy imports happen inside the
function so that ``mqtt-anomaly --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer

from ..cli.options import TIME_HELP, ConfigOpt, SinceOpt, UntilOpt

if TYPE_CHECKING:
    from ..config import Settings
    from ..messages import Alert
    from ..store.base import AlertCount
    from .engine import Columns, Replayer
    from .sources import KafkaReader


FROM_HELP = (
    "What to replay: 'store' (the configured store.url), a store URL (sqlite:///PATH, "
    "postgresql://USER@HOST/DB), or kafka://HOST:PORT/TOPIC (several brokers: "
    "HOST:PORT,HOST:PORT; without /TOPIC: kafka.readings_topic)."
)


def replay(
    source: Annotated[
        str, typer.Option("--from", help=FROM_HELP, metavar="SOURCE", show_default=False)
    ],
    config: ConfigOpt = None,
    detectors: Annotated[
        str | None,
        typer.Option(
            help="Detectors to run, comma-separated (instead of detector.detectors).",
            metavar="A,B,C",
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Critical threshold (°C).", show_default=False)
    ] = None,
    sensor: Annotated[
        str | None, typer.Option(help="Only this sensor.", show_default=False)
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[
        int | None,
        typer.Option(help="Stop after N readings.", metavar="N", show_default=False),
    ] = None,
    idle: Annotated[
        float, typer.Option(help="Kafka: stop after this many seconds without a message.")
    ] = 3.0,
    timeout: Annotated[
        float, typer.Option(help="Kafka: how long to wait for the cluster to answer at start.")
    ] = 10.0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Also write every alert to this file (JSON Lines).",
            show_default=False,
        ),
    ] = None,
    show: Annotated[int, typer.Option(help="The table shows the first N alerts.")] = 50,
    as_json: Annotated[
        bool,
        typer.Option("--json", help='JSON Lines: every alert, then one line {"summary": ...}.'),
    ] = False,
) -> None:
    """Re-score recorded readings with another detector configuration.

    Readings come from the history store or from a Kafka topic of readings,
    in time order, and go through the service's own pipeline (dedup,
    detectors, alert debounce and hysteresis, silence) with the settings of
    --config, the environment and the flags here. Time is the readings' own:
    silence is checked as if the service had been running then. Nothing is
    published and nothing is written to the store.

    Prints the alerts, then a summary: readings, sensors, malformed messages,
    alerts by detector and severity, readings per second. From a store, also
    how many alerts the store holds for the same time range, by detector,
    next to the replayed ones.

    Example: mqtt-anomaly replay --from store --detectors threshold,robust
    --since 2026-01-01
    """
    from rich.markup import escape

    from ..cli.settings import settings_from_cli
    from ..console import fail, setup_logging
    from ..errors import ConfigError, MqttAnomalyError

    try:
        names = _detector_names(detectors)
        start = _time(since, "--since")
        end = _time(until, "--until")
        if start is not None and end is not None and end < start:
            raise ConfigError("--until is before --since")
        for flag, value, low in (("--limit", limit, 1), ("--show", show, 0)):
            if value is not None and value < low:
                raise ConfigError(f"{flag} must be at least {low}")
        for flag, seconds in (("--idle", idle), ("--timeout", timeout)):
            if not seconds > 0:
                raise ConfigError(f"{flag} must be positive")
    except ConfigError as exc:
        fail(escape(str(exc)))
    settings = settings_from_cli(config, {"detector": {"detectors": names, "threshold": threshold}})
    setup_logging(False, level=logging.WARNING)
    try:
        report, shown = _run(
            settings,
            source,
            sensor=sensor,
            since=start,
            until=end,
            limit=limit,
            idle=idle,
            timeout=timeout,
            output=output,
            show=show,
            as_json=as_json,
        )
    except MqttAnomalyError as exc:
        fail(escape(str(exc)))
    _print(report, shown, as_json)


def _detector_names(text: str | None) -> tuple[str, ...] | None:
    from ..detectors import create
    from ..errors import ConfigError

    if text is None:
        return None
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ConfigError("--detectors: name at least one detector")
    for name in names:
        try:
            create(name)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("detector.detectors", "--detectors")) from exc
    return names


def _time(text: str | None, flag: str) -> float | None:
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ConfigError(f"{flag} {text!r}: expected {TIME_HELP}") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        value = when.timestamp()
    if not math.isfinite(value):
        raise ConfigError(f"{flag} {text!r}: expected {TIME_HELP}")
    return value


class _Alerts:
    """Where alerts go as they come: stdout (JSON), a file, the first ``show`` for a table."""

    def __init__(self, show: int, as_json: bool, file: IO[bytes] | None) -> None:
        self.show = show
        self.as_json = as_json
        self.file = file
        self.first: list[Alert] = []
        self.count = 0

    def __call__(self, alert: Alert) -> None:
        from ..console import emit
        from ..messages import encode

        self.count += 1
        line = encode(alert)
        if self.as_json:
            emit(line.decode())
        elif len(self.first) < self.show:
            self.first.append(alert)
        if self.file is not None:
            self.file.write(line + b"\n")


def _run(
    settings: Settings,
    source_text: str,
    *,
    sensor: str | None,
    since: float | None,
    until: float | None,
    limit: int | None,
    idle: float,
    timeout: float,
    output: Path | None,
    show: int,
    as_json: bool,
) -> tuple[dict[str, Any], list[Alert]]:
    from ..errors import ConfigError
    from .engine import Replayer
    from .sources import KafkaReader, KafkaSource, open_replay_store, parse_source, store_batches

    source = parse_source(source_text, settings)
    with ExitStack() as stack:
        file: IO[bytes] | None = None
        if output is not None:
            try:
                file = stack.enter_context(output.open("wb"))
            except OSError as exc:
                raise ConfigError(f"--output {output}: {exc.strerror}") from exc
        sink = _Alerts(show, as_json, file)
        replayer = Replayer(settings, sink)
        reader: KafkaReader | None = None
        stored: list[AlertCount] | None = None
        started = time.perf_counter()
        if isinstance(source, KafkaSource):
            reader = KafkaReader(
                source,
                sensor_id=sensor,
                since=since,
                until=until,
                limit=limit,
                idle=idle,
                timeout=timeout,
            )
            interrupted = _feed(replayer, iter(reader))
            shown = f"kafka://{source.bootstrap}/{source.topic}"
        else:
            # retention off: reading the history must not expire any of it
            store_settings = settings.store.model_copy(update={"retention_days": 1e9})
            st = stack.enter_context(
                open_replay_store(source.url, settings.model_copy(update={"store": store_settings}))
            )
            batches = store_batches(st, sensor_id=sensor, since=since, until=until, limit=limit)
            interrupted = _feed(replayer, batches)
            shown = _safe_url(source.url)
            if replayer.stats.readings:
                stored = st.alert_counts(
                    sensor_id=sensor,
                    since=since if since is not None else replayer.stats.first_ts,
                    until=until if until is not None else replayer.stats.last_ts,
                )
        elapsed = time.perf_counter() - started
    report = _report(replayer, sink, shown, reader, stored, elapsed, since, until, interrupted)
    return report, sink.first


def _feed(replayer: Replayer, batches: Iterator[Columns]) -> bool:
    """Feed every batch, then the last silence checks; True when Ctrl-C cut it short."""
    interrupted = False
    try:
        for batch in batches:
            replayer.feed(batch)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # a generator: its source (a Kafka consumer, a store read) ends now
    replayer.finish()
    return interrupted


def _safe_url(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _report(
    replayer: Replayer,
    sink: _Alerts,
    source: str,
    reader: KafkaReader | None,
    stored: list[AlertCount] | None,
    elapsed: float,
    since: float | None,
    until: float | None,
    interrupted: bool,
) -> dict[str, Any]:
    st = replayer.stats
    counters = replayer.pipeline.counters
    malformed: dict[str, int] = dict(reader.malformed) if reader is not None else {}
    for reason, n in counters.dead_by_reason.items():
        malformed[reason] = malformed.get(reason, 0) + n
    raised: dict[str, dict[str, int]] = {}
    for (det, sev), n in sorted(st.raised.items()):
        raised.setdefault(det, {"warning": 0, "critical": 0})[sev] = n
    report: dict[str, Any] = {
        "source": source,
        "readings": st.readings,
        "sensors": len(replayer.pipeline.sensor_ids),
        "first_ts": st.first_ts if st.readings else None,
        "last_ts": st.last_ts if st.readings else None,
        "malformed": sum(malformed.values()),
        "malformed_by_reason": dict(sorted(malformed.items())),
        "duplicates": counters.duplicates,
        "late": counters.late,
        "stale": counters.stale,
        "detectors": [d.name for d in replayer.pipeline.detectors],
        "alerts": sink.count,
        "raised": raised,
        "cleared": dict(sorted(st.cleared.items())),
        "seconds": round(elapsed, 3),
        "readings_per_second": round(st.readings / elapsed) if elapsed > 0 else None,
        "pipeline_seconds": round(st.seconds, 3),
        "interrupted": interrupted,
    }
    if reader is not None:
        report["kafka"] = {
            "messages": reader.messages,
            "partitions": reader.partitions,
            "stopped": reader.stopped or "interrupted",
        }
        if reader.errors:
            report["kafka"]["errors"] = reader.errors
            report["kafka"]["last_error"] = reader.last_error
    if stored is not None:
        stored_raised: dict[str, int] = {}
        for det, state, _, n in stored:
            if state == "raised":
                stored_raised[det] = stored_raised.get(det, 0) + n
        report["stored"] = {
            "since": since if since is not None else st.first_ts,
            "until": until if until is not None else st.last_ts,
            "raised": stored_raised,
        }
    return report


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print(report: dict[str, Any], shown: list[Alert], as_json: bool) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from ..console import emit, out

    if as_json:
        emit(json.dumps({"summary": report}, allow_nan=False))
        return
    if shown:
        table = Table(
            "alert time (UTC)", "sensor", "detector", "severity", "state", "value", "score"
        )
        for a in shown:
            value = "" if a.value is None else f"{a.value:.2f}"
            table.add_row(
                _when(a.alert_ts),
                escape(a.sensor_id),
                a.detector,
                a.severity,
                a.state,
                value,
                f"{a.score:.3f}",
            )
        out.print(table)
        more = report["alerts"] - len(shown)
        if more > 0:
            out.print(
                f"… and {more:,} more alerts (all of them: --json or --output FILE)", markup=False
            )
    n = report["readings"]
    rate = report["readings_per_second"]
    span = f" from {_when(report['first_ts'])} to {_when(report['last_ts'])} UTC" if n else ""
    out.print(
        f"Replayed {n:,} reading{'s' * (n != 1)} of {report['sensors']:,} "
        f"sensor{'s' * (report['sensors'] != 1)}{span} from {report['source']} "
        f"in {report['seconds']:.2f} s"
        + (f" ({rate:,} readings/s)." if rate is not None and n else "."),
        markup=False,
    )
    if report["interrupted"]:
        out.print("Interrupted: the summary covers what was replayed so far.")
    if "kafka" in report:
        k = report["kafka"]
        out.print(
            f"Kafka: {k['messages']:,} messages from {k['partitions']} partitions, "
            f"stopped at {_STOPPED.get(k['stopped'], k['stopped'])}.",
            markup=False,
        )
        if "errors" in k:
            out.print(
                f"Kafka client errors on the way: {k['errors']:,} (last: {k['last_error']}).",
                markup=False,
            )
    if report["malformed"]:
        reasons = ", ".join(f"{r} {c:,}" for r, c in report["malformed_by_reason"].items())
        out.print(f"Malformed (skipped): {report['malformed']:,} ({reasons}).", markup=False)
    skipped = [(k, report[k]) for k in ("duplicates", "late", "stale") if report[k]]
    if skipped:
        out.print("Not scored: " + ", ".join(f"{c:,} {k}" for k, c in skipped) + " (dedup by seq).")
    stored = report.get("stored")
    names = sorted(
        set(report["raised"]) | set(report["cleared"]) | set(stored["raised"] if stored else ())
    )
    table = Table(
        "detector",
        "warning",
        "critical",
        "cleared",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        title=f"Alerts raised by {', '.join(report['detectors']) or 'no detector'} + silence",
    )
    if stored is not None:
        table.add_column("stored")
        table.add_column("change")
    for name in names:
        sev = report["raised"].get(name, {"warning": 0, "critical": 0})
        row = [escape(name), f"{sev['warning']:,}", f"{sev['critical']:,}"]
        row.append(f"{report['cleared'].get(name, 0):,}")
        if stored is not None:
            before = stored["raised"].get(name, 0)
            change = sev["warning"] + sev["critical"] - before
            row += [f"{before:,}", f"{change:+,}"]
        table.add_row(*row)
    if names:
        out.print(table)
    else:
        out.print("No alerts.")
    if stored is not None:
        out.print(
            f"stored: alerts the store holds from {_when(stored['since'])} to "
            f"{_when(stored['until'])} UTC (raised, by alert time); change: replayed − stored."
        )
        if "offline" in stored["raised"]:
            out.print("offline alerts come from status messages, which are not replayed.")


_STOPPED = {
    "end": "the end of every partition",
    "idle": "--idle seconds without a message",
    "limit": "--limit",
    "interrupted": "Ctrl-C",
}

"""``mqtt-anomaly models``: train, list, show, evaluate, promote and roll back models.

Mounted by the CLI as ``models``; heavy imports happen inside the commands so that
``mqtt-anomaly --help`` stays fast. The lifecycle and the format: docs/models.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ..cli.options import ConfigOpt

if TYPE_CHECKING:
    from ..config import Settings
    from ..replay.engine import Columns
    from .registry import Registry

app = typer.Typer(
    help="Model lifecycle: train, evaluate, promote, roll back (docs/models.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

TIME_HELP = "epoch seconds or ISO 8601 (UTC unless an offset is given)"
RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="Model registry folder (instead of [models] registry; default "
        "<service.state_dir>/models).",
        show_default=False,
    ),
]
SinceOpt = Annotated[
    str | None, typer.Option(help=f"Readings from this time on: {TIME_HELP}.", show_default=False)
]
UntilOpt = Annotated[
    str | None, typer.Option(help=f"Readings up to this time: {TIME_HELP}.", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
VersionArg = Annotated[str, typer.Argument(help="Model version (v1, v2, ...).", show_default=False)]


def _settings(
    config: Path | None, registry: Path | None, extra: dict[str, Any] | None = None
) -> Settings:
    from ..cli.settings import settings_from_cli

    return settings_from_cli(config, {**(extra or {}), "models": {"registry": registry}})


def _registry(settings: Settings) -> Registry:
    from .registry import Registry, registry_path

    return Registry(registry_path(settings))


def _time(text: str | None, flag: str) -> float | None:
    from ..replay.command import _time as parse

    return parse(text, flag)


def _progress(what: str) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..console import err

    return Progress(
        TextColumn(what),
        BarColumn(),
        TextColumn("{task.completed:,.0f} readings"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _ticker(bar: Any, task: Any) -> Callable[[int], None]:
    """A progress callback: the readings fed so far."""

    def tick(n: int) -> None:
        bar.update(task, completed=n)

    return tick


def _fail(exc: Exception) -> NoReturn:
    from rich.markup import escape

    from ..console import fail

    fail(escape(" ".join(str(exc).split())))


# ---- train ---------------------------------------------------------------------------------
@app.command()
def train(
    config: ConfigOpt = None,
    registry: RegistryOpt = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="Train on a history store: sqlite:///PATH or postgresql://... "
            "(default: store.url, when no --kafka or --csv).",
            show_default=False,
        ),
    ] = None,
    kafka: Annotated[
        str | None,
        typer.Option(
            help="Train on a Kafka topic of readings: kafka://HOST:PORT/TOPIC.", show_default=False
        ),
    ] = None,
    csv: Annotated[
        Path | None,
        typer.Option(
            help="Train on a CSV: a timestamp column and one value column per sensor.",
            show_default=False,
        ),
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    sensor: Annotated[
        list[str] | None,
        typer.Option("--sensor", help="Only this sensor (repeatable).", show_default=False),
    ] = None,
    asset: Annotated[
        list[str] | None,
        typer.Option(
            "--asset", help="Only the sensors of this asset (repeatable).", show_default=False
        ),
    ] = None,
    detectors: Annotated[
        str | None,
        typer.Option(
            help="Detectors, comma-separated (instead of detector.detectors).",
            metavar="A,B,C",
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Critical threshold (instead of detector.threshold).", show_default=False
        ),
    ] = None,
) -> None:
    """Train a model on a period of readings; prints the new version.

    Feeds the readings through the service's pipeline and keeps what its detectors
    learned, with the detector configuration, as a new version. The new version is not
    promoted: evaluate it, then promote it.

    Example: mqtt-anomaly models train --store sqlite:///plant.db --since 2026-12-01
    """
    from ..console import out
    from ..errors import ConfigError, MqttAnomalyError
    from ..replay.command import _detector_names, _safe_url

    try:
        if sum(x is not None for x in (store, kafka, csv)) > 1:
            raise ConfigError("--store, --kafka and --csv: give one source")
        names = _detector_names(detectors)
        start, end = _time(since, "--since"), _time(until, "--until")
        if start is not None and end is not None and end < start:
            raise ConfigError("--until is before --since")
    except ConfigError as exc:
        _fail(exc)
    settings = _settings(
        config, registry, {"detector": {"detectors": names, "threshold": threshold}}
    )
    sensors, assets = list(sensor or ()), list(asset or ())
    try:
        from .data import Selection
        from .work import train as run_training

        selection = Selection(settings, sensors, assets)
        with ExitStack() as stack:
            batches, shown = _source(stack, settings, store, kafka, csv, start, end)
            progress = stack.enter_context(_progress("training"))
            task = progress.add_task("training", total=None)
            trained = run_training(
                settings,
                selection.filter(batches),
                source=_safe_url(shown),
                since=start,
                until=end,
                sensors=sensors,
                assets=assets,
                progress=_ticker(progress, task),
            )
        if not trained.training["readings"]:
            raise ConfigError(
                f"no readings to train on in {_safe_url(shown)} "
                "(check --since, --until, --sensor, --asset)"
            )
        ref = _registry(settings).create(
            config=trained.config, training=trained.training, state=trained.state
        )
    except MqttAnomalyError as exc:
        _fail(exc)
    t = trained.training
    out.print(
        f"{ref.version}: trained on {t['readings']:,} readings of {len(t['sensors']):,} "
        f"sensor{'s' * (len(t['sensors']) != 1)} "
        f"from {_safe_url(shown)} ({ref.path})",
        markup=False,
    )


def _source(
    stack: ExitStack,
    settings: Settings,
    store: str | None,
    kafka: str | None,
    csv: Path | None,
    since: float | None,
    until: float | None,
) -> tuple[Iterator[Columns], str]:
    """The readings of ``--store`` / ``--kafka`` / ``--csv`` (default: store.url) and a name."""
    from ..errors import ConfigError
    from ..replay.sources import KafkaReader, KafkaSource, parse_source, store_batches
    from .data import csv_batches, open_history

    if csv is not None:
        from ..evaluate.runner import read_labelled_csv

        data = read_labelled_csv(csv, require_label=False)
        return csv_batches(data, since=since, until=until), str(csv)
    if kafka is not None:
        source = parse_source(kafka, settings)
        if not isinstance(source, KafkaSource):
            raise ConfigError(f"--kafka {kafka!r}: expected kafka://HOST:PORT/TOPIC")
        return iter(KafkaReader(source, since=since, until=until)), kafka
    url = store or settings.store.url
    st = stack.enter_context(open_history(url, settings))
    return store_batches(st, since=since, until=until), url


# ---- list and show ---------------------------------------------------------------------------
@app.command("list")
def list_models(
    config: ConfigOpt = None, registry: RegistryOpt = None, as_json: JsonOpt = False
) -> None:
    """List the registry's model versions; the current one is marked *."""
    from rich.table import Table

    from ..console import emit, out
    from ..errors import MqttAnomalyError

    settings = _settings(config, registry)
    reg = _registry(settings)
    try:
        current = reg.current()
        rows = []
        for ref in reg.versions():
            try:
                m = reg.manifest(ref)
                ev = m.get("evaluation") or {}
                cand = ev.get("candidate") or {}
                rows.append(
                    {
                        "version": ref.version,
                        "current": current is not None and current.version == ref.version,
                        "created": m["created"],
                        "readings": m["training"].get("readings"),
                        "sensors": len(m["training"].get("sensors") or ()),
                        "detectors": m["config"].get("detector", {}).get("detectors"),
                        "f1": cand.get("f1"),
                        "labels": ev.get("labels"),
                        "problem": None,
                    }
                )
            except MqttAnomalyError as exc:
                rows.append({"version": ref.version, "current": False, "problem": str(exc)})
    except MqttAnomalyError as exc:
        _fail(exc)
    if as_json:
        emit(json.dumps({"registry": str(reg.path), "models": rows}))
        return
    if not rows:
        out.print(f"No models in {reg.path}.", markup=False)
        return
    table = Table(
        "", "version", "created (UTC)", "readings", "sensors", "detectors", "F1", "labels"
    )
    for r in rows:
        if r["problem"]:
            table.add_row("", r["version"], f"unusable: {r['problem']}", "", "", "", "", "")
            continue
        f1 = "" if r["f1"] is None else f"{r['f1']:.3f}"
        table.add_row(
            "*" if r["current"] else "",
            r["version"],
            r["created"],
            f"{r['readings']:,}",
            f"{r['sensors']:,}",
            ",".join(r["detectors"] or ()),
            f1,
            r["labels"] or "",
        )
    out.print(table)


@app.command()
def show(version: VersionArg, config: ConfigOpt = None, registry: RegistryOpt = None) -> None:
    """Print a model's manifest (JSON): configuration, training data, evaluation."""
    from ..console import emit
    from ..errors import MqttAnomalyError

    reg = _registry(_settings(config, registry))
    try:
        manifest = reg.manifest(reg.ref(version))
    except MqttAnomalyError as exc:
        _fail(exc)
    emit(json.dumps(manifest, indent=2, sort_keys=True))


# ---- evaluate ---------------------------------------------------------------------------------
@app.command()
def evaluate(
    version: VersionArg,
    labels: Annotated[
        str,
        typer.Option(
            help="feedback (the store's operator feedback), feedback:STORE_URL, "
            "sim:PATH or PATH.jsonl (simulator labels), csv:PATH (a labelled CSV).",
            show_default=False,
        ),
    ],
    config: ConfigOpt = None,
    registry: RegistryOpt = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Readings to replay: a store URL or kafka://HOST:PORT/TOPIC (default: store.url; "
            "csv labels: the CSV).",
            show_default=False,
        ),
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    grace: Annotated[
        float, typer.Option(help="Seconds after a labelled time an alert still counts for it.")
    ] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Score a model against the current one on labels; figures go into its manifest.

    Replays a labelled period through the candidate and the current model and prints
    both with precision, recall and F1.

    Without --since/--until the period is the labels' own (first to last labelled time,
    plus --grace). Without a current model the candidate is compared with the configured
    detectors, untrained.

    Example: mqtt-anomaly models evaluate v2 --labels feedback
    """
    from ..console import emit, out
    from ..errors import ConfigError, MqttAnomalyError
    from ..replay.command import _safe_url
    from ..replay.sources import KafkaReader, KafkaSource, parse_source, store_batches
    from .data import csv_batches, open_history, read_labels
    from .format import utc_now
    from .work import replay_alerts, score

    settings = _settings(config, registry)
    reg = _registry(settings)
    try:
        if not grace >= 0:
            raise ConfigError("--grace must be 0 or more")
        start, end = _time(since, "--since"), _time(until, "--until")
        ref = reg.ref(version)
        candidate = reg.load(ref)
        current_ref = reg.current()
        current = None
        if current_ref is not None:
            current = candidate if current_ref.version == version else reg.load(current_ref)
        lab = read_labels(labels, settings)
        span = lab.span
        if span is None:
            raise ConfigError(f"--labels {labels}: no labels")
        start = span[0] if start is None else start
        end = span[1] + grace if end is None else end
        shown = labels if lab.csv is not None else (source or settings.store.url)

        def batches(stack: ExitStack) -> Iterator[Columns]:
            if lab.csv is not None:
                return csv_batches(lab.csv, since=start, until=end)
            parsed = parse_source(source or "store", settings)
            if isinstance(parsed, KafkaSource):
                return iter(KafkaReader(parsed, since=start, until=end))
            st = stack.enter_context(open_history(parsed.url, settings))
            return store_batches(st, since=start, until=end)

        scores = []
        for model, name in (
            (candidate, version),
            (current, current_ref.version if current_ref else None),
        ):
            with (
                ExitStack() as stack,
                _progress(f"replaying {name or 'configured detectors'}") as bar,
            ):
                task = bar.add_task("", total=None)
                alerts, n = replay_alerts(
                    settings,
                    model,
                    batches(stack),
                    _ticker(bar, task),
                )
            scores.append(score(name, lab, alerts, n, grace, start, end))
        if not scores[0].readings:
            raise ConfigError(f"no readings from {_safe_url(shown)} in the labelled period")
        evaluation = {
            "at": utc_now(),
            "labels": lab.spec,
            "source": _safe_url(shown),
            "since": start,
            "until": end,
            "grace": grace,
            "metric": settings.models.metric,
            "candidate": scores[0].as_json(),
            "baseline": scores[1].as_json(),
        }
        reg.set_evaluation(ref, evaluation)
    except MqttAnomalyError as exc:
        _fail(exc)
    if as_json:
        emit(json.dumps(evaluation))
        return
    from rich.table import Table

    table = Table("model", "alerts", "TP", "FP", "FN", "precision", "recall", "F1")
    for role, s in (("candidate", scores[0]), ("current", scores[1])):
        table.add_row(
            f"{s.version or 'configured detectors'} ({role})",
            f"{s.alerts:,}",
            f"{s.true_positives:,}",
            f"{s.false_positives:,}",
            f"{s.false_negatives:,}",
            f"{s.precision:.3f}",
            f"{s.recall:.3f}",
            f"{s.f1:.3f}",
        )
    out.print(table)
    out.print(
        f"{scores[0].readings:,} readings replayed from {_safe_url(shown)}; figures written "
        f"to {ref.path / 'manifest.json'}.",
        markup=False,
    )


# ---- promote and roll back --------------------------------------------------------------------
@app.command()
def promote(
    version: VersionArg,
    config: ConfigOpt = None,
    registry: RegistryOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even when not evaluated or worse.")
    ] = False,
) -> None:
    """Make a model the current one: `detect` starts from it at its next start.

    Refused when the candidate was not evaluated against the current model, or is worse
    than it on [models] metric (default f1), unless --force.
    """
    from ..console import out
    from ..errors import MqttAnomalyError

    settings = _settings(config, registry)
    try:
        reason = _registry(settings).promote(version, force=force, metric=settings.models.metric)
    except MqttAnomalyError as exc:
        _fail(exc)
    out.print(f"{version} is the current model: {reason}.", markup=False)


@app.command()
def rollback(config: ConfigOpt = None, registry: RegistryOpt = None) -> None:
    """Make the model that was current before the current one current again."""
    from ..console import out
    from ..errors import MqttAnomalyError

    reg = _registry(_settings(config, registry))
    try:
        before = reg.current()
        ref = reg.rollback()
    except MqttAnomalyError as exc:
        _fail(exc)
    was = before.version if before else "-"
    out.print(f"{ref.version} is the current model (rolled back from {was}).", markup=False)

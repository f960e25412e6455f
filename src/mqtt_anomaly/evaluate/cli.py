"""``evaluate`` commands: score the service's detectors on NAB or on a labelled CSV.

Mounted as ``mqtt-anomaly evaluate``; also runs on its own::

    python -m mqtt_anomaly.evaluate.cli nab --detector zscore
    python -m mqtt_anomaly.evaluate.cli csv readings.csv --label-column anomaly --json
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..cli.options import AssetKindOpt, AssetsOpt
from ..config import DetectorSettings, load_settings
from ..console import emit, err, fail, out
from ..detectors import available, create
from ..errors import ConfigError, MqttAnomalyError
from . import leaderboard
from .history import history
from .nab import load_corpus
from .rows import Counts, ScorerResult, SeriesReport, Totals, evaluate_series
from .runner import LabelledCsv, read_labelled_csv, report_nab, run_nab, write_results
from .scorers import ALWAYS, create_scorer, default_scorers

DEFAULT_DATA = Path("../shared/datasets/nab")

app = typer.Typer(
    help="Score detectors on the Numenta Anomaly Benchmark or on a labelled CSV.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DetectorOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--detector",
        "-d",
        help="Detector to evaluate (repeatable); default: every registered detector.",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML configuration; its [detector.params.*] tune the detectors.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _detectors(names: list[str] | None, config: Path | None) -> tuple[list[str], DetectorSettings]:
    """The settings and the detector names, each checked by building it once."""
    settings = load_settings(config).detector
    chosen = list(dict.fromkeys(names or available()))
    for name in chosen:
        create(name, settings)
    return chosen, settings


@contextmanager
def _progress() -> Iterator[Progress]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        yield bar


def _dump(doc: Any) -> None:
    emit(json.dumps(doc, indent=2, allow_nan=False))


@app.command()
def nab(
    data: Annotated[
        Path | None,
        typer.Option(
            help=f"NAB corpus (data/, labels/); default: {DEFAULT_DATA} if present.",
            show_default=False,
        ),
    ] = None,
    windows: Annotated[
        Path | None,
        typer.Option(
            help="Windows file naming the files to score; default: labels/combined_windows.json.",
            show_default=False,
        ),
    ] = None,
    detector: DetectorOpt = None,
    results_dir: Annotated[
        Path | None,
        typer.Option(
            help="Also write NAB's results layout <det>/<category>/<det>_<file>.csv here.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run detectors over the NAB corpus (all files in lockstep) and print the leaderboard.

    Scores use NAB's threshold optimised per profile on the corpus itself, as published
    results do; "std @ alert level" is the standard score at the detector's own alert level.
    """
    try:
        names, settings = _detectors(detector, config)
        root = data if data is not None else DEFAULT_DATA
        if not root.is_dir():
            hint = "" if data is not None else "; pass --data PATH"
            raise ConfigError(f"{root}: no NAB corpus there{hint}")
        corpus = load_corpus(root, windows)
        reports = []
        with _progress() as bar:
            for name in names:
                line = bar.add_task(name, total=None)

                def advance(done: int, total: int, line: Any = line) -> None:
                    bar.update(line, completed=done, total=total)

                run = run_nab(corpus, name, settings, advance)
                reports.append(report_nab(corpus, run))
                if results_dir is not None:
                    try:
                        write_results(corpus, run, results_dir)
                    except OSError as exc:
                        raise ConfigError(f"{results_dir}: cannot write results ({exc})") from exc
    except MqttAnomalyError as exc:
        fail(str(exc))
    rows = leaderboard.build(reports)
    if as_json:
        _dump(
            {
                "corpus": {
                    "path": str(root),
                    "files": len(corpus.series),
                    "rows": corpus.rows,
                    "windows": corpus.n_windows,
                },
                "detectors": [r.as_dict() for r in reports],
                "leaderboard": leaderboard.as_json(rows),
            }
        )
        return
    out.print(leaderboard.render(rows))
    out.print(
        f"{len(corpus.series)} files, {corpus.rows:,} rows, {corpus.n_windows} windows. "
        "Thresholds (standard/low FP/low FN) are optimised per profile on the corpus itself, "
        "as NAB does; 1.1 means no threshold beats detecting nothing. "
        "std@alert: the standard score at the detector's own alert level."
    )


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def rows_table(title: str, results: list[tuple[str, Counts, str]]) -> Table:
    """Point and event metrics per detector; the third item is an extra cell (NAB, speed)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False)
    heads = ("detector", "rows P/R/F1", "false alarms", "missed", "events P/R/F1", "found", "")
    for head in heads:
        table.add_column(head, justify="left" if head == "detector" else "right", no_wrap=True)
    for name, c, extra in results:
        p, e = c.point(), c.event()
        table.add_row(
            name,
            "/".join(_f(p[k]) for k in ("precision", "recall", "f1")),
            _f(p["false_alarm_rate"]),
            _f(p["missed_alarm_rate"]),
            "/".join(_f(e[k]) for k in ("precision", "recall", "f1")),
            f"{e['detected_events']}/{e['events']}",
            extra,
        )
    return table


def _extra(r: ScorerResult, cells: int) -> str:
    parts = []
    if r.nab is not None:
        std = r.nab["optimised"]["standard"].score
        parts.append(f"NAB {std:.1f}" if math.isfinite(std) else "NAB n/a")
    if r.seconds > 0 and r.scorer != ALWAYS:
        parts.append(f"{cells / r.seconds:,.0f} pts/s")
    return " ".join(parts)


def _note_label_like(data: LabelledCsv) -> None:
    """One note per scored column that holds only 0 and 1: likely a second label column."""
    for j, col in enumerate(data.columns):
        v = data.values[:, j]
        v = v[~np.isnan(v)]
        if v.size and v.any() and np.isin(v, (0.0, 1.0)).all():
            err.print(
                f"note: {data.name}: column {col!r} holds only 0 and 1 and is scored as a "
                f"sensor; if it is a label, pass --exclude-column {col}",
                highlight=False,
                soft_wrap=True,
            )


def _files_table(reports: list[SeriesReport]) -> Table:
    """Per file: its rows, the best detector's point F1 and always-alarm's."""
    table = Table(
        "file",
        "scored",
        "labelled",
        "best point F1",
        "always F1",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    for rep in reports:
        f1 = {r.scorer: float(r.counts.point()["f1"]) for r in rep.results}
        always = f1.pop(ALWAYS)
        best = max(f1, key=lambda k: f1[k], default=None)
        table.add_row(
            Path(rep.name).name,
            f"{rep.scored_rows:,}",
            f"{rep.labelled_rows:,}",
            "-" if best is None else f"{f1[best]:.2f} {best}",
            f"{always:.2f}",
        )
    return table


RATES_NOTE = (
    "rows P/R/F1 count rows; false alarms: share of normal rows flagged; missed: share of "
    "anomalous rows not flagged; events: runs of labelled rows found / runs of flags touching "
    "one. 'always' flags every row: a detector not above its F1 learned nothing the labels "
    "reward."
)


@app.command("csv")
def csv_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="CSV files with a header row (',', ';', tab or '|'); each is one asset.",
            show_default=False,
        ),
    ],
    label_column: Annotated[
        str | None,
        typer.Option(
            help="Column marking anomalous rows (1/0, true/false); default: anomaly or label.",
            show_default=False,
        ),
    ] = None,
    value_column: Annotated[
        list[str] | None,
        typer.Option(
            help="Column to score (repeatable; each is one sensor); default: all others.",
            show_default=False,
        ),
    ] = None,
    exclude_column: Annotated[
        list[str] | None,
        typer.Option(
            help="Column not to score, e.g. a second label column (repeatable).",
            show_default=False,
        ),
    ] = None,
    timestamp_column: Annotated[
        str | None,
        typer.Option(
            help="Epoch seconds or ISO times; default: timestamp, datetime, time, date or ts "
            "if present, else row numbers.",
            show_default=False,
        ),
    ] = None,
    train_rows: Annotated[
        int,
        typer.Option(
            help="Rows at the start of each file learned as normal (commissioning), not scored.",
            min=0,
        ),
    ] = 0,
    detector: DetectorOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score detectors on labelled CSV exports: point and event precision/recall/F1,
    false- and missed-alarm rates, per file and micro-averaged over all files.

    Detectors: "default" (the configured set on every column), each univariate detector on
    every column, with --train-rows the multivariate ones; a row is flagged when any column is.
    Each file is one asset scored on its own, from a fresh detector: its first --train-rows
    rows are learned, not scored. "always" (flag every row) is in every report.

    Example: mqtt-anomaly evaluate csv data/*.csv --train-rows 400 --exclude-column changepoint
    """
    try:
        settings = load_settings(config).detector
        names = list(dict.fromkeys(detector or default_scorers(train_rows)))
        for name in names:
            create_scorer(name, settings)
        reports = []
        for file in files:
            if not file.is_file():
                raise ConfigError(f"{file}: no such file")
            data = read_labelled_csv(
                file, label_column, value_column, timestamp_column, exclude_column or ()
            )
            if not value_column:
                _note_label_like(data)
            reports.append(
                evaluate_series(
                    str(file),
                    data.columns,
                    data.values,
                    data.epoch,
                    data.labels,
                    names,
                    train_rows=train_rows,
                    settings=settings,
                    nab=True,
                )
            )
    except MqttAnomalyError as exc:
        fail(str(exc))
    total = Totals.of(reports)
    if as_json:
        _dump(
            {
                "train_rows": train_rows,
                "files": [r.as_dict() for r in reports],
                "total": total.as_dict(),
            }
        )
        return
    if len(reports) == 1:
        (rep,) = reports
        cells = rep.scored_rows * len(rep.columns)
        title = (
            f"{rep.name}: {rep.scored_rows:,} rows scored after {rep.train_rows:,} learned, "
            f"{rep.labelled_rows:,} labelled; columns {', '.join(rep.columns)}"
        )
        out.print(rows_table(title, [(r.scorer, r.counts, _extra(r, cells)) for r in rep.results]))
    else:
        title = (
            f"{len(reports)} files, micro-averaged: {total.scored_rows:,} rows scored after "
            f"{train_rows:,} learned in each, {total.labelled_rows:,} labelled"
        )
        out.print(rows_table(title, [(k, c, "") for k, c in total.counts.items()]))
        out.print(_files_table(reports))
    out.print(RATES_NOTE)


@app.command()
def sim(
    config: ConfigOpt = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker", "-b", help="Broker URL; default: an embedded broker.", show_default=False
        ),
    ] = None,
    sensors: Annotated[int, typer.Option("--sensors", "-n", help="Simulated sensors.")] = 50,
    interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between readings (default 0.2; with --assets 1).", show_default=False
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            help="Seconds of simulation (default 120; with --assets 21600 simulated seconds).",
            show_default=False,
        ),
    ] = None,
    warmup: Annotated[
        float | None,
        typer.Option(
            help="Learning time not scored, s (default 20; with --assets 600, the "
            "commissioning run).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the fleet.")] = 1,
    rate_scale: Annotated[
        float | None,
        typer.Option(
            help="Multiplies the fault rates (default 30 × the live rates; with --assets 1 × "
            "0.5 faults of each kind per asset-hour).",
            show_default=False,
        ),
    ] = None,
    assets: AssetsOpt = None,
    asset_kind: AssetKindOpt = "pump",
    detector: DetectorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score detectors on the simulator's ground-truth labels.

    Without --assets: runs a simulated fleet with injected faults (every kind, crashes
    included) and the detector service together, then matches every raised alert to the
    injected faults: precision over all alerts, recall and detection delay per fault kind.

    With --assets N: simulates N machines for --duration simulated seconds (as fast as the
    model runs) and scores each detector (--detector, default: the default set, each
    univariate detector, the multivariate ones when installed, and always-alarm) on each asset
    against the asset labels, after the commissioning run: point and event
    precision/recall/F1, micro-averaged, and the faults found per fault kind.
    """
    if assets is not None:
        _sim_assets(
            config,
            assets,
            asset_kind,
            duration=21600.0 if duration is None else duration,
            interval=1.0 if interval is None else interval,
            warmup=600.0 if warmup is None else warmup,
            seed=seed,
            rate_scale=1.0 if rate_scale is None else rate_scale,
            detector=detector,
            as_json=as_json,
        )
        return
    interval = 0.2 if interval is None else interval
    duration = 120.0 if duration is None else duration
    warmup = 20.0 if warmup is None else warmup
    rate_scale = 30.0 if rate_scale is None else rate_scale
    from ..console import run, setup_logging
    from .sim import run_sim_evaluation

    try:
        settings = load_settings(config)
    except MqttAnomalyError as exc:
        fail(str(exc))
    setup_logging(False, level=logging.WARNING)
    report = run(
        lambda: run_sim_evaluation(
            settings,
            broker_url=broker,
            sensors=sensors,
            interval=interval,
            duration=duration,
            warmup=warmup,
            seed=seed,
            rate_scale=rate_scale,
        )
    )
    if as_json:
        _dump(report.as_dict())
        return
    table = Table(
        "fault kind",
        "faults",
        "detected",
        "recall",
        "delay p50 s",
        "delay max s",
        box=box.SIMPLE_HEAVY,
    )
    for k in report.by_kind:
        table.add_row(
            k.kind,
            str(k.faults),
            str(k.detected),
            f"{k.recall:.2f}",
            "-" if k.delay_p50 is None else f"{k.delay_p50:.2f}",
            "-" if k.delay_max is None else f"{k.delay_max:.2f}",
        )
    out.print(table)
    out.print(
        f"alerts {report.alerts}, false alarms {report.false_alarms}: precision "
        f"{report.precision:.2f}, recall {report.recall:.2f}, F1 {report.f1:.2f}"
    )


def _sim_assets(
    config: Path | None,
    assets: int,
    kind: str,
    *,
    duration: float,
    interval: float,
    warmup: float,
    seed: int,
    rate_scale: float,
    detector: list[str] | None,
    as_json: bool,
) -> None:
    """``evaluate sim --assets N`` (see :mod:`.assetsim`)."""
    from .assetsim import run_asset_evaluation

    try:
        if not 1 <= assets <= 1000:
            raise ConfigError("--assets must be between 1 and 1000")
        if interval <= 0:
            raise ConfigError("--interval must be positive")
        settings = load_settings(config).detector
        names = list(dict.fromkeys(detector or default_scorers(round(warmup / interval))))
        for name in names:
            create_scorer(name, settings)
        report = run_asset_evaluation(
            kind,
            assets,
            duration=duration,
            interval=interval,
            seed=seed,
            rate_scale=rate_scale,
            warmup=warmup,
            scorers=names,
            settings=settings,
        )
    except MqttAnomalyError as exc:
        fail(str(exc))
    if as_json:
        _dump(report.as_dict())
        return
    total = report.totals
    title = (
        f"{assets} {report.kind}s, {duration:g} s each ({warmup:g} s learned), seed {seed}: "
        f"{total.scored_rows:,} rows scored, {total.labelled_rows:,} in "
        f"{report.settings['faults']} faults"
    )
    out.print(rows_table(title, [(k, c, "") for k, c in total.counts.items()]))
    heads = [f"{k.kind} ({k.faults})" for k in report.by_kind]
    kinds = Table(
        "faults found",
        *heads,
        title="faults flagged at least once per fault kind, median delay to the first flag",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    for name in total.counts:
        cells = []
        for k in report.by_kind:
            delay = k.delay_p50.get(name)
            late = "" if delay is None else f", {delay:.0f} s"
            cells.append(f"{k.detected.get(name, 0)}/{k.faults}{late}")
        kinds.add_row(name, *cells)
    out.print(kinds)
    out.print(RATES_NOTE)


app.command("history")(history)


if __name__ == "__main__":
    app()

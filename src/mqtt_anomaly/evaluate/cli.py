"""``evaluate`` commands: score the service's detectors on NAB or on a labelled CSV.

Mounted as ``mqtt-anomaly evaluate``; also runs on its own::

    python -m mqtt_anomaly.evaluate.cli nab --detector zscore
    python -m mqtt_anomaly.evaluate.cli csv readings.csv --label-column anomaly --json
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import DetectorSettings, load_settings
from ..console import emit, err, fail, out
from ..detectors import available, create
from ..errors import ConfigError, MqttAnomalyError
from . import leaderboard
from .nab import load_corpus
from .runner import CsvReport, evaluate_csv, read_labelled_csv, report_nab, run_nab, write_results

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


def _csv_table(reports: list[CsvReport]) -> Table:
    first = reports[0]
    table = Table(
        title=f"{first.file}: {first.rows:,} rows, {first.windows} NAB windows",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
    )
    for head in ("detector", "rows P/R/F1", "events P/R/F1", "NAB std/FP/FN", "points/s"):
        table.add_column(head, justify="left" if head == "detector" else "right", no_wrap=True)
    for r in reports:
        d = r.as_dict()
        prf = [
            "/".join(f"{d[k][m]:.2f}" for m in ("precision", "recall", "f1"))
            for k in ("point", "event")
        ]
        nab = d["nab"]["optimised"]
        scores = ("n/a" if nab[p]["score"] is None else f"{nab[p]['score']:.1f}" for p in nab)
        pps = d["points_per_second"]
        table.add_row(r.detector, *prf, "/".join(scores), "" if pps is None else f"{pps:,.0f}")
    return table


@app.command("csv")
def csv_command(
    file: Annotated[Path, typer.Argument(help="CSV with a header row.", show_default=False)],
    label_column: Annotated[
        str, typer.Option(help="Column marking anomalous rows (1/0, true/false).")
    ],
    value_column: Annotated[
        list[str] | None,
        typer.Option(
            help="Column to score (repeatable; each is one sensor); default: all others.",
            show_default=False,
        ),
    ] = None,
    timestamp_column: Annotated[
        str | None,
        typer.Option(
            help="Epoch seconds or ISO times; default: 'timestamp' if present, else row numbers.",
            show_default=False,
        ),
    ] = None,
    detector: DetectorOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score detectors on a labelled CSV: precision/recall/F1 and NAB scores.

    A row is detected when any of its columns scores at or above the detector's alert level.
    "rows" metrics count rows; "events" count runs of labelled rows found (recall) and runs of
    detections that touch one (precision). NAB windows are built from the labels as NAB does.
    """
    try:
        names, settings = _detectors(detector, config)
        if not file.is_file():
            raise ConfigError(f"{file}: no such file")
        data = read_labelled_csv(file, label_column, value_column, timestamp_column)
        reports = [evaluate_csv(data, name, settings) for name in names]
    except MqttAnomalyError as exc:
        fail(str(exc))
    if as_json:
        _dump(
            {
                "file": str(file),
                "rows": len(data.labels),
                "labelled_rows": int(data.labels.sum()),
                "results": [r.as_dict() for r in reports],
            }
        )
        return
    out.print(_csv_table(reports))
    out.print(
        "Classification at each detector's alert level; NAB scores at the threshold optimised "
        "on this file."
    )


if __name__ == "__main__":
    app()


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
    interval: Annotated[float, typer.Option(help="Seconds between readings.")] = 0.2,
    duration: Annotated[float, typer.Option(help="Seconds of simulation.")] = 120.0,
    warmup: Annotated[float, typer.Option(help="Learning time not scored (s).")] = 20.0,
    seed: Annotated[int, typer.Option(help="Random seed of the fleet.")] = 1,
    rate_scale: Annotated[
        float, typer.Option(help="Multiplies the fault rates (faults per sensor-hour).")
    ] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Score the live pipeline on the simulator's ground-truth labels.

    Runs a simulated fleet with injected faults (every kind, crashes included) and the
    detector service together, then matches every raised alert to the injected faults:
    precision over all alerts, recall and detection delay per fault kind.
    """
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

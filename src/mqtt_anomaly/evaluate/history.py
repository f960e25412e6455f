"""``evaluate history``: the configured detectors replayed over recorded readings, scored on
labels: operator feedback (``--labels feedback[:STORE_URL]``), a simulator labels file or a
labelled CSV. The scoring is ``models evaluate``'s (:mod:`mqtt_anomaly.models.work`), for
the detectors of the settings, untrained, instead of a model.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Annotated

import typer

from ..cli.options import ConfigOpt

LABELS_HELP = (
    "feedback (the store's operator feedback), feedback:STORE_URL, sim:PATH or PATH.jsonl "
    "(simulator labels), csv:PATH (a labelled CSV, whose readings are replayed)."
)


def history(
    labels: Annotated[str, typer.Option(help=LABELS_HELP, show_default=False)],
    config: ConfigOpt = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Readings to replay: a store URL or kafka://HOST:PORT/TOPIC (default: store.url).",
            show_default=False,
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
    since: Annotated[
        str | None, typer.Option(help="Readings from this time on.", show_default=False)
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Readings up to this time.", show_default=False)
    ] = None,
    grace: Annotated[
        float, typer.Option(help="Seconds after a labelled time an alert still counts for it.")
    ] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score the configured detectors on labelled history (e.g. operator feedback).

    Replays the recorded readings (from the first labelled time, without --since) through
    the service's pipeline and matches its alerts to the labels: precision, recall, F1.

    Example: mqtt-anomaly evaluate history --labels feedback --from sqlite:///plant.db
    """
    from rich.markup import escape

    from ..cli.settings import settings_from_cli
    from ..console import emit, fail, out
    from ..errors import ConfigError, MqttAnomalyError
    from ..models.data import csv_batches, open_history, read_labels
    from ..models.work import replay_alerts, score
    from ..replay.command import _detector_names, _safe_url, _time
    from ..replay.sources import KafkaReader, KafkaSource, parse_source, store_batches

    try:
        names = _detector_names(detectors)
        settings = settings_from_cli(config, {"detector": {"detectors": names}})
        start, end = _time(since, "--since"), _time(until, "--until")
        lab = read_labels(labels, settings)
        span = lab.span
        if span is None:
            raise ConfigError(f"--labels {labels}: no labels")
        start = span[0] if start is None else start
        end = span[1] + grace if end is None else end
        with ExitStack() as stack:
            if lab.csv is not None:
                batches = csv_batches(lab.csv, since=start, until=end)
                shown = labels
            else:
                parsed = parse_source(source or "store", settings)
                if isinstance(parsed, KafkaSource):
                    batches = iter(KafkaReader(parsed, since=start, until=end))
                    shown = f"kafka://{parsed.bootstrap}/{parsed.topic}"
                else:
                    st = stack.enter_context(open_history(parsed.url, settings))
                    batches = store_batches(st, since=start, until=end)
                    shown = _safe_url(parsed.url)
            alerts, n = replay_alerts(settings, None, batches)
        result = score(None, lab, alerts, n, grace, start, end)
    except MqttAnomalyError as exc:
        fail(escape(" ".join(str(exc).split())))
    doc = {
        **result.as_json(),
        "detectors": list(settings.detector.detectors),
        "labels": lab.spec,
        "source": shown,
        "since": start,
        "until": end,
    }
    if as_json:
        emit(json.dumps(doc))
        return
    out.print(
        f"{', '.join(doc['detectors'])} on {n:,} readings of {shown} against {doc['labels']}: "
        f"precision {result.precision:.3f}, recall {result.recall:.3f}, F1 {result.f1:.3f} "
        f"(TP {result.true_positives}, FP {result.false_positives}, "
        f"FN {result.false_negatives}; {result.alerts} alerts raised)",
        markup=False,
    )

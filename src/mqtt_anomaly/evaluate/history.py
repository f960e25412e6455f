"""``evaluate history``: the configured detectors replayed over recorded readings, scored on
labels: operator feedback (``--labels feedback[:STORE_URL]``), a simulator labels file or a
labelled CSV. The scoring is ``models evaluate``'s (:mod:`mqtt_anomaly.models.work`), for
the detectors of the settings, untrained, instead of a model.
"""

from __future__ import annotations

import json
from contextlib import ExitStack

from ..cli.options import (
    ConfigOpt,
    DetectorsOpt,
    GraceOpt,
    JsonOpt,
    LabelledFromOpt,
    LabelsOpt,
    SinceOpt,
    UntilOpt,
)


def history(
    labels: LabelsOpt,
    config: ConfigOpt = None,
    source: LabelledFromOpt = None,
    detectors: DetectorsOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    grace: GraceOpt = 10.0,
    as_json: JsonOpt = False,
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
    from ..models.data import LabelledPeriod, check_grace, read_labels
    from ..models.work import replay_alerts, score
    from ..replay.command import _detector_names, _time

    try:
        check_grace(grace)
        names = _detector_names(detectors)
        settings = settings_from_cli(config, {"detector": {"detectors": names}})
        start, end = _time(since, "--since"), _time(until, "--until")
        lab = read_labels(labels, settings)
        span = lab.span
        if span is None:
            raise ConfigError(f"--labels {labels}: no labels")
        start = span[0] if start is None else start
        end = span[1] + grace if end is None else end
        period = LabelledPeriod(lab, source, settings, start, end)
        shown = period.shown
        with ExitStack() as stack:
            alerts, n = replay_alerts(settings, None, period.batches(stack))
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

"""``evaluate sim``: the live pipeline scored on the simulator's ground truth.

A simulated fleet with faults injected at known times publishes to a broker (an embedded one
unless a URL is given); the detector service, as ``detect`` runs it, listens. Afterwards every
*raised* alert is matched to the injected faults (labels) of its sensor:

- an alert **matches** a fault when its time (the reading's timestamp, or the alert's own time
  for offline and silence alerts, which no reading carries) falls within ``[start, end + grace]``;
- a fault is **detected** when at least one alert matches it; its **delay** is the first
  matching alert's time minus the fault's start;
- an alert that matches no fault is a **false alarm**.

Recall and delay are reported per fault kind; precision over all alerts (an alert does not
say which kind of fault it saw). Faults that start during the first ``warmup`` seconds, while
the detectors are still learning, are not counted, and alerts in that time are ignored; nor
are faults that start too close to the end of the run to be seen.

>>> labels = [Label("S1", "spike", 100.0, 100.0), Label("S2", "stuck", 50.0, 80.0)]
>>> def alert(sid: str, t: float) -> Alert:
...     return Alert(sid, "d", "warning", "raised", 1.0, 0.9, None, None, None, t, t)
>>> r = score_alerts(labels, [alert("S1", 100.0), alert("S2", 70.0), alert("S3", 60.0)])
>>> (r.precision, r.recall, [k.delay_p50 for k in r.by_kind])
(0.6666666666666666, 1.0, [0.0, 20.0])
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import FaultRates, Settings
from ..messages import Alert
from ..pipeline import OFFLINE, SILENCE, Output
from ..service import DetectorService
from ..simulate import Fleet, Label, read_labels
from ..store.base import NullStore
from ..transport.embedded import EmbeddedBroker

#: faults per sensor-hour before ``rate_scale``: every kind, crashes included
EVAL_RATES = {
    "spike": 2.0,
    "level_shift": 1.0,
    "drift": 1.0,
    "stuck": 1.0,
    "noise_burst": 1.0,
    "dropout": 0.5,
    "crash": 0.25,
}


@dataclass(frozen=True)
class KindScore:
    """Recall and delay for one kind of fault."""

    kind: str
    faults: int
    detected: int
    recall: float
    delay_p50: float | None
    delay_max: float | None


@dataclass
class SimReport:
    """The outcome of one simulated run."""

    faults: int
    detected: int
    alerts: int
    false_alarms: int
    precision: float
    recall: float
    f1: float
    by_kind: list[KindScore]
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _when(a: Alert) -> float:
    if a.detector in (OFFLINE, SILENCE) or a.reading_ts is None:
        return a.alert_ts  # raised by a status message or by the clock, not by a reading
    return a.reading_ts


def score_alerts(
    labels: list[Label],
    alerts: list[Alert],
    *,
    grace: float = 10.0,
    since: float = -1e300,
    until: float = 1e300,
) -> SimReport:
    """Match raised alerts to labels (see the module docstring); faults that start outside
    ``[since, until]`` are not counted, nor alerts before ``since``."""
    faults = [lb for lb in labels if since <= lb.start <= until]
    by_sensor: dict[str, list[int]] = defaultdict(list)
    for i, lb in enumerate(faults):
        by_sensor[lb.sensor_id].append(i)
    first: dict[int, float] = {}
    raised = [a for a in alerts if a.state == "raised" and _when(a) >= since]
    matched = 0
    for a in raised:
        t = _when(a)
        hits = [
            i
            for i in by_sensor.get(a.sensor_id, ())
            if faults[i].start <= t <= faults[i].end + grace
        ]
        if hits:
            matched += 1
            for i in hits:
                first[i] = min(first.get(i, t), t)
    kinds: dict[str, list[int]] = defaultdict(list)
    for i, lb in enumerate(faults):
        kinds[lb.kind].append(i)
    by_kind = []
    for kind in sorted(kinds):
        idx = kinds[kind]
        delays = [first[i] - faults[i].start for i in idx if i in first]
        by_kind.append(
            KindScore(
                kind=kind,
                faults=len(idx),
                detected=len(delays),
                recall=len(delays) / len(idx),
                delay_p50=statistics.median(delays) if delays else None,
                delay_max=max(delays) if delays else None,
            )
        )
    precision = matched / len(raised) if raised else 1.0
    recall = len(first) / len(faults) if faults else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return SimReport(
        faults=len(faults),
        detected=len(first),
        alerts=len(raised),
        false_alarms=len(raised) - matched,
        precision=precision,
        recall=recall,
        f1=f1,
        by_kind=by_kind,
    )


def eval_settings(
    settings: Settings,
    *,
    url: str,
    sensors: int,
    interval: float,
    seed: int,
    rate_scale: float,
    workdir: Path,
) -> Settings:
    """Settings for an evaluation run: this broker, this fleet, faults at scaled rates."""
    rates = FaultRates(**{k: v * rate_scale for k, v in EVAL_RATES.items()})
    return settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"url": url, "client_id": "mqtt-anomaly-eval", "keepalive": 2}
            ),
            "simulator": settings.simulator.model_copy(
                update={
                    "sensors": sensors,
                    "interval": interval,
                    "seed": seed,
                    "faults": rates,
                    "labels_file": workdir / "labels.jsonl",
                    "client_id_prefix": f"eval-{seed}-",
                }
            ),
            "detector": settings.detector.model_copy(update={"interval": interval}),
            "service": settings.service.model_copy(update={"state_dir": workdir / "state"}),
        }
    )


async def run_sim_evaluation(
    settings: Settings,
    *,
    broker_url: str | None = None,
    sensors: int = 50,
    interval: float = 0.2,
    duration: float = 120.0,
    warmup: float = 20.0,
    seed: int = 1,
    rate_scale: float = 30.0,
) -> SimReport:
    """Run fleet and service together for ``duration`` seconds and score the alerts."""
    alerts: list[Alert] = []

    def collect(out: Output) -> None:
        alerts.extend(out.alerts)

    async with contextlib.AsyncExitStack() as stack:
        if broker_url is None:
            broker = await stack.enter_async_context(EmbeddedBroker(host="127.0.0.1", port=0))
            broker_url = broker.url
        workdir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="mqtt-anomaly-eval-"))
        )
        s = eval_settings(
            settings,
            url=broker_url,
            sensors=sensors,
            interval=interval,
            seed=seed,
            rate_scale=rate_scale,
            workdir=workdir,
        )
        service = DetectorService(s, store=NullStore(), console=False)
        service.listeners.append(collect)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()
        fleet = Fleet(s)
        try:
            await fleet.start()
            await fleet.run(duration=duration)
        finally:
            # the service stops first: the fleet's clean shutdown (offline status, silence)
            # is not a fault
            stop.set()
            await task
            await fleet.stop(graceful=True)
        started = fleet.started_at or 0.0
        labels = (
            read_labels(workdir / "labels.jsonl") if (workdir / "labels.jsonl").exists() else []
        )
    grace = max(2.0, 10 * interval)
    tail = s.detector.silence_factor * interval + grace  # too late to be seen before the end
    report = score_alerts(
        labels, alerts, grace=grace, since=started + warmup, until=started + duration - tail
    )
    report.settings = {
        "sensors": sensors,
        "interval": interval,
        "duration": duration,
        "warmup": warmup,
        "seed": seed,
        "rate_scale": rate_scale,
        "grace": grace,
        "detectors": list(settings.detector.detectors),
    }
    return report

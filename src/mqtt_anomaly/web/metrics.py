"""Prometheus metrics of a running :class:`~mqtt_anomaly.service.DetectorService`.

Nothing here runs per message. Counts the pipeline keeps anyway (its view's counters), the
store's and the Kafka sink's counters, the last batch and the broker connection are read
when Prometheus scrapes, by a custom collector. What the pipeline does not count is updated
once per batch by :meth:`ServiceMetrics.observe` (a service listener): alerts by detector,
severity and state, and the end-to-end latency histogram, whose buckets are filled with one
numpy call per batch (from an even sample of at most ``LATENCY_SAMPLE`` readings of a larger
batch, weighted, so the histogram's count stays the number of readings).

Every metric name starts with ``mqtt_anomaly_``; :data:`METRIC_NAMES` lists them (the Grafana
dashboard test checks its queries against it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..pipeline import Output

if TYPE_CHECKING:
    from ..routing.sink import RoutingSink
    from ..service import DetectorService
    from ..sinks.kafka import KafkaSink

P: Final = "mqtt_anomaly_"
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

DRIFT_QUANTILES: Final = (0.5, 0.9, 0.99)
DRIFT_TOP: Final = 5  # the most drifted sensors, by name (a bounded set of series)
LATENCY_SAMPLE: Final = 128  # readings per batch whose latency is measured (exact below it)
# name (without prefix) → type, as exposed (counters without their ``_total`` suffix)
METRICS: Final[dict[str, str]] = {
    "messages_received": "counter",
    "readings_processed": "counter",
    "readings_late": "counter",
    "readings_stale": "counter",
    "duplicates_dropped": "counter",
    "status_messages": "counter",
    "seq_conflicts": "counter",
    "sparkplug_events": "counter",
    "sensors_evicted": "counter",
    "sensors_rejected": "counter",
    "dead_letters": "counter",
    "dead_letters_suppressed": "counter",
    "alerts": "counter",
    "latency_seconds": "histogram",
    "sensors": "gauge",
    "sensors_active": "gauge",
    "assets": "gauge",
    "last_batch_size": "gauge",
    "outgoing_pending": "gauge",
    "outgoing_queued": "gauge",
    "floods_active": "gauge",
    "floods": "counter",
    "alerts_aggregated": "counter",
    "readings_unacknowledged": "gauge",
    "delivery_rounds": "counter",
    "delivery_slow_rounds": "counter",
    "delivery_round_seconds": "gauge",
    "alerts_not_repeated": "counter",
    "alerts_resumed": "counter",
    "intake_paused": "gauge",
    "store_duplicates": "counter",
    "broker_connected": "gauge",
    "ready": "gauge",
    "store_readings_written": "counter",
    "store_alerts_written": "counter",
    "store_queued": "gauge",
    "store_readings_dropped": "counter",
    "store_alerts_dropped": "counter",
    "store_errors": "counter",
    "store_expired": "counter",
    "store_write_seconds": "gauge",
    "store_write_rows": "gauge",
    "kafka_messages": "counter",
    "kafka_errors": "counter",
    "kafka_recoveries": "counter",
    "kafka_backlog": "gauge",
    "kafka_backlog_limit": "gauge",
    "kafka_connected": "gauge",
    "sse_clients": "gauge",
    "http_refused": "counter",
    "receiver_notices_sent": "counter",
    "receiver_notices_failed": "counter",
    "receiver_notices_dropped": "counter",
    "receiver_queue_depth": "gauge",
    "routing_incidents": "gauge",
    "readings_gated": "counter",
    "models_stale": "gauge",
    "models_learning": "gauge",
    "model_drift": "gauge",
    "model_drift_top": "gauge",
    "reloads": "counter",
    "config_info": "gauge",
    "shadow_alerts": "counter",
    "shadow_seconds": "counter",
}
_SUFFIXES: Final = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
METRIC_NAMES: Final = frozenset(
    P + name + suffix for name, kind in METRICS.items() for suffix in _SUFFIXES[kind]
)


class ServiceMetrics(Collector):
    """The collector and per-batch observer for one service; owns its own registry."""

    def __init__(self, service: DetectorService) -> None:
        self.service = service
        self.sse_clients: Callable[[], int] = lambda: 0
        self.http_refused: Callable[[], dict[str, int]] = dict
        self._bounds = np.asarray(LATENCY_BUCKETS, dtype=np.float64)
        self._buckets = np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.float64)  # last: +Inf only
        self._latency_sum = 0.0
        self._alerts: dict[tuple[str, str, str], int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ---- per batch ---------------------------------------------------------------------
    def observe(self, out: Output) -> None:
        """Count one batch's alerts and the latency of its readings."""
        for a in out.alerts:
            key = (a.detector, a.severity, a.state)
            self._alerts[key] = self._alerts.get(key, 0) + 1
        rs = out.readings
        n = len(rs)
        if not n:
            return
        if n > LATENCY_SAMPLE:  # a large batch: an even sample, each standing for n/k readings
            rs = rs[:: -(-n // LATENCY_SAMPLE)]
        now = self.service.clock()
        lat = now - np.fromiter((r.ts for r in rs), dtype=np.float64, count=len(rs))
        np.maximum(lat, 0.0, out=lat)  # a sensor clock ahead of ours is not negative latency
        weight = n / len(rs)
        idx = np.searchsorted(self._bounds, lat, side="left")
        self._buckets += np.bincount(idx, minlength=len(self._buckets)) * weight
        self._latency_sum += float(lat.sum()) * weight

    # ---- at scrape time ----------------------------------------------------------------
    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        c = svc.pipeline.view().counters()
        yield _counter(
            "messages_received", "MQTT messages received (readings and status)", c.received
        )
        yield _counter("readings_processed", "Readings scored by the detectors", c.processed)
        yield _counter("readings_late", "Out-of-order readings stored but not scored", c.late)
        yield _counter("readings_stale", "Readings too far behind to place, dropped", c.stale)
        yield _counter("duplicates_dropped", "QoS 1 redeliveries dropped", c.duplicates)
        yield _counter("status_messages", "Sensor status (online/offline) messages", c.status)
        yield _counter(
            "seq_conflicts", "Repeated seqs with another value (dead letters)", c.seq_conflicts
        )
        yield _counter(
            "sensors_evicted", "Silent sensors forgotten to make room", c.sensors_evicted
        )
        yield _counter("sensors_rejected", "Messages of sensors refused a slot", c.sensors_rejected)
        sparkplug = CounterMetricFamily(
            P + "sparkplug_events", "Sparkplug B host events by kind", labels=["event"]
        )
        for event, n in svc.pipeline.view().sparkplug_counters().items():
            sparkplug.add_metric([event], n)
        yield sparkplug
        dead = CounterMetricFamily(
            P + "dead_letters", "Rejected messages by reason", labels=["reason"]
        )
        for reason, n in sorted(c.dead_by_reason.items()):
            dead.add_metric([reason], n)
        yield dead
        yield _counter(
            "dead_letters_suppressed",
            "Dead letters not republished (rate limit)",
            svc.dead_letters_suppressed,
        )
        alerts = CounterMetricFamily(
            P + "alerts", "Alert events by detector, severity and state",
            labels=["detector", "severity", "state"],
        )  # fmt: skip
        for (det, sev, state), n in sorted(self._alerts.items()):
            alerts.add_metric([det, sev, state], n)
        yield alerts
        yield self._latency()
        yield from self._sensors()
        yield from self._model_health()
        yield _gauge(
            "last_batch_size",
            "Messages in the last network read, processed as one batch (grows when behind)",
            svc.last_batch,
        )
        yield _gauge(
            "outgoing_pending", "Published QoS 1 messages not yet acknowledged", svc.client.pending
        )
        yield _gauge(
            "outgoing_queued",
            "Publishes waiting for the in-flight window (broker.max_inflight) or the connection",
            svc.client.queued,
        )
        fl = svc.floods
        yield _gauge("floods_active", "Alert floods going on", fl.active)
        yield _counter("floods", "Alert floods raised", fl.floods_raised)
        yield _counter(
            "alerts_aggregated", "Alerts of floods not published one by one", fl.aggregated
        )
        yield from self._delivery()
        yield from self._lifecycle()
        yield _gauge(
            "broker_connected", "1 while connected to the broker", float(svc.client.connected)
        )
        yield _gauge(
            "ready",
            "1 once connected and subscribed",
            float(svc.ready.is_set() and svc.client.connected),
        )
        yield from self._store()
        yield from self._kafka()
        yield from self._routing()
        gates = svc.gates
        yield _counter(
            "readings_gated",
            "Readings not scored: an operating-state gate held their sensor",
            gates.held if gates is not None else 0,
        )
        yield _gauge("sse_clients", "Dashboards connected to the event stream", self.sse_clients())
        refused = CounterMetricFamily(
            P + "http_refused", "HTTP requests refused by a limit", labels=["reason"]
        )
        for reason, n in sorted(self.http_refused().items()):
            refused.add_metric([reason], n)
        yield refused

    def _lifecycle(self) -> Iterator[Metric]:
        svc = self.service
        r = svc.reloads
        reloads = CounterMetricFamily(
            P + "reloads", "Configuration reloads by result", labels=["result"]
        )
        for result, n in r.counts.items():
            reloads.add_metric([result], n)
        yield reloads
        info = GaugeMetricFamily(
            P + "config_info",
            "The configuration and model version in force (always 1)",
            labels=["config_version", "model_version"],
        )
        info.add_metric([r.version, r.model_version or ""], 1)
        yield info
        if svc.shadow is not None:
            sc = svc.shadow.scorer
            n = svc.shadow.alerts
            yield _counter("shadow_alerts", "Alert events of the shadow candidate", n)
            yield _counter("shadow_seconds", "CPU seconds the shadow candidate scored", sc.seconds)

    def _delivery(self) -> Iterator[Metric]:
        svc = self.service
        yield _gauge(
            "readings_unacknowledged",
            "Readings processed and waiting for their round to be acknowledged to the broker",
            svc.client.held_acks,
        )
        yield _gauge(
            "intake_paused", "1 while reading from the broker is paused", float(svc.client.paused)
        )
        tracker = svc.tracker
        if tracker is None:
            return
        st = tracker.stats
        yield _counter(
            "delivery_rounds", "Rounds that acknowledged readings once durable", st.rounds
        )
        yield _counter(
            "delivery_slow_rounds", "Rounds that waited over 5 s for a sink", st.slow_rounds
        )
        yield _gauge("delivery_round_seconds", "How long the last round took", st.last_round)
        outbox = svc.outbox
        if outbox is not None:
            yield _counter(
                "alerts_not_repeated",
                "Alerts raised again after a restart and not sent again (already published)",
                outbox.suppressed,
            )
            yield _counter(
                "alerts_resumed",
                "Alerts not acknowledged before a restart and sent or resumed at start",
                outbox.resent,
            )

    def _latency(self) -> Metric:
        h = HistogramMetricFamily(
            P + "latency_seconds", "From a reading's timestamp to the end of its processing"
        )
        cumulative = np.cumsum(self._buckets).tolist()
        buckets = [(_le(b), float(n)) for b, n in zip(LATENCY_BUCKETS, cumulative, strict=False)]
        buckets.append(("+Inf", float(cumulative[-1])))
        h.add_metric([], buckets, self._latency_sum)
        return h

    def _sensors(self) -> Iterator[Metric]:
        view = self.service.pipeline.view()
        g = GaugeMetricFamily(P + "sensors", "Known sensors by health", labels=["health"])
        for health, count in view.health_counts().items():
            g.add_metric([health], count)
        yield g
        active = view.sensors_active(self.service.clock())
        yield _gauge("sensors_active", "Sensors that sent a reading recently", active)
        phases = {"commissioning": 0, "monitoring": 0, "incomplete": 0}
        alarms = 0
        for a in view.assets():
            phases[a.phase] = phases.get(a.phase, 0) + 1
            alarms += a.alarm
        g = GaugeMetricFamily(
            P + "assets", "Assets by phase, and those in alarm", labels=["phase", "alarm"]
        )
        for phase, count in phases.items():
            g.add_metric([phase, "any"], count)
        g.add_metric(["any", "true"], alarms)
        yield g

    def _model_health(self) -> Iterator[Metric]:
        """Drift and model health as a few aggregates, whatever the number of sensors: stale
        models by reason, drift quantiles and maximum, the ``DRIFT_TOP`` most drifted."""
        view = self.service.pipeline.view()
        r = view.model_health(self.service.clock())
        stale = GaugeMetricFamily(
            P + "models_stale", "Sensors whose model looks stale, by reason", labels=["reason"]
        )
        stale.add_metric(["any"], int(np.count_nonzero(r.stale)))
        for reason, flags in (("drift", r.stale_drift), ("alerts", r.stale_alerts),
                              ("age", r.stale_age)):  # fmt: skip
            stale.add_metric([reason], int(np.count_nonzero(flags)))
        yield stale
        yield _gauge(
            "models_learning",
            "Sensors still learning their reference score distribution",
            r.learning,
        )
        known = r.drift[~np.isnan(r.drift)]
        drift = GaugeMetricFamily(
            P + "model_drift",
            "Drift (PSI of recent vs reference scores) across sensors: quantiles and max",
            labels=["quantile"],
        )
        if len(known):
            for q, v in zip(DRIFT_QUANTILES, np.quantile(known, DRIFT_QUANTILES), strict=True):
                drift.add_metric([repr(q)], float(v))
            drift.add_metric(["1.0"], float(known.max()))
        yield drift
        top = GaugeMetricFamily(
            P + "model_drift_top",
            f"Drift of the {DRIFT_TOP} most drifted sensors",
            labels=["rank", "sensor_id"],
        )
        if len(known):
            column = np.where(np.isnan(r.drift), -np.inf, r.drift)
            k = min(DRIFT_TOP, len(known))
            best = np.argpartition(-column, k - 1)[:k]
            ids = view.sensor_ids()
            for rank, slot in enumerate(best[np.argsort(-column[best])].tolist(), 1):
                top.add_metric([str(rank), ids[slot]], float(column[slot]))
        yield top

    def _store(self) -> Iterator[Metric]:
        store = self.service.store
        if store is None:
            return
        s = store.stats
        yield _counter("store_readings_written", "Readings written to the history store", s.written)
        yield _counter(
            "store_alerts_written", "Alerts written to the history store", s.alerts_written
        )
        yield _gauge("store_queued", "Readings and alerts waiting to be written", s.queued)
        yield _counter("store_readings_dropped", "Readings dropped: store queue full", s.dropped)
        yield _counter("store_alerts_dropped", "Alerts dropped: store queue full", s.alerts_dropped)
        yield _counter("store_errors", "Failed store write attempts", s.errors)
        yield _counter("store_expired", "Readings deleted by retention", s.expired)
        yield _counter(
            "store_duplicates", "Readings offered again and not stored twice", s.duplicates
        )
        yield _gauge("store_write_seconds", "Duration of the last store commit", s.write_seconds)
        yield _gauge("store_write_rows", "Rows in the last store commit", s.write_rows)

    def _kafka(self) -> Iterator[Metric]:
        sink: KafkaSink | None = getattr(self.service, "kafka", None)
        if sink is None:
            return
        k = sink.stats
        messages = CounterMetricFamily(
            P + "kafka_messages",
            "Kafka sink messages by outcome: produced (accepted), delivered (confirmed by"
            " Kafka), dropped (buffer full), refused (invalid for Kafka)",
            labels=["outcome"],
        )
        for outcome, n in (
            ("produced", k.produced),
            ("delivered", k.delivered),
            ("dropped", k.dropped),
            ("refused", k.refused),
        ):
            messages.add_metric([outcome], n)
        yield messages
        yield _counter("kafka_errors", "Failed Kafka deliveries and client errors", k.errors)
        yield _counter(
            "kafka_recoveries", "Kafka producers rebuilt after a fatal or stuck state", k.recoveries
        )
        yield _gauge("kafka_backlog", "Messages given to Kafka and not yet confirmed", k.backlog)
        yield _gauge("kafka_backlog_limit", "Backlog above which intake pauses", sink.backlog_limit)
        yield _gauge("kafka_connected", "1 while Kafka is reachable and delivering", k.connected)

    def _routing(self) -> Iterator[Metric]:
        sink: RoutingSink | None = getattr(self.service, "routing", None)
        if sink is None:
            return
        stats = sink.stats()
        families = [
            (CounterMetricFamily, "sent", "Notices a receiver accepted"),
            (CounterMetricFamily, "failed", "Attempts to send a notice that failed (retries too)"),
            (CounterMetricFamily, "dropped", "Notices lost: outbox full, or refused for good"),
            (GaugeMetricFamily, "queue_depth", "Notices waiting for their receiver"),
        ]
        for index, (family, what, doc) in enumerate(families):
            name = f"receiver_notices_{what}" if index < 3 else f"receiver_{what}"
            metric = family(P + name, doc, labels=["receiver"])
            for receiver, values in sorted(stats.items()):
                metric.add_metric([receiver], values[index])
            yield metric
        yield _gauge("routing_incidents", "Open incidents of the routes", sink.router.incidents)


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(P + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(P + name, doc, value=value)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))

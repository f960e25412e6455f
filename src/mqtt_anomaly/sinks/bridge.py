"""Kafka as a sink: an adapter over :class:`~mqtt_anomaly.sinks.kafka.KafkaSink`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import BaseSink

if TYPE_CHECKING:
    from ..pipeline import Output
    from .kafka import KafkaSink


class KafkaBridge(BaseSink):
    """Every batch's readings, alerts and health to ``kafka`` (:meth:`KafkaSink.send`, which
    never waits for Kafka). Durable: delivery rounds wait for Kafka's confirmations. The
    producer's owner closes it (after the service stopped: the last round needs it)."""

    name = "kafka"

    def __init__(self, kafka: KafkaSink) -> None:
        self.kafka = kafka
        self.durable = kafka

    def write(self, out: Output) -> None:
        self.kafka.send(out)

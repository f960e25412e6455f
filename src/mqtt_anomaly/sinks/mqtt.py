"""MQTT as a sink: alerts, flood events, retained health and dead letters, all QoS 1, over the
service's own connection (a :class:`~mqtt_anomaly.transport.base.Transport`).

- **alerts** go through the flood filter (:mod:`mqtt_anomaly.floods`): one by one on
  ``topics.alerts`` unless part of a flood, whose aggregated events go to ``topics.floods``.
  The console shows the same alerts (:meth:`.console.ConsoleSink.show`);
- **eviction**: a sensor that lost its slot has its retained health cleared (an empty
  retained payload) *before* this batch's health, so an id evicted and back in one batch keeps
  its new health; one log line per burst;
- **health**: retained, on ``topics.health``;
- **commands**: Sparkplug NCMD rebirth requests, QoS 0 as the specification has them;
- **dead letters** to ``topics.deadletter``, at most ``dead_letter_rate`` a second (a token
  bucket; the rest are counted in :attr:`MqttSink.dead_letters_suppressed`), each logged
  (rate-limited by reason).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..console import RateLimitedLog
from ..floods import FloodEvent, FloodFilter
from ..messages import Alert, encode
from ..topics import TopicTemplate
from ..transport.codec import (
    CONTENT_TYPE,
    MESSAGE_EXPIRY,
    PAYLOAD_FORMAT,
    USER_PROPERTY,
    PropertyValue,
    encode_properties,
)
from .base import BaseSink

if TYPE_CHECKING:
    from ..config import Settings
    from ..outbox import Outbox
    from ..pipeline import Output
    from ..transport.base import Transport
    from .console import ConsoleSink

log = logging.getLogger("mqtt_anomaly.service")  # the operator knows these lines by this name


def _alert_properties(alert: Alert, expiry: int) -> bytes:
    """MQTT 5: what a consumer can route an alert by without parsing it, and its expiry.

    >>> from mqtt_anomaly.transport.codec import decode_properties
    >>> a = Alert("S1", "threshold", "critical", "raised", 98.2, 1.0, 90.0, None, None, 1.0, 1.0)
    >>> decode_properties(_alert_properties(a, 60))  # doctest: +NORMALIZE_WHITESPACE
    [(1, 1), (3, 'application/json'), (2, 60), (38, ('sensor_id', 'S1')),
     (38, ('detector', 'threshold')), (38, ('severity', 'critical')), (38, ('state', 'raised'))]
    """
    props: list[tuple[int, PropertyValue]] = [
        (PAYLOAD_FORMAT, 1),
        (CONTENT_TYPE, "application/json"),
    ]
    if expiry:
        props.append((MESSAGE_EXPIRY, expiry))
    props += [
        (USER_PROPERTY, ("sensor_id", alert.sensor_id)),
        (USER_PROPERTY, ("detector", alert.detector)),
        (USER_PROPERTY, ("severity", alert.severity)),
        (USER_PROPERTY, ("state", alert.state)),
    ]
    return encode_properties(props)


class MqttSink(BaseSink):
    """See the module docstring. ``clock``: the time the flood filter counts in;
    ``evicted_total``: the sensors evicted so far (for the eviction log line)."""

    name = "mqtt"

    def __init__(
        self,
        transport: Transport,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        console: ConsoleSink | None = None,
        dead_letter_rate: float = 100.0,
        evicted_total: Callable[[], int] = lambda: 0,
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.clock = clock
        self.console = console
        self.floods = FloodFilter(settings.alerts, settings.topics.readings)
        self._alerts_topic = TopicTemplate(settings.topics.alerts)
        self._health_topic = TopicTemplate(settings.topics.health)
        self._evicted_total = evicted_total
        self._ratelog = RateLimitedLog(log)
        self._dl_budget = dead_letter_rate
        self._dl_rate = dead_letter_rate
        self._dl_refill = time.monotonic()
        self.dead_letters_suppressed = 0
        self.outbox: Outbox | None = None
        """When set, alerts go out through it (:mod:`mqtt_anomaly.outbox`): once each."""

    def write(self, out: Output) -> None:
        if out.alerts:
            shown, floods = self.floods.feed(out.alerts, self.clock())
            self._publish_alerts(shown, floods)
        if out.evicted:  # before health: an id evicted and back in one batch keeps its new
            self._evicted(out.evicted)
        if out.health:
            publish, topic = self.transport.publish, self._health_topic
            for sid, state in out.health:
                publish(topic.format(sid), state.encode(), qos=1, retain=True)
        if out.dead:
            self._dead_letters(out)
        for command, payload in out.commands:  # Sparkplug rebirth requests (NCMD: QoS 0)
            self.transport.publish(command, payload, qos=0)

    def tick(self, now: float) -> None:
        """The flood filter's periodic check (updates, ends and their stragglers), then the
        console's summary of the alert lines it refused."""
        self._publish_alerts(*self.floods.tick(now))
        if self.console is not None:
            self.console.summarise()

    def _publish_alerts(self, shown: list[Alert], floods: list[FloodEvent]) -> None:
        publish, topic = self.transport.publish, self._alerts_topic
        v5 = self.settings.broker.protocol == "5"
        expiry = self.settings.broker.message_expiry
        if self.outbox is not None:  # written down first, an id published already is not sent
            self.outbox.send(
                [
                    (
                        a.id,
                        topic.format(a.sensor_id),
                        encode(a),
                        _alert_properties(a, expiry) if v5 else b"",
                    )
                    for a in shown
                ]
            )
        else:
            for alert in shown:
                props = _alert_properties(alert, expiry) if v5 else b""
                publish(topic.format(alert.sensor_id), encode(alert), qos=1, properties=props)
        console = self.console
        if console is not None and shown:
            console.show(shown)
        for event in floods:
            publish(self.settings.topics.floods, encode(event), qos=1)
        lines = self.floods.lines
        while lines:
            line = lines.pop(0)
            if console is not None:
                console.line(line)

    def _evicted(self, evicted: list[str]) -> None:
        """Clear the retained health of sensors that lost their slot; one log line a burst."""
        publish, topic = self.transport.publish, self._health_topic
        for sid in evicted:
            publish(topic.format(sid), b"", qos=1, retain=True)
        s = self.settings.service
        self._ratelog.info(
            "evicted",
            "sensor table full (service.max_sensors = %d): forgot %d sensor(s) silent for over "
            "service.evict_after = %gs, e.g. %s (%d in all)",
            s.max_sensors,
            len(evicted),
            s.evict_after,
            evicted[0],
            self._evicted_total(),
        )

    def _dead_letters(self, out: Output) -> None:
        now = time.monotonic()
        self._dl_budget = min(
            self._dl_rate, self._dl_budget + (now - self._dl_refill) * self._dl_rate
        )
        self._dl_refill = now
        topic = self.settings.topics.deadletter
        publish = self.transport.publish
        for d in out.dead:
            self._ratelog.warning(
                d.reason, "rejected message on %s: %s %s", d.topic, d.reason, d.detail
            )
            if self._dl_budget >= 1:
                self._dl_budget -= 1
                publish(topic, encode(d), qos=1)
            else:
                self.dead_letters_suppressed += 1

"""What the HTTP side keeps about one service: metrics, alert desk, event hub."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..pipeline import Output
from ..view import PipelineView
from .alerts import AlertDesk
from .events import EventHub
from .metrics import ServiceMetrics
from .settings import HttpSettings

if TYPE_CHECKING:
    from ..service import DetectorService


@dataclass
class WebState:
    """Attached to a service as one listener: called once per batch."""

    service: DetectorService
    settings: HttpSettings
    metrics: ServiceMetrics
    desk: AlertDesk
    hub: EventHub
    view: PipelineView
    refused: dict[str, int] = field(
        default_factory=lambda: {"rate_limit": 0, "event_clients": 0}
    )  # requests refused by a limit, by reason (RateLimit, the event stream's cap)

    @classmethod
    def attach(cls, service: DetectorService, settings: HttpSettings) -> WebState:
        """Create the state and register it as a listener of ``service``."""
        view = service.pipeline.view()
        state = cls(
            service,
            settings,
            ServiceMetrics(service),
            AlertDesk(view, service.clock, settings.alert_history),
            EventHub(view, settings.sse_queue, settings.sse_heartbeat, settings.max_event_clients),
            view,
        )
        state.metrics.sse_clients = lambda: state.hub.slots  # streams admitted, not yet ended
        state.metrics.http_refused = lambda: state.refused
        service.listeners.append(state.on_batch)
        return state

    def on_batch(self, out: Output) -> None:
        """Per batch: metrics, alert desk, live events."""
        self.metrics.observe(out)
        if out.alerts:
            self.desk.observe(out)
        self.hub.publish(out)

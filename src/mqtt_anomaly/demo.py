"""``mqtt-anomaly demo``: a small fleet and the detector together, on any machine.

The broker is ``--broker`` when given; otherwise ``localhost:1883`` when an MQTT broker answers
there; otherwise an embedded broker started in-process on a free port (``--embedded`` forces
it). The fleet gets a spike within the first ten seconds, so an alert always shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path

from .config import Settings
from .console import emit
from .service import DetectorService
from .simulate import Fleet, Injection, parse_injection
from .store import open_store
from .transport.embedded import EmbeddedBroker, broker_answers

DEMO_INJECTIONS = ("spike@5:1", "level_shift@25+40:3", "stuck@45+60:2")


def demo_settings(settings: Settings, url: str, state_dir: Path) -> Settings:
    """The demo's settings: this broker, a per-run client id, history in ``state_dir``."""
    store = settings.store
    if store.url == type(store)().url:  # the default file: keep the demo's history apart
        store = store.model_copy(update={"url": f"sqlite:///{state_dir / 'demo.db'}"})
    return settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"url": url, "client_id": settings.broker.client_id or "mqtt-anomaly-demo"}
            ),
            "service": settings.service.model_copy(update={"state_dir": state_dir}),
            "store": store,
        }
    )


async def choose_broker(
    settings: Settings, *, given: bool, embedded: bool, stack: contextlib.AsyncExitStack
) -> str:
    if given and not embedded:
        return settings.broker.url
    if not embedded and await broker_answers("localhost", 1883):
        return "mqtt://localhost:1883"
    broker = await stack.enter_async_context(EmbeddedBroker(host="127.0.0.1", port=0))
    emit(f"[INFO] Started an embedded MQTT broker at {broker.url.removeprefix('mqtt://')}")
    return broker.url


async def run_demo(
    settings: Settings,
    *,
    broker_given: bool,
    embedded: bool,
    duration: float | None,
    injections: tuple[Injection, ...] | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    inj = injections if injections is not None else tuple(map(parse_injection, DEMO_INJECTIONS))
    async with contextlib.AsyncExitStack() as stack:
        url = await choose_broker(settings, given=broker_given, embedded=embedded, stack=stack)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mqtt-anomaly-demo-")))
        settings = demo_settings(settings, url, tmp)
        store = stack.enter_context(open_store(settings.store.url, settings.store))
        service = DetectorService(settings, store=store)
        service_task = asyncio.create_task(service.run(stop))
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait({service_task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if service_task.done():
            ready.cancel()
            service_task.result()  # raises the broker error
            return
        fleet = Fleet(settings, injections=inj, console=True)
        try:
            await fleet.start()
            await fleet.run(stop)
        finally:
            await fleet.stop(graceful=True)
            stop.set()
            await service_task

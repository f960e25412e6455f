"""Alert routing through real receivers: the webhook (HMAC signature, idempotency key, retry,
the persisted outbox), Slack and Teams formats, and the service end to end on Mosquitto."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.messages import Alert
from mqtt_anomaly.pipeline import Output
from mqtt_anomaly.routeconf import ReceiverSettings, Route
from mqtt_anomaly.routing.outbox import Outbox
from mqtt_anomaly.routing.receivers import SIGNATURE_HEADER
from mqtt_anomaly.routing.sink import RoutingSink
from mqtt_anomaly.statefile import load
from mqtt_anomaly.web.metrics import ServiceMetrics

from .helpers import eventually, reading_payload
from .mosquitto import Mosquitto
from .receivers import HookServer, hook_server
from .test_service import Running, publisher

__all__ = ["hook_server"]  # the fixture, used by name


def _sample(exposition: str, series: str) -> float:
    (line,) = [x for x in exposition.splitlines() if x.startswith(series + " ")]
    return float(line.split()[-1])


def alert(sid: str, state: str = "raised", sev: str = "warning", ts: float = 1000.0) -> Alert:
    return Alert(
        sid,
        "zscore",
        sev,
        state,
        5.0,
        0.7,
        None,
        1.0,
        2.0,
        ts,
        ts,
        "far off",
        f"{sid}:z:{state}",  # type: ignore[arg-type]
    )


def receiver(kind: str, url: str, **kw: object) -> ReceiverSettings:
    return ReceiverSettings.model_validate({"type": kind, "url": url, **kw})


def sink_for(
    tmp_path: Path, receivers: dict[str, ReceiverSettings], **route: object
) -> RoutingSink:
    r = Route.model_validate({"receivers": list(receivers), "group_wait": 0, **route})
    return RoutingSink([r], receivers, tmp_path / "state")


async def test_webhook_signed_with_idempotency_key(tmp_path: Path, hook_server: HookServer) -> None:
    sink = sink_for(tmp_path, {"ops": receiver("webhook", hook_server.url, secret="k3y")})
    async with sink:
        sink.write(Output(alerts=[alert("S1"), alert("S2")]))
        await eventually(lambda: len(hook_server.requests) == 1, what="the webhook call")
    (req,) = hook_server.requests
    assert req.path == "/hook"
    assert req.headers["content-type"] == "application/json"
    expected = "sha256=" + hmac.new(b"k3y", req.body, hashlib.sha256).hexdigest()
    assert req.headers[SIGNATURE_HEADER.lower()] == expected
    body = json.loads(req.body)
    assert req.headers["idempotency-key"] == body["key"]
    assert body["status"] == "firing"
    assert sorted(a["sensor_id"] for a in body["alerts"]) == ["S1", "S2"]
    wrong = "sha256=" + hmac.new(b"other", req.body, hashlib.sha256).hexdigest()
    assert req.headers[SIGNATURE_HEADER.lower()] != wrong


async def test_a_down_receiver_loses_nothing_and_does_not_block(
    tmp_path: Path, hook_server: HookServer
) -> None:
    hook_server.status = 503
    cfg = {"ops": receiver("webhook", hook_server.url, retry_initial=0.05, retry_max=0.2)}
    sink = sink_for(tmp_path, cfg, group_by=["sensor"])
    async with sink:
        start = time.perf_counter()
        for i in range(20):
            sink.write(Output(alerts=[alert(f"S{i}")]))
        assert time.perf_counter() - start < 0.5  # write never waits for the receiver
        await eventually(lambda: sink.stats()["ops"][1] >= 3, what="failed attempts")
        sent, _failed, dropped, queued = sink.stats()["ops"]
        assert sent == 0 and dropped == 0 and queued == 20
        hook_server.status = 200
        # a notice is counted sent when the receiver took it, then leaves the outbox
        await eventually(
            lambda: sink.stats()["ops"][0] == 20 and sink.stats()["ops"][3] == 0,
            what="all 20 delivered and the outbox empty",
        )
    got = sorted(json.loads(r.body)["alerts"][0]["sensor_id"] for r in hook_server.requests)
    assert got == sorted(f"S{i}" for i in range(20))
    keys = [r.headers["idempotency-key"] for r in hook_server.refused]
    assert keys and set(keys) <= {r.headers["idempotency-key"] for r in hook_server.requests}


async def test_the_outbox_survives_a_restart(tmp_path: Path, hook_server: HookServer) -> None:
    hook_server.status = 500
    cfg = {"ops": receiver("webhook", hook_server.url, retry_initial=0.05, retry_max=0.1)}
    sink = sink_for(tmp_path, cfg)
    async with sink:
        sink.write(Output(alerts=[alert("S1")]))
        await eventually(lambda: len(hook_server.refused) >= 1, what="a refused attempt")
    assert Outbox(tmp_path / "state" / "outbox" / "ops.sqlite", 10).depth == 1
    hook_server.status = 200
    again = sink_for(tmp_path, cfg)
    async with again:
        await eventually(lambda: again.stats()["ops"][0] == 1, what="delivery after restart")
        assert again.stats()["ops"][:3] == (1, 0, 0) and len(hook_server.requests) == 1
    assert json.loads(hook_server.requests[0].body)["alerts"][0]["sensor_id"] == "S1"


async def test_a_full_outbox_drops_the_oldest_and_counts_them(
    tmp_path: Path, hook_server: HookServer
) -> None:
    hook_server.status = 503
    cfg = {"ops": receiver("webhook", hook_server.url, max_queue=5, retry_initial=30)}
    sink = sink_for(tmp_path, cfg, group_by=["sensor"])
    async with sink:
        sink.write(Output(alerts=[alert("S0")]))
        await eventually(lambda: len(hook_server.refused) == 1, what="the first attempt")
        for i in range(1, 9):
            sink.write(Output(alerts=[alert(f"S{i}")]))
        await eventually(lambda: sink.stats()["ops"][2] == 4, what="4 dropped")
        assert sink.stats()["ops"][3] == 5
    box = Outbox(tmp_path / "state" / "outbox" / "ops.sqlite", 10)
    head = box.head()
    assert head is not None and json.loads(head[1])["alerts"][0]["sensor_id"] == "S4"


async def test_a_permanent_refusal_is_dropped_not_retried(
    tmp_path: Path, hook_server: HookServer
) -> None:
    hook_server.status = 400
    sink = sink_for(tmp_path, {"ops": receiver("webhook", hook_server.url)}, group_by=["sensor"])
    async with sink:
        sink.write(Output(alerts=[alert("S1"), alert("S2")]))
        await eventually(lambda: sink.stats()["ops"][2] == 2, what="both dropped")
        assert sink.stats()["ops"] == (0, 2, 2, 0)


@pytest.mark.parametrize("kind", ["slack", "teams"])
async def test_chat_webhook_formats(tmp_path: Path, hook_server: HookServer, kind: str) -> None:
    sink = sink_for(tmp_path, {"chat": receiver(kind, hook_server.url)})
    async with sink:
        sink.write(Output(alerts=[alert("S1", sev="critical")]))
        await eventually(lambda: len(hook_server.requests) == 1, what="the chat message")
    body = json.loads(hook_server.requests[0].body)
    if kind == "slack":
        assert body["text"].startswith("*[CRITICAL] 1 firing: route-0")
        assert "S1 zscore value 5" in body["text"]
    else:
        assert body["@type"] == "MessageCard" and body["themeColor"] == "E01E5A"
        assert body["title"].startswith("[CRITICAL] 1 firing") and "S1" in body["text"]


async def test_grouping_timing_group_wait_then_group_interval(
    tmp_path: Path, hook_server: HookServer
) -> None:
    sink = sink_for(
        tmp_path,
        {"ops": receiver("webhook", hook_server.url)},
        group_wait=0.4,
        group_interval=0.6,
    )
    async with sink:
        t0 = time.monotonic()
        sink.write(Output(alerts=[alert("S1")]))
        sink.write(Output(alerts=[alert("S2")]))
        await eventually(lambda: len(hook_server.requests) == 1, what="the first notice")
        t1 = time.monotonic()
        assert t1 - t0 >= 0.4
        sink.write(Output(alerts=[alert("S1", "cleared")]))
        await eventually(lambda: len(hook_server.requests) == 2, what="the change")
        assert time.monotonic() - t1 >= 0.6 - 0.05
    first, second = (json.loads(r.body) for r in hook_server.requests)
    assert len(first["alerts"]) == 2
    assert {(a["sensor_id"], a["status"]) for a in second["alerts"]} == {
        ("S1", "resolved"),
        ("S2", "firing"),
    }


async def test_escalation_timing(tmp_path: Path, hook_server: HookServer) -> None:
    sink = sink_for(
        tmp_path,
        {"ops": receiver("webhook", hook_server.url)},
        group_interval=0.1,
        escalate_after=0.5,
    )
    async with sink:
        t0 = time.monotonic()
        sink.write(Output(alerts=[alert("S1")]))
        await eventually(lambda: len(hook_server.requests) == 2, what="the escalation")
        assert time.monotonic() - t0 >= 0.5
    first, second = (json.loads(r.body) for r in hook_server.requests)
    assert first["severity"] == "warning" and second["severity"] == "critical"
    assert second["alerts"][0]["escalated"] is True


async def test_service_routes_alerts_from_mqtt_to_a_webhook(
    mosquitto: Mosquitto, tmp_path: Path, hook_server: HookServer
) -> None:
    settings = load_settings(
        None,
        {
            "broker": {"url": mosquitto.url, "client_id": "detector-under-test"},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state"},
            "receivers": {"ops": {"type": "webhook", "url": hook_server.url}},
            "routes": [{"receivers": ["ops"], "severity": ["critical"], "group_wait": 0.2}],
        },
    )
    async with Running(settings) as run, publisher(mosquitto.url) as pub:
        assert run.service.routing is not None
        for i, sid in enumerate(["T1", "T2"]):
            pub.publish(f"factory/{sid}/temperature", reading_payload(sid, 99.0, i + 1), qos=1)
        await eventually(lambda: len(hook_server.requests) >= 1, what="the routed notice")
        await eventually(
            lambda: sum(len(json.loads(r.body)["alerts"]) for r in hook_server.requests) == 2,
            what="both sensors' alerts",
        )
        await eventually(lambda: run.service.routing.stats()["ops"][0] >= 1, what="sent count")
        text = ServiceMetrics(run.service).exposition().decode()
        sent = _sample(text, 'mqtt_anomaly_receiver_notices_sent_total{receiver="ops"}')
        assert sent == len(hook_server.requests) >= 1
        assert _sample(text, 'mqtt_anomaly_receiver_queue_depth{receiver="ops"}') == 0
        assert _sample(text, 'mqtt_anomaly_receiver_notices_dropped_total{receiver="ops"}') == 0
    body = json.loads(hook_server.requests[0].body)
    assert body["alerts"][0]["detector"] == "threshold"
    assert body["group"]["group"] == "factory"
    assert (tmp_path / "state" / "routing-state.mqas").exists()


async def test_open_incidents_are_saved_while_running(
    tmp_path: Path, hook_server: HookServer
) -> None:
    cfg = {"ops": receiver("webhook", hook_server.url)}
    sink = sink_for(tmp_path, cfg, group_by=["sensor"])
    async with sink:
        sink.write(Output(alerts=[alert("S1"), alert("S2")]))
        sink.tick(time.time())  # the service's periodic tick
        saving = sink._saving
        assert saving is not None
        await saving
        saved = load(tmp_path / "state" / "routing-state.mqas")
        assert sorted(i["key"] for i in saved["incidents"]) == ["sensor=S1", "sensor=S2"]
        sink.tick(time.time())  # nothing changed since: no new save
        assert sink._saving is saving

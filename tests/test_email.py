"""The e-mail receiver against a real SMTP server (aiosmtpd): the message, login, and a
server that is down at first."""

from __future__ import annotations

import email
import email.policy
import time
from pathlib import Path

from mqtt_anomaly.messages import Alert
from mqtt_anomaly.pipeline import Output
from mqtt_anomaly.routeconf import ReceiverSettings, Route
from mqtt_anomaly.routing.sink import RoutingSink

from .helpers import eventually
from .receivers import Mailbox


def alert(sid: str, state: str = "raised") -> Alert:
    now = time.time()
    return Alert(
        sid,
        "threshold",
        "critical",
        state,
        98.2,
        1.0,
        90.0,
        None,
        None,
        now,
        now,
        "above 90",
        f"{sid}:t:{state}",
    )  # type: ignore[arg-type]


def mail_sink(tmp_path: Path, port: int, **kw: object) -> RoutingSink:
    cfg = ReceiverSettings.model_validate(
        {
            "type": "email",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "sender": "mqtt-anomaly@plant.example",
            "to": ["shift@plant.example", "lead@plant.example"],
            "retry_initial": 0.05,
            "retry_max": 0.2,
            **kw,
        }
    )
    route = Route(name="boiler", receivers=("mail",), group_wait=0)
    return RoutingSink([route], {"mail": cfg}, tmp_path / "state")


async def test_one_mail_per_incident(tmp_path: Path) -> None:
    box = Mailbox().start()
    try:
        sink = mail_sink(tmp_path, box.port)
        async with sink:
            sink.write(Output(alerts=[alert("B1"), alert("B2")]))
            await eventually(lambda: len(box.messages) == 1, what="the mail")
    finally:
        box.stop()
    sender, rcpts, raw = box.messages[0]
    assert sender == "mqtt-anomaly@plant.example"
    assert rcpts == ["shift@plant.example", "lead@plant.example"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"].startswith("[CRITICAL] 2 firing: boiler")
    assert msg["Message-ID"].endswith("@mqtt-anomaly>")
    body = msg.get_content()  # type: ignore[attr-defined]
    assert "firing critical: B1 threshold value 98.2 above 90" in body
    assert "B2 threshold" in body


async def test_login_and_a_server_down_at_first(tmp_path: Path) -> None:
    box = Mailbox(login=("alerts", "pa55"))
    sink = mail_sink(tmp_path, box.port, username="alerts", password="pa55")
    async with sink:
        sink.write(Output(alerts=[alert("B1")]))
        await eventually(lambda: sink.stats()["mail"][1] >= 2, what="failed attempts")
        box.start()
        try:
            await eventually(lambda: sink.stats()["mail"][0] == 1, what="the mail once it is up")
            assert len(box.messages) == 1 and sink.stats()["mail"][2:] == (0, 0)
        finally:
            box.stop()


async def test_a_wrong_password_is_not_delivered(tmp_path: Path) -> None:
    box = Mailbox(login=("alerts", "pa55")).start()
    try:
        sink = mail_sink(tmp_path, box.port, username="alerts", password="wrong")
        async with sink:
            sink.write(Output(alerts=[alert("B1")]))
            await eventually(lambda: sink.stats()["mail"][1] >= 2, what="refused logins")
            assert box.messages == [] and sink.stats()["mail"][3] == 1  # kept, to retry
    finally:
        box.stop()

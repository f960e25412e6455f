"""The Alertmanager receiver against a real Prometheus Alertmanager: our alerts with their
labels, silences, inhibition and grouping there, and resolution on clear."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mqtt_anomaly.messages import Alert
from mqtt_anomaly.pipeline import Output
from mqtt_anomaly.routeconf import ReceiverSettings, Route
from mqtt_anomaly.routing.sink import RoutingSink

from .helpers import eventually
from .receivers import Alertmanager, HookServer, alertmanager, hook_server

__all__ = ["alertmanager", "hook_server"]  # the fixtures, used by name

TAGS = {"P1-T": {"asset": "press-1"}, "P1-V": {"asset": "press-1"}, "P2-T": {"asset": "press-2"}}


def alert(sid: str, det: str, sev: str, state: str = "raised") -> Alert:
    now = time.time()
    return Alert(sid, det, sev, state, 95.0, 0.9, 90.0, None, None, now, now, "hot", f"{sid}:{det}")  # type: ignore[arg-type]


def _ours(am: Alertmanager) -> dict[tuple[str, str], dict[str, Any]]:
    return {(a["labels"]["sensor"], a["labels"]["detector"]): a for a in am.api("alerts")}


def _hook_alerts(hook: HookServer, status: str) -> set[tuple[str, str]]:
    seen = set()
    for req in hook.requests:
        for a in json.loads(req.body)["alerts"]:
            if a["status"] == status:
                seen.add((a["labels"]["sensor"], a["labels"]["detector"]))
    return seen


async def test_alertmanager_receives_silences_inhibits_groups_and_resolves(
    tmp_path: Path, alertmanager: Alertmanager, hook_server: HookServer
) -> None:
    now = datetime.now(UTC)
    silence = alertmanager.api(
        "silences",
        {
            "matchers": [{"name": "sensor", "value": "P2-T", "isRegex": False, "isEqual": True}],
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(hours=1)).isoformat(),
            "createdBy": "test",
            "comment": "press 2 in maintenance",
        },
    )
    route = Route(name="plant", receivers=("am",), group_wait=0, group_interval=0.1)
    cfg = ReceiverSettings(type="alertmanager", url=alertmanager.url)
    sink = RoutingSink([route], {"am": cfg}, tmp_path / "state", tags_of=TAGS.get)
    async with sink:
        sink.write(
            Output(
                alerts=[
                    alert("P1-T", "threshold", "critical"),
                    alert("P1-T", "zscore", "warning"),
                    alert("P1-V", "zscore", "warning"),
                    alert("P2-T", "threshold", "critical"),
                ]
            )
        )
        await eventually(lambda: len(_ours(alertmanager)) == 4, what="4 alerts in Alertmanager")
        ours = _ours(alertmanager)
        p1t = ours[("P1-T", "threshold")]
        assert p1t["labels"] == {
            "alertname": "threshold",
            "asset": "press-1",
            "detector": "threshold",
            "route": "plant",
            "sensor": "P1-T",
            "severity": "critical",
        }
        assert p1t["annotations"]["alert_id"] == "P1-T:threshold"
        assert p1t["status"]["state"] == "active"
        assert ours[("P2-T", "threshold")]["status"]["silencedBy"] == [silence["silenceID"]]
        await eventually(
            lambda: _ours(alertmanager)[("P1-T", "zscore")]["status"]["inhibitedBy"] != [],
            what="the warning inhibited by the critical alert of the same sensor",
        )
        groups = {
            g["labels"]["asset"]: sorted(a["labels"]["sensor"] for a in g["alerts"])
            for g in alertmanager.api("alerts/groups")
        }
        assert groups == {"press-1": ["P1-T", "P1-T", "P1-V"], "press-2": ["P2-T"]}
        # Alertmanager's own notification: silenced and inhibited alerts left out
        await eventually(
            lambda: (
                _hook_alerts(hook_server, "firing") == {("P1-T", "threshold"), ("P1-V", "zscore")}
            ),
            what="Alertmanager's notification of press-1",
        )
        sink.write(Output(alerts=[alert("P1-V", "zscore", "warning", "cleared")]))
        await eventually(
            lambda: ("P1-V", "zscore") not in _ours(alertmanager), what="P1-V resolved"
        )
        await eventually(
            lambda: _hook_alerts(hook_server, "resolved") == {("P1-V", "zscore")},
            what="Alertmanager's resolved notification",
        )
        await eventually(lambda: sink.stats()["am"][3] == 0, what="nothing left to send")
        sent, failed, dropped, _ = sink.stats()["am"]
        assert sent >= 2 and (failed, dropped) == (0, 0)

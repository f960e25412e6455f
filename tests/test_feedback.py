"""Operator feedback on alerts: REST (token-protected), the dashboard's buttons, the store
(PostgreSQL and SQLite) and feedback as labels for ``models evaluate`` and ``evaluate``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from mqtt_anomaly.cli import app
from mqtt_anomaly.config import HttpSettings
from mqtt_anomaly.models.data import read_labels
from mqtt_anomaly.store import open_store
from mqtt_anomaly.store.feedback import FeedbackStore

from .mosquitto import Mosquitto
from .postgres import private_database
from .test_web import SPIKE, Served, feed, web_settings

runner = CliRunner()
TOKEN = "feedback-token"


async def _raised(client: httpx.AsyncClient, sensor: str) -> dict[str, Any]:
    """The stored raised threshold alert of ``sensor``, polled until the store has it."""
    deadline = time.monotonic() + 10
    while True:
        params = {"sensor": sensor, "state": "raised"}
        rows = (await client.get("/api/alerts", params=params)).json()
        found = [a for a in rows if a["detector"] == "threshold"]
        if found:
            return dict(found[0])
        assert time.monotonic() < deadline, f"no stored threshold alert of {sensor}"
        await asyncio.sleep(0.05)


async def test_feedback_over_rest_in_postgres_becomes_labels(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with private_database("feedback") as url:
        settings = web_settings(mosquitto, tmp_path, url)
        with open_store(url, settings.store) as store:
            assert isinstance(store, FeedbackStore)
            srv = Served(settings, store)
            srv.http = HttpSettings(listen="127.0.0.1:0", token=TOKEN)
            async with srv:
                await feed(mosquitto.url, "S1", [24.5 + 0.1 * (i % 3) for i in range(40)])
                await feed(mosquitto.url, "S1", [SPIKE], start_seq=40)
                await feed(mosquitto.url, "S2", [22.0] * 30)
                await feed(mosquitto.url, "S2", [SPIKE], start_seq=30)
                auth = {"Authorization": f"Bearer {TOKEN}"}
                async with httpx.AsyncClient(base_url=srv.base, timeout=10, headers=auth) as c:
                    a1 = await _raised(c, "S1")
                    a2 = await _raised(c, "S2")
                    assert str(a1["id"]).startswith("S1:threshold:raised:40@")
                    path = f"/api/alerts/{a1['id']}/feedback"
                    # the token is required for feedback as for every request
                    async with httpx.AsyncClient(base_url=srv.base, timeout=10) as anon:
                        res = await anon.post(path, json={"verdict": "confirmed"})
                        assert res.status_code == 401
                    res = await c.post(path, json={"verdict": "confirmed", "note": "bearing"})
                    assert res.status_code == 201, res.text
                    fb = res.json()
                    assert (fb["sensor_id"], fb["verdict"], fb["note"]) == (
                        "S1",
                        "confirmed",
                        "bearing",
                    )
                    assert fb["reading_ts"] == a1["reading_ts"]
                    res = await c.post(
                        f"/api/alerts/{a2['id']}/feedback", json={"verdict": "false_alarm"}
                    )
                    assert res.status_code == 201, res.text
                    # bad input: one clear answer each
                    res = await c.post(path, json={"verdict": "maybe"})
                    assert res.status_code == 422
                    res = await c.post(path, json={"verdict": "confirmed", "extra": 1})
                    assert res.status_code == 422
                    res = await c.post(
                        "/api/alerts/S9:threshold:raised:1@5.0/feedback",
                        json={"verdict": "confirmed"},
                    )
                    assert res.status_code == 404 and "no stored alert" in res.json()["detail"]
                    listed = (await c.get("/api/feedback")).json()
                    assert [(f["sensor_id"], f["verdict"]) for f in listed] == [
                        ("S1", "confirmed"), ("S2", "false_alarm")
                    ]  # fmt: skip
                    # a second verdict replaces the first
                    res = await c.post(path, json={"verdict": "false_alarm"})
                    assert res.status_code == 201
                    listed = (await c.get("/api/feedback")).json()
                    assert [f["verdict"] for f in listed] == ["false_alarm", "false_alarm"]
                    res = await c.post(path, json={"verdict": "confirmed", "note": "after all"})
                    assert res.status_code == 201
            assert store.flush(10)
        # feedback as labels: confirmed = the alert's reading anomalous, false_alarm = normal
        labels = read_labels(f"feedback:{url}", settings)
        assert [(p.sensor_id, p.ts, p.anomalous) for p in labels.points] == [
            ("S1", a1["reading_ts"], True), ("S2", a2["reading_ts"], False)
        ]  # fmt: skip
        # ... for `evaluate history` (the configured detectors on the stored readings): the
        # threshold alert flags both readings: one true, one false positive
        res = runner.invoke(
            app, ["evaluate", "history", "--labels", f"feedback:{url}", "--from", url, "--json"]
        )
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output.strip().splitlines()[-1])
        assert (doc["true_positives"], doc["false_positives"], doc["false_negatives"]) == (1, 1, 0)
        assert doc["precision"] == 0.5 and doc["recall"] == 1.0


def test_feedback_labels_need_a_store(tmp_path: Path) -> None:
    from mqtt_anomaly.config import load_settings
    from mqtt_anomaly.errors import ConfigError, StoreError

    settings = load_settings(None, {"store": {"url": "none://"}})
    with pytest.raises(ConfigError, match="feedback needs a history store"):
        read_labels("feedback", settings)
    with pytest.raises(StoreError, match="no history store at"):
        read_labels(f"feedback:sqlite:///{tmp_path / 'missing.db'}", settings)


def test_a_feedback_store_password_is_never_written_down() -> None:
    from mqtt_anomaly.models.data import shown_spec

    assert shown_spec("feedback:postgresql://ops:pw@db:5432/plant") == (
        "feedback:postgresql://ops:***@db:5432/plant"
    )
    assert shown_spec("feedback") == "feedback" and shown_spec("sim:x.jsonl") == "sim:x.jsonl"


async def test_feedback_needs_a_store_that_keeps_it(mosquitto: Mosquitto, tmp_path: Path) -> None:
    settings = web_settings(mosquitto, tmp_path)  # none://
    async with Served(settings) as srv, srv.client() as c:
        res = await c.post(
            "/api/alerts/S1:threshold:raised:1@5.0/feedback", json={"verdict": "confirmed"}
        )
        assert res.status_code == 409 and "needs a history store" in res.json()["detail"]
        assert (await c.get("/api/feedback")).status_code == 409

"""Maintenance windows: their times (one-off, recurring, time zones, DST), their settings, and
adding, listing and removing them through the REST API and the CLI of a running service."""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import json
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from mqtt_anomaly import gates, maintenance
from mqtt_anomaly.config import load_settings
from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.maintenance import MaintenanceBook, Window
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.transport.memory import MemoryBroker
from mqtt_anomaly.web import HttpSettings, http_server

from .helpers import eventually

BERLIN = ZoneInfo("Europe/Berlin")


def test_doctests() -> None:
    for module in (maintenance, gates):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
    assert doctest.testmod(maintenance).attempted > 0


def test_a_daily_window_keeps_local_time_across_daylight_saving() -> None:
    w = Window(at="06:00", duration=3600, timezone="Europe/Berlin")  # type: ignore[arg-type]
    before = datetime(2026, 3, 28, 6, 0, tzinfo=BERLIN).timestamp()  # UTC+1
    after = datetime(2026, 3, 29, 6, 0, tzinfo=BERLIN).timestamp()  # UTC+2 since 02:00
    assert after - before == 23 * 3600  # the local clock skipped an hour
    for opens in (before, after):
        assert not w.open_at(opens - 1)
        assert w.open_at(opens) and w.open_at(opens + 3599)
        assert not w.open_at(opens + 3600)


def test_weekly_and_overnight_windows() -> None:
    night = Window(days=("fri",), at="22:00", duration=8 * 3600, timezone="UTC")  # type: ignore[arg-type]
    fri = datetime(2026, 1, 2, 22, 0, tzinfo=ZoneInfo("UTC")).timestamp()  # a Friday
    assert night.open_at(fri) and night.open_at(fri + 7 * 3600)  # Saturday 05:00
    assert not night.open_at(fri + 8 * 3600) and not night.open_at(fri - 86400)  # Thursday


def test_one_off_window_in_its_time_zone() -> None:
    w = Window.model_validate(
        {"start": "2026-06-01T08:00", "end": "2026-06-01T10:00", "timezone": "Europe/Berlin"}
    )
    opens = datetime(2026, 6, 1, 8, 0, tzinfo=BERLIN).timestamp()
    assert not w.open_at(opens - 1) and w.open_at(opens) and not w.open_at(opens + 7200)
    assert w.id.startswith("w-")  # made from its fields
    assert Window.model_validate(w.model_dump(mode="json")) == w


def test_book_matches_sensors_by_asset_and_keeps_added_windows() -> None:
    tags = {"P1-T": {"asset": "press-1"}, "P2-T": {"asset": "press-2"}}
    book = MaintenanceBook(tags_of=tags.get)
    always = {"start": "2000-01-01T00:00Z", "end": "2100-01-01T00:00Z"}
    book.add(Window.model_validate({"id": "p1", "assets": ["press-1"], "reason": "x", **always}))
    assert book.reason("P1-T", 1e9) == "maintenance: x"
    assert book.reason("P2-T", 1e9) == ""
    state = book.state_dict()
    again = MaintenanceBook(tags_of=tags.get)
    assert again.load_state_dict(state, now=1e9) == 1 and again.reason("P1-T", 1e9)
    assert book.remove("p1") and not book.remove("p1") and book.reason("P1-T", 1e9) == ""
    assert MaintenanceBook().load_state_dict(state, now=5e9) == 0  # ended: left out


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"maintenance": [{"at": "06:00"}]}, "maintenance.0: a window needs start and end"),
        (
            {"maintenance": [{"at": "06:00", "duration": 60, "timezone": "Mars/Olympus"}]},
            "maintenance.0.timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            {"maintenance": [{"start": "2026-01-02T00:00", "end": "2026-01-01T00:00"}]},
            "maintenance.0: end must be after start",
        ),
        (
            {"gates": [{"name": "g", "sensor": "I", "below": 1}]},
            "gates.0: gate g: name the sensors it holds",
        ),
        ({"gates": [{"name": "g", "sensors": ["x"]}]}, "gates.0: a gate needs either topic"),
        (
            {"gates": [{"name": "g", "sensors": ["x"], "topic": "a/+/b"}]},
            "gates.0.topic: one topic, without wildcards",
        ),
        (
            {"gates": [{"name": "g", "sensors": ["x"], "topic": "a"}] * 2},
            "two gates named 'g'",
        ),
    ],
)
def test_bad_windows_and_gates_name_the_key(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, settings)
    assert str(info.value).startswith(message), str(info.value)


def test_gate_topics_are_subscribed() -> None:
    s = load_settings(
        None, {"gates": [{"name": "g", "sensors": ["P1-*"], "topic": "plant/p1/state"}]}
    )
    assert "plant/p1/state" in s.subscriptions


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mqtt_anomaly",
        "maintenance",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def _served(service: DetectorService) -> AsyncIterator[str]:
    """``service`` running with its HTTP server; yields the server's base URL."""
    stop = asyncio.Event()
    ports: list[int | None] = []

    async def run() -> None:
        async with http_server(service, HttpSettings(listen="127.0.0.1:0")) as port:
            ports.append(port)
            await service.run(stop)

    task = asyncio.create_task(run())
    try:
        await eventually(lambda: bool(ports) and service.ready.is_set(), what="ready")
        yield f"http://127.0.0.1:{ports[0]}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_rest_api_and_cli_add_list_remove(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        {
            "broker": {"url": "mqtt://127.0.0.1:1", "client_id": "detector-under-test"},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state"},
            "maintenance": [{"id": "weekly", "days": ["sun"], "at": "02:00", "duration": 3600}],
        },
    )
    broker = MemoryBroker()
    service = DetectorService(settings, console=False, transport=broker.transport)
    async with _served(service) as api:
        code, out, err = await _cli(
            "add", "--api", api, "--id", "relining", "--asset", "press-2",
            "--start", "2026-01-01T00:00", "--end", "2099-01-01T00:00",
            "--reason", "press 2 relining", "--timezone", "Europe/Berlin",
        )  # fmt: skip
        assert code == 0, err
        assert "added maintenance window relining" in out
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            listed = (await http.get("/api/maintenance")).json()
            assert [(w["id"], w["source"], w["open"]) for w in listed] == [
                ("weekly", "config", listed[0]["open"]),
                ("relining", "api", True),
            ]
            bad = await http.post("/api/maintenance", json={"at": "06:00"})
            assert bad.status_code == 422
            assert "a window needs start and end" in bad.json()["detail"]
            clash = await http.post(
                "/api/maintenance", json={"id": "weekly", "at": "06:00", "duration": 1}
            )
            assert clash.status_code == 409
        code, out, err = await _cli("list", "--api", api, "--json")
        assert code == 0, err
        assert [w["id"] for w in json.loads(out)] == ["weekly", "relining"]
        code, out, err = await _cli("add", "--api", api, "--at", "25:00", "--duration", "60")
        assert code == 2 and "error: at:" in err and "Traceback" not in err
        assert (tmp_path / "state" / "maintenance.mqas").exists()
    # restarted: the window added through the API is still there
    again = DetectorService(settings, console=False, transport=broker.transport)
    again.restore()
    assert list(again.maintenance.added) == ["relining"]
    async with _served(again) as api:
        code, out, err = await _cli("remove", "relining", "--api", api)
        assert code == 0, err
        code, _, err = await _cli("remove", "relining", "--api", api)
        assert code == 2 and "HTTP 404" in err
    assert again.maintenance.added == {}

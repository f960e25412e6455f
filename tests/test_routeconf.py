"""Routing settings: ``[[routes]]`` and ``[receivers.NAME]`` from TOML, checked at start."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mqtt_anomaly.cli import app
from mqtt_anomaly.config import load_settings, settings_as_toml
from mqtt_anomaly.errors import ConfigError

GOOD = """
[receivers.ops]
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "s3cret"

[receivers.am]
type = "alertmanager"
url = "http://127.0.0.1:9093/"

[[routes]]
name = "critical-line-1"
receivers = ["ops", "am"]
severity = ["critical"]
sensors = ["line-1-*"]
tags = { site = "berlin" }
group_by = ["asset", "detector"]
group_wait = 5
continue = true

[[routes]]
receivers = ["ops"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_routes_and_receivers_load(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, GOOD))
    assert [r.name for r in s.routes] == ["critical-line-1", ""]
    first = s.routes[0]
    assert first.continue_ is True and first.group_wait == 5.0
    assert first.group_by == ("asset", "detector")
    assert s.routes[1].group_by == ("route", "detector", "group")
    assert s.receivers["am"].url == "http://127.0.0.1:9093"
    assert s.receivers["ops"].secret_key("ops") == "s3cret"
    assert first.matches("line-1-T1", "zscore", "critical", {"site": "berlin"}, "factory")
    assert not first.matches("line-1-T1", "zscore", "warning", {"site": "berlin"}, "factory")
    assert not first.matches("line-1-T1", "zscore", "critical", {"site": "paris"}, "factory")
    assert not first.matches("line-1-T1", "zscore", "critical", {}, "factory")


def test_config_show_round_trips_routes_and_masks_secrets(tmp_path: Path) -> None:
    text = settings_as_toml(load_settings(_write(tmp_path, GOOD)))
    assert "s3cret" not in text
    back = tomllib.loads(text)
    assert [r["receivers"] for r in back["routes"]] == [["ops", "am"], ["ops"]]
    assert back["routes"][0]["continue"] is True
    assert back["receivers"]["am"]["type"] == "alertmanager"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[routes]]\nreceivers = ["pager"]\n', "routes.0.receivers: unknown receiver 'pager'"),
        ("[[routes]]\nreceivers = []\n", "routes.0.receivers: a route sends to at least one"),
        (
            '[receivers.x]\ntype = "webhook"\n',
            "receivers.x: a webhook receiver needs url",
        ),
        ('[receivers.x]\ntype = "webhook"\nurl = "ftp://h/x"\n', "receivers.x.url: must be an"),
        ('[receivers.x]\ntype = "pigeon"\nurl = "http://h"\n', "receivers.x.type: Input should"),
        (
            '[receivers.m]\ntype = "email"\nsmtp_host = "h"\n',
            "receivers.m: an email receiver needs sender and to",
        ),
        (
            '[receivers.o]\ntype = "webhook"\nurl = "http://h"\n'
            '[[routes]]\nreceivers = ["o"]\ngroup_by = ["colour"]\n',
            "routes.0.group_by: cannot group by 'colour'",
        ),
        (
            '[receivers.o]\ntype = "webhook"\nurl = "http://h"\n'
            '[[routes]]\nreceivers = ["o"]\nseverity = ["fatal"]\n',
            "routes.0.severity.0: Input should be 'warning' or 'critical'",
        ),
    ],
)
def test_bad_routing_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_bad_route_stops_the_command_with_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, '[[routes]]\nreceivers = ["pager"]\n')
    res = CliRunner().invoke(app, ["config", "show", "--config", str(path)])
    assert res.exit_code == 2
    assert (
        res.output.strip().splitlines()[-1].endswith("routes.0.receivers: unknown receiver 'pager'")
    ), res.output

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mqtt_anomaly.config import load_settings, settings_as_toml
from mqtt_anomaly.errors import ConfigError


def test_seed_defaults() -> None:
    s = load_settings()
    assert s.broker.address == "localhost:1883"
    assert s.topics.readings == "factory/{sensor_id}/temperature"
    assert s.topics.filters[0] == "factory/+/temperature"
    assert s.detector.threshold == 90.0
    assert s.simulator.interval == 1.0


def test_precedence_defaults_toml_env_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[broker]\nurl = "mqtt://from-file:1000"\nkeepalive = 30\n'
        "[detector]\nthreshold = 80.0\nclear_after = 7\n"
    )
    s = load_settings(cfg)
    assert (s.broker.port, s.broker.keepalive, s.detector.threshold) == (1000, 30, 80.0)

    monkeypatch.setenv("MQTT_ANOMALY_BROKER__URL", "mqtt://from-env:2000")
    monkeypatch.setenv("MQTT_ANOMALY_DETECTOR__THRESHOLD", "85")
    s = load_settings(cfg)
    assert (s.broker.host, s.broker.port, s.detector.threshold) == ("from-env", 2000, 85.0)
    assert s.broker.keepalive == 30  # the file still counts where the environment is silent
    assert s.detector.clear_after == 7

    s = load_settings(
        cfg, {"broker": {"url": "mqtt://from-cli:3000"}, "detector": {"threshold": None}}
    )
    assert (s.broker.host, s.detector.threshold) == ("from-cli", 85.0)  # None = flag not given


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"broker": {"url": "http://x"}}, "broker.url"),
        ({"broker": {"url": "mqtt://h:99999"}}, "broker.url"),
        ({"broker": {"url": "mqtts://user:secret@h"}}, "broker.url"),
        ({"broker": {"qos": 3}}, "broker.qos"),
        ({"topics": {"readings": "factory/temperature"}}, "topics.readings"),
        ({"topics": {"subscribe": ("factory/#/x",)}}, "topics.subscribe"),
        ({"detector": {"threshold": 80, "threshold_clear": 85}}, "detector"),
        ({"simulator": {"sensors": 0}}, "simulator.sensors"),
        ({"store": {"url": "mysql://x"}}, "store.url"),
        ({"nonsense": {"x": 1}}, "nonsense"),
    ],
)
def test_bad_values_name_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, overrides)  # type: ignore[arg-type]
    assert str(info.value).startswith(key)
    assert "\n" not in str(info.value)


def test_bad_toml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[broker\nurl=")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_settings(bad)
    assert isinstance(info.value.__cause__, tomllib.TOMLDecodeError)  # the cause is chained
    with pytest.raises(ConfigError, match="not found") as missing:
        load_settings(tmp_path / "missing.toml")
    assert isinstance(missing.value.__cause__, FileNotFoundError)


def test_secrets_masked() -> None:
    text = settings_as_toml(load_settings(None, {"broker": {"password": "hunter2"}}))
    assert "hunter2" not in text
    assert 'password = "**********"' in text


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqtt_anomaly", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_cli_config_show_and_bad_value() -> None:
    ok = _cli("config", "show", "--broker", "mqtt://example:1884")
    assert ok.returncode == 0, ok.stderr
    assert 'url = "mqtt://example:1884"' in ok.stdout
    bad = _cli("config", "show", "--broker", "ftp://example")
    assert bad.returncode == 2
    assert "broker.url" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_every_command_has_help() -> None:
    top = _cli("--help")
    assert top.returncode == 0
    for cmd in ("detect", "alerts", "config"):
        assert cmd in top.stdout
        res = _cli(cmd, "--help")
        assert res.returncode == 0, res.stderr
        assert "Usage" in res.stdout

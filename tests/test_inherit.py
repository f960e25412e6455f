"""Per-group, per-asset and per-sensor settings: inheritance, where each value came from,
their effect on scoring, and their errors."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mqtt_anomaly import inherit
from mqtt_anomaly.config import load_settings
from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.pipeline import Pipeline

T0 = 1_700_000_000.0
CLI = [sys.executable, "-m", "mqtt_anomaly"]
OVERRIDES = """
[detector]
detectors = ["threshold", "zscore"]
threshold = 90.0

[[overrides.groups]]
pattern = "+/voltage"
threshold = 440.0
threshold_clear = 430.0

[overrides.assets."PUMP-02"]
detectors = ["threshold"]

[overrides.sensors."PUMP-01/voltage"]
threshold = 450.0
"""


def test_doctests() -> None:
    result = doctest.testmod(inherit)
    assert result.attempted > 0 and result.failed == 0


def pipeline(toml: str, tmp_path: Path) -> Pipeline:
    path = tmp_path / "c.toml"
    path.write_text(
        toml
        + '\n[[mapping.rules]]\ntopic = "factory/{asset}/{sensor}"\nvalue = "$.v"\n'
        + 'timestamp = "$.ts"\n'
    )
    return Pipeline(load_settings(path))


def send(p: Pipeline, sensor: str, values: list[float]) -> list[tuple[str, str, str]]:
    out = []
    for i, v in enumerate(values):
        ts = T0 + i
        o = p.process([(f"factory/{sensor}", json.dumps({"v": v, "ts": ts}).encode(), ts)])
        out += [(a.sensor_id, a.detector, a.state) for a in o.alerts]
    return out


def test_a_400_v_supply_gets_its_own_threshold(tmp_path: Path) -> None:
    p = pipeline(OVERRIDES, tmp_path)
    steady = [400.0 + (i % 5) * 0.5 for i in range(40)]
    # 400 V is far above the 90 °C default: without the override it would be one long alert
    assert send(p, "PUMP-03/voltage", steady) == []
    assert send(p, "PUMP-03/temperature", [95.0]) == [
        ("PUMP-03/temperature", "threshold", "raised")
    ]
    assert ("PUMP-03/voltage", "threshold", "raised") in send(p, "PUMP-03/voltage", [445.0])
    # the sensor's own threshold wins over its group's (zscore may see the jump, not threshold)
    got = send(p, "PUMP-01/voltage", [*steady, 445.0])
    assert ("PUMP-01/voltage", "threshold", "raised") not in got
    got = send(p, "PUMP-01/voltage", [451.0])
    assert ("PUMP-01/voltage", "threshold", "raised") in got


def test_detector_choice_per_asset(tmp_path: Path) -> None:
    p = pipeline(OVERRIDES, tmp_path)
    calm = [20.0 + (i % 3) * 0.01 for i in range(60)]
    # zscore would raise on a jump within the threshold; PUMP-02 scores with threshold only
    jumped = send(p, "PUMP-09/temp", [*calm, 60.0])
    assert ("PUMP-09/temp", "zscore", "raised") in jumped
    assert send(p, "PUMP-02/temp", [*calm, 60.0]) == []
    assert send(p, "PUMP-02/temp", [95.0]) == [("PUMP-02/temp", "threshold", "raised")]


def test_config_show_names_where_each_value_came_from(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(OVERRIDES)
    res = subprocess.run(
        [*CLI, "config", "show", "--config", str(path), "--sensor", "PUMP-01/voltage"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "# sensor PUMP-01/voltage (asset PUMP-01)",
        "threshold = 450.0  # sensor PUMP-01/voltage",
        "threshold_clear = 430.0  # group +/voltage",
        'detectors = ["threshold", "zscore"]  # defaults',
    ]
    res = subprocess.run(
        [*CLI, "config", "show", "--config", str(path), "--asset", "PUMP-02"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert 'detectors = ["threshold"]  # asset PUMP-02' in res.stdout
    assert "commission_rows = 400  # defaults" in res.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sensors": {"S": {"detectors": ["nope"]}}}, 'overrides.sensors."S".detectors: unknown'),
        (
            {
                "sensors": {
                    "S": {"threshold": 10.0},
                },
                "groups": [{"pattern": "#", "threshold_clear": 50.0}],
            },
            "threshold_clear (50) must be below threshold (10)",
        ),
        ({"groups": [{"pattern": "a/#/b"}]}, "pattern"),
        ({"sensors": {"S": {"thresold": 1.0}}}, "thresold"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Pipeline(load_settings(None, {"overrides": overrides}))
    assert message in str(exc.value) and "\n" not in str(exc.value)

"""The package's public surface: ``mqtt_anomaly.__all__``."""

from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys

import pytest

import mqtt_anomaly

EXPECTED = {
    "Alert": "mqtt_anomaly.messages",
    "BrokerError": "mqtt_anomaly.errors",
    "ConfigError": "mqtt_anomaly.errors",
    "DeadLetter": "mqtt_anomaly.messages",
    "Detector": "mqtt_anomaly.detectors.base",
    "Field": "mqtt_anomaly.detectors.base",
    "MqttAnomalyError": "mqtt_anomaly.errors",
    "PayloadError": "mqtt_anomaly.errors",
    "Reading": "mqtt_anomaly.messages",
    "Scores": "mqtt_anomaly.detectors.base",
    "Settings": "mqtt_anomaly.config",
    "Sink": "mqtt_anomaly.sinks.base",
    "StateFileError": "mqtt_anomaly.errors",
    "Store": "mqtt_anomaly.store.base",
    "StoreError": "mqtt_anomaly.errors",
    "load_settings": "mqtt_anomaly.config",
}


def test_all_is_sorted_and_unique() -> None:
    assert mqtt_anomaly.__all__ == sorted(set(mqtt_anomaly.__all__))


def test_all_is_the_stated_surface() -> None:
    assert set(mqtt_anomaly.__all__) == {*EXPECTED, "__version__"}


def test_dir_matches_all() -> None:
    public = {name for name in dir(mqtt_anomaly) if not name.startswith("_")}
    assert public | {"__version__"} == set(mqtt_anomaly.__all__)
    assert "__version__" in dir(mqtt_anomaly)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_name_is_importable_from_its_module(name: str) -> None:
    obj = getattr(mqtt_anomaly, name)
    home = importlib.import_module(EXPECTED[name])
    assert obj is getattr(home, name)
    assert obj.__module__ == EXPECTED[name]
    assert obj.__module__.startswith("mqtt_anomaly.")
    # its own docstring, not one inherited from a base class
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert doc and doc.strip(), f"{name} has no docstring of its own"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from mqtt_anomaly import *", namespace)
    assert {n for n in namespace if n != "__builtins__"} == set(mqtt_anomaly.__all__)


def test_version_is_the_distribution_version() -> None:
    assert mqtt_anomaly.__version__ == importlib.metadata.version("mqtt-anomaly")


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="'mqtt_anomaly' has no attribute 'Nope'"):
        _ = mqtt_anomaly.Nope  # type: ignore[attr-defined]
    with pytest.raises(ImportError, match="Nope"):
        exec("from mqtt_anomaly import Nope", {})


def test_the_errors_form_one_tree() -> None:
    for name in ("BrokerError", "ConfigError", "PayloadError", "StateFileError", "StoreError"):
        assert issubclass(getattr(mqtt_anomaly, name), mqtt_anomaly.MqttAnomalyError)


def test_importing_the_package_loads_nothing_heavy() -> None:
    """The names load on first use: the bare import stays cheap for every command."""
    code = (
        "import sys, mqtt_anomaly\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in "
        "{'mqtt_anomaly', 'numpy', 'pydantic', 'msgspec', 'typer'}))\n"
        "mqtt_anomaly.Detector\n"
        "print('numpy' in sys.modules)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["['mqtt_anomaly']", "True"]

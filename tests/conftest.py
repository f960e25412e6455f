from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mqtt_anomaly.console import quiet_libraries

from .kafka import Tansu
from .mosquitto import Mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh, private Mosquitto for one test (persistence on, restartable)."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def shared_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One private Mosquitto for tests that neither restart it nor depend on its state."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto-shared")).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[Tansu]:
    """A fresh, private Kafka-protocol broker (Tansu, memory storage) for one test."""
    broker = Tansu(tmp_path / "kafka").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def shared_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """One private Kafka-protocol broker for tests that use their own topics and groups."""
    broker = Tansu(tmp_path_factory.mktemp("kafka-shared")).start()
    try:
        yield broker
    finally:
        broker.stop()


def pytest_configure(config: pytest.Config) -> None:
    quiet_libraries()

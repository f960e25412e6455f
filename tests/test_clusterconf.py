"""The ``[cluster]`` settings, the servers' subject mapping and the partition assignment (no
servers here: tests/test_cluster.py runs a real cluster)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mqtt_anomaly.alerting import AlertBook
from mqtt_anomaly.cluster.worker import assignment
from mqtt_anomaly.clusterconf import (
    ClusterSettings,
    mqtt_topic,
    partition_of_subject,
    server_config,
    server_mappings,
)
from mqtt_anomaly.config import load_settings
from mqtt_anomaly.errors import ConfigError


def test_settings_and_urls() -> None:
    s = load_settings(None, {"cluster": {"urls": "n1:4222, nats://n2:4223", "partitions": 16}})
    assert s.cluster.enabled
    assert s.cluster.servers == ["nats://n1:4222", "nats://n2:4223"]
    assert s.cluster.partition_subject(3) == "readings.3.>"
    assert not ClusterSettings().enabled
    for bad in ("http://x:1", "nats://user:pw@x:4222", "nats://x:port"):
        with pytest.raises(ConfigError, match=r"cluster\.urls"):
            load_settings(None, {"cluster": {"urls": bad}})
    with pytest.raises(ConfigError, match=r"cluster\.partitions"):
        load_settings(None, {"cluster": {"urls": "n1:4222", "partitions": 0}})
    with pytest.raises(ConfigError, match=r"cluster\.worker_id"):
        load_settings(None, {"cluster": {"worker_id": "a.b"}})


def test_mapping_follows_the_topic_templates() -> None:
    m = server_mappings("plant/{sensor_id}/temp", "plant/{sensor_id}/state", 32, "r")
    assert m == {
        "plant.*.temp": "r.{{partition(32,1)}}.plant.{{wildcard(1)}}.temp",
        "plant.*.state": "r.{{partition(32,1)}}.plant.{{wildcard(1)}}.state",
    }
    with pytest.raises(ValueError, match="NATS subject"):
        server_mappings("a.b/{sensor_id}/t", "s/{sensor_id}", 4)
    conf = server_config(
        name="n1", port=1, cluster_port=2, routes=["nats-route://h:2"], store_dir="/d", mappings=m
    )
    assert '"plant.*.temp": "r.{{partition(32,1)}}.plant.{{wildcard(1)}}.temp"' in conf
    assert "max_payload: 8MB" in conf


def test_partition_subjects() -> None:
    assert partition_of_subject("readings.7.factory.S1.temperature", "readings") == (
        7,
        "factory.S1.temperature",
    )
    assert mqtt_topic("factory.S1.temperature") == "factory/S1/temperature"
    for bad in ("readings.x.factory", "readings.3", "other.3.a"):
        with pytest.raises(ValueError):
            partition_of_subject(bad, "readings")


def test_assignment_is_balanced_and_the_same_everywhere() -> None:
    a = assignment(8, ["w2", "w1", "w3"])
    assert a == assignment(8, ["w3", "w1", "w2", "w1"])  # order and repeats do not matter
    assert max(Counter(a).values()) - min(Counter(a).values()) <= 1
    assert assignment(4, ["w1"]) == ["w1"] * 4


def test_alert_book_state_does_not_depend_on_round_grouping() -> None:
    """Low scores count only while an alert is active: the same scores of one sensor give
    the same book, whether another sensor shared their rounds or not."""
    alone = AlertBook("d", debounce=1, clear_after=3)
    shared = AlertBook("d", debounce=1, clear_after=3)
    scores = [0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.2]
    for i, sc in enumerate(scores):
        alone.step(np.array([0], dtype=np.intp), np.array([sc]))
        other = 0.9 if i % 2 else 0.1  # a second sensor, active every other round
        shared.step(np.array([0, 1], dtype=np.intp), np.array([sc, other]))
    for name in ("active", "critical", "above", "below"):
        assert getattr(alone, name)[0] == getattr(shared, name)[0], name

"""The Grafana dashboard and provisioning refer only to metrics and tables that exist.

Metric names come from the PromQL expressions and are checked against what ``/metrics`` of
a service exposes (label matchers against its labels); table and column names come from the
SQL, which is also run, macros filled in, against a PostgreSQL database with the store's
schema when a server answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.store.postgres import TABLES, PostgresStore
from mqtt_anomaly.web.metrics import METRIC_NAMES, ServiceMetrics

from .kafka import Tansu
from .postgres import private_database

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "mqtt-anomaly.json"

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "le", "inf", "nan"}
SQL_MACROS = {
    "$__unixEpochFrom()": "0",
    "$__unixEpochTo()": "4102444800",
    "$sensor": "SENSOR-01",
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def targets(kind: str) -> Iterator[dict[str, Any]]:
    """Every query of one datasource type: panels, template variables, annotations."""
    d = dashboard()
    for panel in d["panels"]:
        for t in panel.get("targets", []):
            if kind in (t.get("datasource") or panel["datasource"])["type"]:
                yield t
    for var in d["templating"]["list"]:
        if kind in var["datasource"]["type"]:
            yield {"rawSql": var["query"]}
    for ann in d["annotations"]["list"]:
        if kind in ann["datasource"]["type"]:
            yield ann["target"]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, keywords, labels, ranges removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[m.end() :].lstrip()
        if rest.startswith("(") or m.group().lower() in PROMQL_WORDS:
            continue
        names.add(m.group())
    return names


def label_uses(expr: str) -> Iterator[tuple[str, str]]:
    """``(metric, label)`` for every matcher in ``metric{label="..."}``."""
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr):
        for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)):
            yield m.group(1), label


@pytest.fixture
async def exposed(tmp_path: Path, shared_kafka: Tansu) -> dict[str, set[str]]:
    """Metric name → label names, as ``/metrics`` of a service with a store and the Kafka
    bridge exposes them."""
    from mqtt_anomaly.sinks.kafka import KafkaSink
    from mqtt_anomaly.store.sqlite import SqliteStore

    settings = load_settings(
        None, {"service": {"state_dir": tmp_path}, "kafka": {"url": shared_kafka.url}}
    )
    with SqliteStore(tmp_path / "h.db") as store, KafkaSink(settings.kafka) as kafka:
        service = DetectorService(settings, store=store, kafka=kafka, console=False)
        metrics = ServiceMetrics(service)
        # one alert and one dead letter, so that labelled series exist
        service.listeners.append(metrics.observe)
        service._emit(  # the batch path the service takes
            service.pipeline.process(
                [
                    ("factory/S1/temperature", b"99.5", service.clock()),
                    ("factory/S1/temperature", b"nope", service.clock()),
                ]
            )
        )
        text = metrics.exposition().decode()
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{([^}]*)\})?", line)
            assert m is not None
            labels = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', m.group(2) or ""))
            out.setdefault(m.group(1), set()).update(labels)
    return out


def test_promql_references_exposed_metrics(exposed: dict[str, set[str]]) -> None:
    exprs = [t["expr"] for t in targets("prometheus")]
    assert len(exprs) >= 15
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= set(exposed), f"{expr!r} uses unknown {names - set(exposed)}"
        used |= names
        for metric, label in label_uses(expr):
            assert label in exposed[metric], f"{expr!r}: {metric} has no label {label!r}"
    # what the exposition shows is what the module declares
    assert set(exposed) <= METRIC_NAMES
    # the operator's questions are all answered somewhere
    for needed in (
        "mqtt_anomaly_readings_processed_total",
        "mqtt_anomaly_dead_letters_total",
        "mqtt_anomaly_duplicates_dropped_total",
        "mqtt_anomaly_alerts_total",
        "mqtt_anomaly_latency_seconds_bucket",
        "mqtt_anomaly_sensors_active",
        "mqtt_anomaly_last_batch_size",
        "mqtt_anomaly_store_write_seconds",
        "mqtt_anomaly_store_queued",
        "mqtt_anomaly_store_readings_dropped_total",
        "mqtt_anomaly_broker_connected",
    ):
        assert needed in used, needed


def test_metric_name_extraction() -> None:
    expr = 'histogram_quantile(0.9, sum by (le) (rate(x_bucket{a="b(c)"}[5m]))) / y offset 5m'
    assert metric_names(expr) == {"x_bucket", "y"}
    assert list(label_uses('m{state="raised", det=~"z.*"}')) == [("m", "state"), ("m", "det")]


def sql_tables(query: str) -> set[str]:
    return set(re.findall(r"\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_.]*)", query, re.I))


def test_sql_references_schema_tables() -> None:
    """Tables by name here; columns are checked by running the queries (below)."""
    queries = [t["rawSql"] for t in targets("postgres")]
    assert len(queries) >= 5
    for q in queries:
        tables = sql_tables(q)
        assert tables and tables <= set(TABLES), f"{q!r} uses unknown tables {tables}"


def test_provisioning_matches_dashboard() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/mqtt-anomaly.yaml").read_text())
    uids = {s["uid"]: s["type"] for s in sources["datasources"]}
    assert uids, "no datasource provisioned"
    d = dashboard()
    assert d["panels"], "no panel in the dashboard"
    for panel in d["panels"]:
        ds = panel.get("datasource")
        if ds:
            assert uids.get(ds["uid"]) == ds["type"], panel["title"]
        for t in panel.get("targets", []):
            assert uids.get(t["datasource"]["uid"]) == t["datasource"]["type"]
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/mqtt-anomaly.yaml").read_text())
    assert providers["providers"][0]["options"]["path"].endswith("mqtt-anomaly")
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"])


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database with the store's schema, dropped afterwards."""
    with private_database("grafana") as url:
        PostgresStore(url).close()  # creates the schema
        yield url


def test_sql_runs_against_the_schema(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO readings VALUES ('SENSOR-01', extract(epoch from now()), 24.5, 1)"
        )
        conn.execute(
            "INSERT INTO alerts (sensor_id, detector, severity, state, value, score, alert_ts,"
            " message) VALUES ('SENSOR-01', 'threshold', 'critical', 'raised', 98.2, 1.0,"
            " extract(epoch from now()), '')"
        )
        ran = 0
        for t in targets("postgres"):
            ran += 1
            query = t["rawSql"]
            for macro, value in SQL_MACROS.items():
                query = query.replace(macro, value)
            assert "$" not in query, f"unfilled macro in {query!r}"
            rows = conn.execute(query.encode()).fetchall()
            assert rows, f"no rows from {query!r}"
        assert ran >= 5, "too few PostgreSQL queries found in the dashboard"

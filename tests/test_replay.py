"""``mqtt-anomaly replay``: stored or Kafka readings re-scored through the pipeline.

A small history: S1 steady around 25 °C with one spike to 98.2 °C, S2 flat at 20 °C with a
20 s gap (silence, in the readings' own time). Both recorded at 1 s intervals in whole seconds
of the last hour, so the silence tick falls on a known second.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mqtt_anomaly.cli import app
from mqtt_anomaly.config import StoreSettings, load_settings
from mqtt_anomaly.messages import Alert, Reading, encode
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.replay.engine import Columns, Replayer
from mqtt_anomaly.replay.sources import KafkaSource, StoreSource, parse_source
from mqtt_anomaly.store import Store
from mqtt_anomaly.store.postgres import PostgresStore
from mqtt_anomaly.store.sqlite import SqliteStore
from mqtt_anomaly.topics import TopicTemplate

from .helpers import fill_store
from .kafka import Tansu, unique
from .mosquitto import free_port
from .postgres import private_database

runner = CliRunner()
T0 = float(math.floor(time.time()) - 3600)
N = 600
SPIKE = 400  # S1's spike, at T0 + 400
GAP = range(200, 220)  # S2 sends nothing then: silent from T0 + 205


def history() -> list[Reading]:
    """The two sensors' readings in time order."""
    rows = []
    for i in range(N):
        s1 = 98.2 if i == SPIKE else 25.0 + 0.3 * math.sin(i / 7.0)
        rows.append(Reading("S1", T0 + i, s1, "C", i))
        if i not in GAP:
            rows.append(Reading("S2", T0 + i, 20.0, "C", i))
    return rows


def stored_alert(detector: str, ts: float, state: str = "raised") -> Alert:
    return Alert("S1", detector, "warning", state, 1.0, 0.9, None, None, None, ts, ts)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite history filled through the store API, with three alerts the service raised."""
    path = tmp_path / "history.db"
    with SqliteStore(path, StoreSettings(flush_interval=0.05)) as st:
        fill_store(st, history())
        st.add_alert(stored_alert("zscore", T0 + 100))
        st.add_alert(stored_alert("zscore", T0 + 103, "cleared"))
        st.add_alert(stored_alert("offline", T0 + 300))
        st.add_alert(stored_alert("zscore", T0 - 7200))  # before the replayed range
        assert st.flush(10)
    return path


def replay(*args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``replay --json``; the alerts and the summary."""
    result = runner.invoke(app, ["replay", *args, "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert "summary" in lines[-1]
    return lines[:-1], lines[-1]["summary"]


def events(alerts: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    return {(a["sensor_id"], a["detector"], a["state"], a["alert_ts"]) for a in alerts}


def user_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["replay", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ---- from a store ---------------------------------------------------------------------------
def test_replay_from_sqlite_finds_the_spike_and_the_silence(db: Path) -> None:
    alerts, summary = replay("--from", f"sqlite:///{db}")
    spike = [a for a in alerts if a["detector"] == "threshold" and a["state"] == "raised"]
    assert len(spike) == 1
    assert spike[0]["sensor_id"] == "S1" and spike[0]["severity"] == "critical"
    assert spike[0]["reading_ts"] == spike[0]["alert_ts"] == T0 + SPIKE
    assert spike[0]["value"] == 98.2
    silence = [a for a in alerts if a["detector"] == "silence"]
    assert [(a["sensor_id"], a["state"], a["alert_ts"]) for a in silence] == [
        ("S2", "raised", T0 + 205),  # last heard at T0 + 199; the limit is 5 × 1 s
        ("S2", "cleared", T0 + 220),  # heard again at T0 + 220
    ]
    assert silence[0]["reading_ts"] == T0 + 199
    assert any(a["sensor_id"] == "S2" and a["detector"] == "stuck" for a in alerts)
    assert [a["alert_ts"] for a in alerts] == sorted(a["alert_ts"] for a in alerts)
    assert summary["readings"] == len(history()) and summary["sensors"] == 2
    assert summary["malformed"] == 0
    assert summary["raised"]["threshold"] == {"warning": 0, "critical": 1}
    assert summary["readings_per_second"] > 0
    # the service's alerts in the same time range, next to the replayed ones
    assert summary["stored"]["raised"] == {"zscore": 1, "offline": 1}
    assert (summary["stored"]["since"], summary["stored"]["until"]) == (T0, T0 + N - 1)


def test_detector_override_and_bounds(db: Path) -> None:
    alerts, summary = replay("--from", f"sqlite:///{db}", "--detectors", "threshold")
    assert {(a["detector"], a["state"]) for a in alerts} == {
        ("threshold", "raised"), ("threshold", "cleared"),
        ("silence", "raised"), ("silence", "cleared"),
    }  # fmt: skip
    assert summary["detectors"] == ["threshold"]
    # one sensor, a time window, and a limit
    alerts, summary = replay(
        "--from", f"sqlite:///{db}", "--sensor", "S1", "--since", str(T0 + 300),
        "--until", str(T0 + 450), "--detectors", "threshold",
    )  # fmt: skip
    assert summary["readings"] == 151 and summary["sensors"] == 1
    assert [a["alert_ts"] for a in alerts if a["state"] == "raised"] == [T0 + SPIKE]
    assert summary["stored"]["raised"] == {"offline": 1}
    _, summary = replay("--from", f"sqlite:///{db}", "--limit", "100")
    assert summary["readings"] == 100


def test_table_output_compares_with_the_store(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    result = runner.invoke(
        app, ["replay", "--from", f"sqlite:///{db}", "--show", "2", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "alert time (UTC)" in text and "more alerts" in text
    assert f"Replayed {len(history()):,} readings of 2 sensors" in text
    assert "readings/s" in text and "stored" in text and "change" in text
    assert "offline alerts come from status messages" in text
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(a["detector"] == "threshold" for a in written)
    # --from store: the store the configuration names
    config = tmp_path / "replay.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{db}"\n[detector]\nthreshold = 99.0\n')
    alerts, _ = replay("--from", "store", "-c", str(config))
    assert not [a for a in alerts if a["detector"] == "threshold"]  # 98.2 < 99


# ---- the store read the replay uses, on both backends ----------------------------------
@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with private_database("replay") as url:
        yield url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_scan_readings_in_time_order_and_chunks(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    open_store: Callable[[], Store]
    if backend == "sqlite":
        open_store = lambda: SqliteStore(tmp_path / "scan.db")  # noqa: E731
    else:
        url = request.getfixturevalue("pg_url")
        open_store = lambda: PostgresStore(url)  # noqa: E731
    rng = np.random.default_rng(3)
    sensors = [f"S{k}" for k in range(7)]
    stamps, values = np.sort(rng.integers(0, 300, 900)), rng.normal(size=900)
    rows = [(sensors[i % 7], T0 + float(stamps[i]), float(values[i]), i) for i in range(900)]
    rows += [("S0", T0 + 50.0, 1.0, 5000 + k) for k in range(30)]  # many rows at one instant
    with open_store() as st:
        assert list(st.scan_readings()) == []
        st.add_readings(*(list(c) for c in zip(*rows, strict=True)))
        assert st.flush(10)
        want = sorted(rows, key=lambda r: (r[1], r[0], r[3]))
        chunks = list(st.scan_readings(chunk=13))
        assert all(0 < len(c) <= 13 for c in chunks)
        assert [tuple(r) for c in chunks for r in c] == want
        assert [tuple(r) for c in st.scan_readings(chunk=1) for r in c] == want
        scan = st.scan_readings(sensor_id="S3", since=T0 + 100, until=T0 + 200)
        got = [tuple(r) for c in scan for r in c]
        assert got == [r for r in want if r[0] == "S3" and T0 + 100 <= r[1] <= T0 + 200]
        assert list(st.scan_readings(sensor_id="nobody")) == []
        st.add_alert(stored_alert("zscore", T0 + 10))
        st.add_alert(stored_alert("zscore", T0 + 20))
        st.add_alert(stored_alert("zscore", T0 + 30, "cleared"))
        assert st.flush(10)
        assert st.alert_counts(since=T0 + 15) == [
            ("zscore", "cleared", "warning", 1), ("zscore", "raised", "warning", 1),
        ]  # fmt: skip
        assert st.alert_counts(sensor_id="S9") == []


# ---- the engine -------------------------------------------------------------------------
def test_cut_batches_give_the_alerts_of_a_check_every_tick() -> None:
    """Silence checked only where it can matter = checked every period of reading time."""
    settings = load_settings(overrides={"detector": {"interval": 0.5, "silence_factor": 3.0}})
    rng = np.random.default_rng(7)
    rows: list[tuple[str, float, float, int]] = []
    for s in range(6):
        t, every = 1e9 + rng.uniform(0, 1), [0.5, 1.0, 2.0][s % 3]
        for i in range(500):
            spike = 70 if rng.random() < 0.01 else 0
            rows.append((f"S{s}", t, 25 + rng.normal(0, 0.3) + spike, i))
            t += every * rng.uniform(0.9, 1.1) + (rng.uniform(3, 30) if rng.random() < 0.01 else 0)
    rows.sort(key=lambda r: (r[1], r[0]))

    pipeline, topic = Pipeline(settings), TopicTemplate(settings.topics.readings)
    every_tick: list[Alert] = []
    tick, k = math.floor(rows[0][1] / 0.5) * 0.5, 0
    while k < len(rows):
        tick += 0.5
        batch = []
        while k < len(rows) and rows[k][1] <= tick:
            sid, ts, value, seq = rows[k]
            payload = encode(Reading(sid, ts, value, "C", seq))
            batch.append((topic.format(sid), payload, ts))
            k += 1
        every_tick += pipeline.process(batch).alerts + pipeline.check_silence(tick).alerts

    cut: list[Alert] = []
    replayer = Replayer(settings, cut.append)
    for start in range(0, len(rows), 700):
        sids, stamps, values, seqs = zip(*rows[start : start + 700], strict=True)
        replayer.feed(Columns(sids, np.array(stamps), values, seqs))
    replayer.finish()

    def key(a: Alert) -> tuple[Any, ...]:
        return (a.alert_ts, a.sensor_id, a.detector, a.state)

    assert sorted(cut, key=key) == sorted(every_tick, key=key)
    assert {a.detector for a in cut} >= {"silence", "threshold"}
    assert replayer.stats.silence_checks < (rows[-1][1] - rows[0][1]) / 0.5 / 4


# ---- from Kafka --------------------------------------------------------------------------
def produce(broker: Tansu, topic: str, readings: list[Reading], junk: list[bytes]) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=3)]).values():
        future.result(10)
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    for r in readings:
        producer.produce(topic, encode(r), r.sensor_id.encode(), timestamp=int(r.ts * 1000))
    for value in junk:
        producer.produce(topic, value, b"S1")
    assert producer.flush(10) == 0


def test_replay_from_kafka_finds_the_same_alerts(shared_kafka: Tansu, db: Path) -> None:
    topic = unique("readings")
    produce(shared_kafka, topic, history(), [b"{not json", b'{"value": 1.0}'])
    from_kafka, summary = replay("--from", f"{shared_kafka.url}/{topic}", "--idle", "5")
    from_store, _ = replay("--from", f"sqlite:///{db}")
    assert events(from_kafka) == events(from_store)
    assert summary["readings"] == len(history())
    assert summary["malformed"] == 2
    assert summary["malformed_by_reason"] == {"invalid_field": 1, "not_json": 1}
    assert summary["kafka"] == {"messages": len(history()) + 2, "partitions": 3, "stopped": "end"}
    assert "stored" not in summary
    _, summary = replay("--from", f"{shared_kafka.url}/{topic}", "--sensor", "S2", "--limit", "50")
    assert (summary["readings"], summary["sensors"]) == (50, 1)
    assert summary["kafka"]["stopped"] == "limit"


def test_kafka_errors_are_one_line(shared_kafka: Tansu) -> None:
    user_error(
        ["--from", f"kafka://127.0.0.1:{free_port()}/t", "--timeout", "0.5"], "cannot reach Kafka"
    )
    user_error(["--from", f"{shared_kafka.url}/{unique('missing')}"], "Unknown topic")


def test_kafka_without_its_client_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # as if not installed
    user_error(["--from", "kafka://127.0.0.1:9/readings"], "pip install 'mqtt-anomaly[kafka]'")


# ---- mistakes ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "ftp://host/x"], "expected store, sqlite:///PATH"),
        (["--from", "kafka://nohost/readings"], "is not HOST:PORT"),
        (["--from", "kafka://h:1/bad topic"], "not a Kafka topic name"),
        (["--from", "sqlite:////nonexistent/dir/history.db"], "no history store at"),
        (["--from", "store", "--detectors", "zscore,nope"], "unknown detector 'nope'"),
        (["--from", "store", "--since", "yesterday"], "--since 'yesterday'"),
        (["--from", "store", "--since", "2026-02-01", "--until", "2026-01-01"], "before --since"),
        (["--from", "store", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_user_mistakes_are_one_line(args: list[str], message: str) -> None:
    user_error(args, message)


def test_parse_source_defaults() -> None:
    settings = load_settings()
    src = parse_source("kafka://a:9092,b:9093", settings)
    assert src == KafkaSource(
        "a:9092,b:9093", "mqtt-anomaly.readings", security={"security.protocol": "PLAINTEXT"}
    )
    sasl = {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"}
    tls = load_settings(overrides={"kafka": sasl})
    src = parse_source("kafka+ssl://a:9092/t", tls)
    assert isinstance(src, KafkaSource) and src.tls
    assert src.security["security.protocol"] == "SASL_SSL"
    assert src.security["sasl.username"] == "u"
    settings = load_settings(overrides={"kafka": {"readings_topic": "plant.readings"}})
    assert parse_source("kafka://a:9092/", settings).topic == "plant.readings"  # type: ignore[union-attr]
    assert parse_source("store", settings) == StoreSource(settings.store.url)

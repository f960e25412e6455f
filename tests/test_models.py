"""Model lifecycle: the format, the registry, the ``models`` commands, ``detect`` from the
current model, operator feedback as labels. Real SQLite (and PostgreSQL) stores, real files."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mqtt_anomaly import __version__
from mqtt_anomaly.cli import app
from mqtt_anomaly.config import StoreSettings, load_settings
from mqtt_anomaly.errors import ModelError
from mqtt_anomaly.messages import Alert, Reading, alert_id
from mqtt_anomaly.models.format import MANIFEST, STATE, load_model
from mqtt_anomaly.models.registry import Registry
from mqtt_anomaly.replay.engine import Columns, Replayer
from mqtt_anomaly.store import Store
from mqtt_anomaly.store.sqlite import SqliteStore

runner = CliRunner()
T0 = float(math.floor(time.time()) - 7200)
N = 2000
SPLIT = 1000  # training: readings before T0 + SPLIT; evaluation: from there on
SPIKES = (1300, 1500, 1700)  # S1's spikes (faults of the labels file)


def value(sensor: str, i: int) -> float:
    if sensor == "S1" and i in SPIKES:
        return 98.2
    base = 25.0 if sensor == "S1" else 40.0
    return base + 0.3 * math.sin(i / 7.0) + 0.05 * math.cos(i / 3.0)


def history(lo: int = 0, hi: int = N) -> list[Reading]:
    return [Reading(s, T0 + i, value(s, i), "C", i) for i in range(lo, hi) for s in ("S1", "S2")]


def fill(store: Store, readings: list[Reading]) -> None:
    for k in range(0, len(readings), 500):
        part = readings[k : k + 500]
        store.add_readings(
            [r.sensor_id for r in part], [r.ts for r in part], [r.value for r in part],
            [r.seq for r in part],
        )  # fmt: skip
    assert store.flush(10)


def columns(readings: list[Reading]) -> Columns:
    return Columns(
        [r.sensor_id for r in readings],
        np.array([r.ts for r in readings]),
        [r.value for r in readings],
        [r.seq for r in readings],
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "history.db"
    with SqliteStore(path, StoreSettings(flush_interval=0.05)) as st:
        fill(st, history())
    return path


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.jsonl"
    path.write_text(
        "".join(
            json.dumps({"sensor_id": "S1", "kind": "spike", "start": T0 + i, "end": T0 + i}) + "\n"
            for i in SPIKES
        )
    )
    return path


def cli(*args: str) -> Any:
    res = runner.invoke(app, [str(a) for a in args], prog_name="mqtt-anomaly")
    return res


def train(db: Path, reg: Path, *extra: str) -> str:
    res = cli(
        "models", "train", "--store", f"sqlite:///{db}", "--registry", reg,
        "--until", str(T0 + SPLIT - 1), *extra,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    version = res.output.strip().split(":", 1)[0]
    assert version.startswith("v"), res.output
    return version


# ---- train, list, show -----------------------------------------------------------------------
def test_train_writes_a_model_directory_from_the_store(db: Path, tmp_path: Path) -> None:
    reg = tmp_path / "models"
    assert train(db, reg) == "v1"
    res = cli(
        "models", "train", "--store", f"sqlite:///{db}", "--registry", reg,
        "--until", str(T0 + SPLIT - 1), "--sensor", "S1", "--detectors", "threshold,zscore",
    )  # fmt: skip
    assert res.output.strip().startswith("v2: trained on 1,000 readings of 1 sensor "), res.output
    model = reg / "versions" / "v1"
    assert sorted(p.name for p in model.iterdir()) == [MANIFEST, STATE]
    manifest = json.loads((model / MANIFEST).read_text())
    assert manifest["format"] == "mqtt-anomaly-model" and manifest["package"] == __version__
    assert manifest["version"] == "v1" and manifest["evaluation"] is None
    t = manifest["training"]
    assert t["readings"] == 2 * SPLIT and t["sensors"] == ["S1", "S2"]
    assert t["source"] == f"sqlite:///{db}" and t["until"] == T0 + SPLIT - 1
    assert t["first_ts"] == T0 and t["last_ts"] == T0 + SPLIT - 1
    # the hash of the training data as read: per reading, id NUL ts value seq
    h = hashlib.sha256()
    for r in history(0, SPLIT):
        h.update(r.sensor_id.encode() + b"\0" + np.array([r.ts, r.value]).tobytes())
        h.update(np.array([r.seq], dtype="<i8").tobytes())
    assert t["data_sha256"] == h.hexdigest()
    assert manifest["config"]["detector"]["detectors"] == ["threshold", "zscore", "stuck"]
    data = (model / STATE).read_bytes()
    assert manifest["state"] == {
        "file": STATE, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()
    }  # fmt: skip
    # the second model: one sensor, two detectors
    m2 = json.loads((reg / "versions" / "v2" / MANIFEST).read_text())
    assert m2["training"]["sensors"] == ["S1"] and m2["training"]["readings"] == SPLIT
    assert m2["config"]["detector"]["detectors"] == ["threshold", "zscore"]

    res = cli("models", "list", "--registry", reg, "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["models"]
    assert [(r["version"], r["current"], r["sensors"]) for r in rows] == [
        ("v1", False, 2), ("v2", False, 1)
    ]  # fmt: skip
    shown = json.loads(cli("models", "show", "v2", "--registry", reg).output)
    assert shown == m2
    res = cli("models", "show", "v9", "--registry", reg)
    assert res.exit_code == 2 and "has no model v9" in res.output


def test_the_model_state_is_what_the_pipeline_learned(db: Path, tmp_path: Path) -> None:
    """Loaded into a new pipeline, the model scores on as the pipeline that trained it."""
    settings = load_settings(None)
    reg = tmp_path / "models"
    version = train(db, reg)
    model = Registry(reg).load(Registry(reg).ref(version))
    continued = Replayer(settings)
    continued.pipeline = model.pipeline(settings)
    whole = Replayer(settings)
    whole.feed(columns(history(0, SPLIT)))
    later: list[Alert] = []
    again: list[Alert] = []
    whole.on_alert, continued.on_alert = later.append, again.append
    whole.feed(columns(history(SPLIT, N)))
    continued.feed(columns(history(SPLIT, N)))
    assert [a.alert_ts for a in later] == [a.alert_ts for a in again]
    assert len([a for a in again if a.state == "raised"]) >= len(SPIKES)
    a, b = whole.pipeline.state_dict(), continued.pipeline.state_dict()
    assert same(a["detectors"], b["detectors"]) and same(a["interval"], b["interval"])


def same(a: Any, b: Any) -> bool:
    """Equal trees of dicts, lists, arrays and scalars (NaN equal to NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) and a.dtype.kind in "fc":
        return np.array_equal(a, b, equal_nan=True)
    if isinstance(a, list) and a and isinstance(a[0], float):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return bool(a == b)


# ---- evaluate, promote, rollback ---------------------------------------------------------------
def evaluate(db: Path, reg: Path, version: str, labels: str) -> dict[str, Any]:
    res = cli(
        "models", "evaluate", version, "--labels", labels, "--registry", reg,
        "--from", f"sqlite:///{db}", "--since", str(T0 + SPLIT), "--until", str(T0 + N), "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc: dict[str, Any] = json.loads(res.output.strip().splitlines()[-1])
    return doc


def test_evaluate_promote_refused_when_worse_forced_then_rolled_back(
    db: Path, tmp_path: Path, labels: Path
) -> None:
    reg = tmp_path / "models"
    good = train(db, reg)  # threshold, zscore, stuck
    worse = train(db, reg, "--detectors", "stuck")  # sees no spike
    # the first model needs no evaluation
    res = cli("models", "promote", good, "--registry", reg)
    assert res.exit_code == 0 and "the first model of the registry" in res.output, res.output
    # not evaluated: refused, one line
    res = cli("models", "promote", worse, "--registry", reg)
    assert res.exit_code == 2 and "not evaluated" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1

    ev = evaluate(db, reg, worse, f"sim:{labels}")
    cand, base = ev["candidate"], ev["baseline"]
    assert base["version"] == good and cand["version"] == worse
    assert base["faults"] == len(SPIKES) and base["detected"] == len(SPIKES), base
    assert base["recall"] == 1.0 and base["f1"] > 0.5, base
    assert cand["recall"] == 0.0 and cand["f1"] == 0.0, cand
    assert cand["readings"] == base["readings"] == 2 * (N - SPLIT)
    # the figures are in the candidate's manifest
    assert Registry(reg).manifest(Registry(reg).ref(worse))["evaluation"] == ev

    res = cli("models", "promote", worse, "--registry", reg)
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and f"{worse} not promoted: f1 0.000 is below" in line, line
    assert Registry(reg).current().version == good  # type: ignore[union-attr]

    res = cli("models", "promote", worse, "--registry", reg, "--force")
    assert res.exit_code == 0 and "forced" in res.output, res.output
    assert Registry(reg).current().version == worse  # type: ignore[union-attr]
    listed = json.loads(cli("models", "list", "--registry", reg, "--json").output)["models"]
    assert [r["version"] for r in listed if r["current"]] == [worse]

    res = cli("models", "rollback", "--registry", reg)
    assert res.exit_code == 0 and f"{good} is the current model" in res.output, res.output
    assert Registry(reg).current().version == good  # type: ignore[union-attr]
    res = cli("models", "rollback", "--registry", reg)
    assert res.exit_code == 2 and "nothing to roll back to" in res.output
    actions = [(h["action"], h["version"], h["forced"]) for h in Registry(reg).history()]
    assert actions == [
        ("promote", good, False), ("promote", worse, True), ("rollback", good, False)
    ]  # fmt: skip


def test_a_better_candidate_is_promoted(db: Path, tmp_path: Path, labels: Path) -> None:
    reg = tmp_path / "models"
    weak = train(db, reg, "--detectors", "stuck")
    assert cli("models", "promote", weak, "--registry", reg).exit_code == 0
    strong = train(db, reg)
    ev = evaluate(db, reg, strong, str(labels))  # PATH.jsonl: simulator labels
    assert ev["candidate"]["f1"] > ev["baseline"]["f1"]
    res = cli("models", "promote", strong, "--registry", reg)
    assert res.exit_code == 0 and f"f1 {ev['candidate']['f1']:.3f} >= 0.000" in res.output


# ---- refused models --------------------------------------------------------------------------
def _damage(model: Path, how: str) -> None:
    state = model / STATE
    manifest = json.loads((model / MANIFEST).read_text())
    if how == "truncated":
        state.write_bytes(state.read_bytes()[:-100])
    elif how == "tampered":  # one byte changed: the manifest's hash no longer matches
        data = bytearray(state.read_bytes())
        data[200] ^= 0x01
        state.write_bytes(bytes(data))
    elif how == "rehashed":  # changed, and the manifest rewritten to match: the state's own
        data = bytearray(state.read_bytes())  # checksum still refuses it
        data[200] ^= 0x01
        state.write_bytes(bytes(data))
        manifest["state"]["sha256"] = hashlib.sha256(data).hexdigest()
        (model / MANIFEST).write_text(json.dumps(manifest))
    elif how == "foreign-format":
        manifest["format"] = "someone-elses-model"
        (model / MANIFEST).write_text(json.dumps(manifest))
    elif how == "foreign-major":
        manifest["package"] = "7.0.0"
        (model / MANIFEST).write_text(json.dumps(manifest))
    elif how == "pickle":
        import pickle

        data = pickle.dumps({"x": 1})
        state.write_bytes(data)
        manifest["state"] = {
            "file": STATE,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        (model / MANIFEST).write_text(json.dumps(manifest))
    elif how == "bad-config":
        manifest["config"]["detector"]["debounce"] = 0
        (model / MANIFEST).write_text(json.dumps(manifest))
    elif how == "no-manifest":
        (model / MANIFEST).unlink()


DAMAGE = {
    "truncated": "bytes, the manifest says",
    "tampered": "does not match the SHA-256 in the manifest",
    "rehashed": "checksum",
    "foreign-format": "not an mqtt-anomaly-model manifest",
    "foreign-major": "another major version",
    "pickle": "not a mqtt-anomaly state file",
    "bad-config": "config.detector.debounce",
    "no-manifest": "no manifest.json",
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_damaged_model_is_refused_with_one_line_and_the_current_kept(
    db: Path, tmp_path: Path, how: str
) -> None:
    reg = tmp_path / "models"
    good = train(db, reg)
    assert cli("models", "promote", good, "--registry", reg).exit_code == 0
    bad = train(db, reg)
    _damage(reg / "versions" / bad, how)
    with pytest.raises(ModelError, match=DAMAGE[how]) as caught:
        load_model(reg / "versions" / bad)
    assert "\n" not in str(caught.value)
    res = cli("models", "promote", bad, "--registry", reg, "--force")
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert Registry(reg).current().version == good  # type: ignore[union-attr]


# ---- detect starts from the current model ------------------------------------------------------
def _stored(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        conn.close()


def _detect(tmp_path: Path, broker_url: str, reg: Path, http: int) -> Any:
    import os
    import subprocess
    import sys

    return subprocess.Popen(
        [
            *(sys.executable, "-m", "mqtt_anomaly", "detect", "--broker", broker_url),
            *(
                "--store",
                f"sqlite:///{tmp_path / 'live.db'}",
                "--state-dir",
                str(tmp_path / "state"),
            ),
            *("--registry", str(reg), "--http", str(http), "--client-id", "models-under-test"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=dict(os.environ),
    )


async def _ready(http: int, proc: Any) -> None:
    """Poll /readyz until the service is connected and subscribed (or has died)."""
    import asyncio

    import httpx

    async def probe() -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as c:
                return (await c.get(f"http://127.0.0.1:{http}/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    deadline = time.monotonic() + 20
    while not await probe():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "detect did not become ready"
        await asyncio.sleep(0.05)


def _stop(proc: Any) -> str:
    import signal

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    return str(err.decode())


async def test_detect_starts_from_the_current_model_and_continues_it(
    db: Path, tmp_path: Path, mosquitto: Any
) -> None:
    from mqtt_anomaly.statefile import load

    from .helpers import eventually, reading_payload
    from .mosquitto import free_port
    from .test_service import publisher

    reg = tmp_path / "models"
    version = train(db, reg, "--detectors", "threshold,zscore")
    assert cli("models", "promote", version, "--registry", reg).exit_code == 0
    # what an uninterrupted pass over every reading learns
    whole = Replayer(load_settings(None, {"detector": {"detectors": ("threshold", "zscore")}}))
    whole.feed(columns(history()))
    expected = whole.pipeline.state_dict()

    http = free_port()
    proc = _detect(tmp_path, mosquitto.url, reg, http)
    try:
        await _ready(http, proc)
        async with publisher(mosquitto.url, "models-publisher") as pub:
            for r in history(SPLIT, N):
                pub.publish(
                    f"factory/{r.sensor_id}/temperature",
                    reading_payload(r.sensor_id, r.value, r.seq, r.ts),
                )
        await eventually(lambda: _stored(tmp_path / "live.db") == 2 * (N - SPLIT), timeout=30)
    finally:
        err = _stop(proc)
    assert f"model {version}: starting from its state (2 sensors; no saved state)" in err, err
    saved = load(tmp_path / "state" / "detector-state.mqas")
    assert saved["model"] == version
    # the model's configuration, and no relearning: the same state as the uninterrupted pass
    assert sorted(saved["detectors"]) == ["threshold", "zscore"]
    assert same(saved["detectors"], expected["detectors"])

    # the next start continues from the saved state, which is of the same model
    proc = _detect(tmp_path, mosquitto.url, reg, http)
    try:
        await _ready(http, proc)
    finally:
        err = _stop(proc)
    assert f"model {version}: continued from the saved state" in err, err


def test_a_damaged_current_model_is_refused_at_start_and_the_running_one_kept(
    db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mqtt_anomaly.models.registry import current_model
    from mqtt_anomaly.statefile import dump

    reg = tmp_path / "models"
    settings = load_settings(None, {"models": {"registry": reg}})
    running = train(db, reg)
    assert cli("models", "promote", running, "--registry", reg).exit_code == 0
    model = current_model(settings)
    assert model is not None and model.version == running
    saved = tmp_path / "detector-state.mqas"
    dump(saved, {**model.state, "model": running})  # what the service saved while running it
    newer = train(db, reg)
    assert cli("models", "promote", newer, "--registry", reg, "--force").exit_code == 0
    _damage(reg / "versions" / newer, "tampered")
    with caplog.at_level("ERROR", logger="mqtt_anomaly.models.registry"):
        kept = current_model(settings, saved)
    assert kept is not None and kept.version == running
    [line] = [r.getMessage() for r in caplog.records]
    assert "current model refused" in line and "does not match the SHA-256" in line
    assert f"keeping {running}, the model the saved state continues" in line
    caplog.clear()
    with caplog.at_level("ERROR", logger="mqtt_anomaly.models.registry"):
        assert current_model(settings) is None  # no saved state: no model
    assert "starting without a model" in caplog.records[0].getMessage()


# ---- other sources and labels ------------------------------------------------------------------
def test_train_and_evaluate_on_a_labelled_csv(tmp_path: Path) -> None:
    csv = tmp_path / "plant.csv"
    lines = ["timestamp,S1,S2,anomaly"]
    for i in range(N):
        lines.append(f"{T0 + i},{value('S1', i)},{value('S2', i)},{int(i in SPIKES)}")
    csv.write_text("\n".join(lines) + "\n")
    unlabelled = tmp_path / "train.csv"
    unlabelled.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    reg = tmp_path / "models"
    res = cli(
        "models", "train", "--csv", unlabelled, "--registry", reg, "--until", str(T0 + SPLIT - 1)
    )  # fmt: skip
    assert res.exit_code == 0 and res.output.strip().startswith(
        "v1: trained on 2,000 readings of 2 sensors"
    ), res.output
    res = cli(
        "models", "evaluate", "v1", "--labels", f"csv:{csv}", "--registry", reg,
        "--since", str(T0 + SPLIT), "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cand = json.loads(res.output.strip().splitlines()[-1])["candidate"]
    # every spike row flagged, and the rows after it while the alert clears (grace 10 s,
    # clear_after 3): no row was labelled normal and flagged far from a spike
    assert cand["true_positives"] == len(SPIKES) and cand["false_negatives"] == 0, cand
    assert cand["recall"] == 1.0 and cand["points"] == N - SPLIT  # the rows replayed


def test_models_evaluate_on_operator_feedback(db: Path, tmp_path: Path) -> None:
    """Feedback in the store (given through the store API) labels the alerts' readings."""
    reg = tmp_path / "models"
    version = train(db, reg)
    with SqliteStore(db, StoreSettings(flush_interval=0.05)) as st:
        ids = []
        for i, sensor in ((SPIKES[0], "S1"), (1600, "S2")):  # S2 at 1600: nothing there
            aid = alert_id(sensor, "threshold", "raised", i, T0 + i)
            st.add_alert(
                Alert(sensor, "threshold", "critical", "raised", 98.2, 1.0, 90.0, None, None,
                      T0 + i, T0 + i, id=aid)
            )  # fmt: skip
            ids.append(aid)
        assert st.flush(10)
        st.add_feedback(ids[0], "confirmed", "pump 1 spike")
        st.add_feedback(ids[1], "false_alarm")
    res = cli(
        "models", "evaluate", version, "--labels", f"feedback:sqlite:///{db}",
        "--registry", reg, "--from", f"sqlite:///{db}", "--since", str(T0 + SPLIT), "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output.strip().splitlines()[-1])
    cand = ev["candidate"]
    assert cand["points"] == 2 and ev["labels"] == f"feedback:sqlite:///{db}"
    # the model flags S1's spike (confirmed) and not S2 at 1600 (false alarm: rightly quiet)
    assert (cand["true_positives"], cand["false_positives"], cand["false_negatives"]) == (1, 0, 0)
    assert cand["f1"] == 1.0
    assert ev["baseline"]["version"] is None  # no current model: the configured detectors


def test_train_from_kafka_learns_what_the_store_teaches(
    shared_kafka: Any, db: Path, tmp_path: Path
) -> None:
    from .kafka import unique
    from .test_replay import produce

    topic = unique("train")
    produce(shared_kafka, topic, history(), [])
    reg = tmp_path / "models"
    from_store = train(db, reg)
    res = cli(
        "models", "train", "--kafka", f"{shared_kafka.url}/{topic}", "--registry", reg,
        "--until", str(T0 + SPLIT - 1),
    )  # fmt: skip
    assert res.exit_code == 0 and res.output.strip().startswith("v2: trained on 2,000 readings")
    a = Registry(reg).load(Registry(reg).ref(from_store))
    b = Registry(reg).load(Registry(reg).ref("v2"))
    assert b.manifest["training"]["source"] == f"{shared_kafka.url}/{topic}"
    assert same(a.state["detectors"], b.state["detectors"])


def test_train_on_the_sensors_of_an_asset(db: Path, tmp_path: Path) -> None:
    config = tmp_path / "plant.toml"
    config.write_text('[[assets.define]]\nid = "pump-1"\nsensors = ["S2", "S9"]\n')
    reg = tmp_path / "models"
    res = cli(
        "models", "train", "-c", config, "--store", f"sqlite:///{db}", "--registry", reg,
        "--asset", "pump-1",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    t = Registry(reg).manifest(Registry(reg).ref("v1"))["training"]
    assert t["sensors"] == ["S2"] and t["selected_assets"] == ["pump-1"] and t["readings"] == N
    res = cli("models", "train", "--store", f"sqlite:///{db}", "--registry", reg, "--sensor", "S7")
    assert res.exit_code == 2 and "no readings to train on" in res.output
    res = cli("models", "train", "--store", f"sqlite:///{db}", "--csv", "x.csv", "--registry", reg)
    assert res.exit_code == 2 and "give one source" in res.output


def test_concurrent_trainings_get_distinct_versions(db: Path, tmp_path: Path) -> None:
    """Versions are claimed under the registry's lock: four writers at once, four versions."""
    from concurrent.futures import ThreadPoolExecutor

    settings = load_settings(None)
    reg = Registry(tmp_path / "models")
    trained = Replayer(settings)
    trained.feed(columns(history(0, 50)))
    state = trained.pipeline.state_dict()
    from mqtt_anomaly.models.format import model_config, model_state

    def create(_: int) -> str:
        return reg.create(
            config=model_config(settings), training={"readings": 100}, state=model_state(state)
        ).version

    with ThreadPoolExecutor(4) as pool:
        made = sorted(pool.map(create, range(4)))
    assert made == ["v1", "v2", "v3", "v4"]
    assert [r.version for r in reg.versions()] == made
    assert not [p for p in (tmp_path / "models" / "versions").iterdir() if p.name.startswith(".")]
    for version in made:
        reg.load(reg.ref(version))


def test_a_damaged_registry_index_is_one_line(db: Path, tmp_path: Path) -> None:
    reg = tmp_path / "models"
    version = train(db, reg)
    assert cli("models", "promote", version, "--registry", reg).exit_code == 0
    (reg / "registry.json").write_text('{"current": "v1", "stack": [], "history": []}')
    for args in (("list",), ("promote", version), ("rollback",)):
        res = cli("models", *args, "--registry", reg)
        assert res.exit_code == 2 and "not a registry index" in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1


def test_the_service_starts_from_the_model_when_the_saved_state_is_unusable(
    db: Path, tmp_path: Path
) -> None:
    from mqtt_anomaly.service import DetectorService
    from mqtt_anomaly.transport.memory import MemoryBroker

    reg = tmp_path / "models"
    version = train(db, reg)
    settings = load_settings(
        None,
        {
            "broker": {"url": "mqtt://127.0.0.1:1"},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state"},
        },
    )
    model = Registry(reg).load(Registry(reg).ref(version))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "detector-state.mqas").write_bytes(b"not a state file")
    svc = DetectorService(
        model.settings(settings), console=False, transport=MemoryBroker().transport, model=model
    )
    svc.restore()
    assert svc.pipeline.sensor_ids == ["S1", "S2"]
    aside = [p.name for p in (tmp_path / "state").iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    assert svc._snapshot()["model"] == version


def test_the_promotion_metric_is_a_setting(db: Path, tmp_path: Path, labels: Path) -> None:
    """On precision the detector that raises nothing is not worse (nothing it raised was
    wrong): [models] metric decides what promote compares."""
    reg = tmp_path / "models"
    good = train(db, reg)
    assert cli("models", "promote", good, "--registry", reg).exit_code == 0
    quiet = train(db, reg, "--detectors", "stuck")
    ev = evaluate(db, reg, quiet, f"sim:{labels}")
    assert ev["candidate"]["precision"] == ev["baseline"]["precision"] == 1.0
    assert cli("models", "promote", quiet, "--registry", reg).exit_code == 2  # f1: worse
    res = runner.invoke(
        app,
        ["models", "promote", quiet, "--registry", str(reg)],
        env={"MQTT_ANOMALY_MODELS__METRIC": "precision"},
    )
    assert res.exit_code == 0 and "precision 1.000 >= 1.000" in res.output, res.output

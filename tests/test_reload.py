"""Configuration reload of a running service, and the shadow candidate.

The swap itself on a pipeline (what is kept, what starts afresh, what is cleared); the service
in process against a real Mosquitto (the new threshold on the very next reading, the learned
state of an unchanged detector identical across the swap, the shadow's alerts only on the
shadow topic and marked in the store); and the real ``mqtt-anomaly detect`` under a QoS 1
stream, reloaded by SIGHUP and ``POST /api/reload``, refusing a live-only change and keeping
its configuration when the new file is invalid, with every reading stored and scored once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from typer.testing import CliRunner

from mqtt_anomaly.cli import app
from mqtt_anomaly.config import FaultRates, Settings, ShadowSettings, load_settings
from mqtt_anomaly.errors import ConfigError, ModelError
from mqtt_anomaly.liveconf import ConfigSource, changed_keys, refused_keys
from mqtt_anomaly.messages import Alert
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.reloading import Reloads
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.shadow import Agreement, ShadowRun, candidate_settings, position
from mqtt_anomaly.simulate.model import FleetModel
from mqtt_anomaly.store import open_store
from mqtt_anomaly.swap import REMOVED, swap_detection
from mqtt_anomaly.transport.memory import MemoryBroker
from mqtt_anomaly.web import HttpSettings, http_server

from .helpers import Observer, eventually, reading_payload
from .mosquitto import Mosquitto
from .test_service import Running, memory_settings, publisher, settings_for

Message = tuple[str, bytes, float]


def msg(sid: str, value: float, seq: int, ts: float) -> Message:
    return (f"factory/{sid}/temperature", reading_payload(sid, value, seq, ts), ts)


def steady(sensors: int, n: int, t0: float, value: float = 25.0, start: int = 0) -> list[Message]:
    rng = np.random.default_rng(3)
    return [
        msg(f"S{s}", value + float(rng.normal(0, 0.3)), k, t0 + k)
        for k in range(start, start + n)
        for s in range(sensors)
    ]


def settings(**detector: Any) -> Settings:
    return load_settings(None, {"detector": detector, "store": {"url": "none://"}})


# ---- the swap on a pipeline ------------------------------------------------------------
def test_unchanged_detectors_keep_their_state_the_new_threshold_scores_the_next_reading() -> None:
    p = Pipeline(settings())
    t0 = time.time() - 1000
    assert not p.process(steady(3, 100, t0, value=60.0)).alerts
    zscore = next(d for d in p.detectors if d.name == "zscore")
    learned = zscore.state_dict()
    assert p.drift.scored[:3].tolist() == [100, 100, 100]
    res = swap_detection(p, settings(threshold=50.0))
    assert p.drift.scored[:3].tolist() == [0, 0, 0]  # scores of another configuration: again
    assert (res.kept, res.changed, res.added, res.removed) == (
        ["zscore", "stuck"],
        ["threshold"],
        [],
        [],
    )
    same = next(d for d in p.detectors if d.name == "zscore")
    assert same is zscore
    for k, a in same.state_dict()["arrays"].items():
        assert np.array_equal(a, learned["arrays"][k]), k
    assert learned["arrays"]["n"][:3].tolist() == [100, 100, 100]  # it had learned
    out = p.process([msg("S0", 60.0, 100, t0 + 100)])  # the very next reading
    assert [(a.detector, a.state, a.threshold) for a in out.alerts] == [
        ("threshold", "raised", 50.0)
    ]
    assert p.counters.processed == 301


def test_a_removed_detector_clears_its_active_alerts_and_health() -> None:
    p = Pipeline(settings())
    t0 = time.time() - 1000
    p.process(steady(2, 40, t0))
    out = p.process([msg("S1", 98.0, 40, t0 + 40)])
    assert {a.detector for a in out.alerts if a.state == "raised"} >= {"threshold"}
    raised = {a.detector for a in out.alerts if a.state == "raised"}
    res = swap_detection(p, settings(detectors=["stuck"]))
    assert sorted(res.removed) == ["threshold", "zscore"]
    cleared = res.out.alerts
    assert sorted(a.detector for a in cleared) == sorted(raised)
    assert all(
        a.state == "cleared" and a.message == REMOVED and a.sensor_id == "S1" for a in cleared
    )
    assert res.out.health == [("S1", "ok")]
    assert set(p.books) == {"stuck", "silence", "offline"}
    assert list(p.view().healths()) == ["ok", "ok"]
    # the state saved now restores into a pipeline of the new configuration
    fresh = Pipeline(settings(detectors=["stuck"]))
    assert fresh.load_state_dict(p.state_dict()) == []


def test_overrides_are_applied_again_to_known_sensors() -> None:
    base = {"store": {"url": "none://"}}
    p = Pipeline(load_settings(None, base))
    t0 = time.time() - 1000
    p.process(steady(2, 10, t0, value=70.0))
    over = {**base, "overrides": {"sensors": {"S1": {"threshold": 60.0}}}}
    swap_detection(p, load_settings(None, over))
    out = p.process([msg("S0", 70.0, 10, t0 + 10), msg("S1", 70.0, 10, t0 + 10)])
    assert [(a.sensor_id, a.detector, a.threshold) for a in out.alerts] == [
        ("S1", "threshold", 60.0)
    ]
    swap_detection(p, load_settings(None, base))  # the override is gone: S1 back to 90
    threshold = next(d for d in p.detectors if d.name == "threshold")
    assert threshold.threshold_of(1) == 90.0  # type: ignore[attr-defined]


def test_a_model_s_state_is_taken_by_sensor_id() -> None:
    t0 = time.time() - 1000
    trained = Pipeline(settings(params={"zscore": {"alpha": 0.05}}))
    trained.process(steady(2, 50, t0, value=40.0)[::-1][::-1])  # S0, S1
    model = trained.state_dict()
    live = Pipeline(settings())
    live.process([msg("S1", 20.0, 0, t0), msg("S9", 20.0, 0, t0), msg("S0", 20.0, 0, t0)])
    res = swap_detection(live, settings(params={"zscore": {"alpha": 0.05}}), state=model)
    assert res.changed == ["zscore"] and res.from_state == ["threshold", "zscore", "stuck"]
    z = next(d for d in live.detectors if d.name == "zscore")
    mean = z.state["mean"]
    assert mean[live.sensors["S0"]] == pytest.approx(trained.detectors[1].state["mean"][0])
    assert mean[live.sensors["S1"]] == pytest.approx(trained.detectors[1].state["mean"][1])
    assert z.state["n"][live.sensors["S9"]] == 0  # not in the model: learns afresh


def test_invalid_settings_change_nothing() -> None:
    p = Pipeline(settings())
    before = list(p.detectors)
    with pytest.raises(ConfigError, match=r"params\.zscore"):
        swap_detection(p, settings(params={"zscore": {"no_such": 1}}))
    assert p.detectors == before and p.settings.detector.params == {}


def test_what_a_reload_may_change() -> None:
    a = settings()
    b = load_settings(
        None,
        {
            "detector": {"threshold": 70.0},
            "store": {"url": "none://"},
            "service": {"state_dir": "elsewhere"},
            "topics": {"subscribe": ["plant/#"]},
        },
    )
    assert changed_keys(a, b) == ["detector.threshold", "service.state_dir", "topics.subscribe"]
    assert refused_keys(a, b) == ["service.state_dir", "topics.subscribe"]


# ---- the shadow on a seeded simulation ---------------------------------------------------
def simulated(sensors: int, rounds: int, seed: int) -> list[list[Message]]:
    """A seeded fleet with faults (spikes, level shifts, drifts, ...), as batches of messages."""
    rates = FaultRates(spike=60, level_shift=20, drift=20, stuck=20, noise_burst=20)
    model = FleetModel(sensors, interval=1.0, seed=seed, rates=rates)
    t0 = time.time() - rounds - 10
    batches = []
    for _ in range(rounds):
        step = model.step(np.arange(sensors))
        batch = []
        for i, k, t, v, sent in zip(step.idx, step.k, step.t, step.values, step.sent, strict=True):
            if sent:
                batch.append(msg(f"M{int(i):02d}", float(v), int(k), t0 + float(t)))
        batches.append(batch)
    return batches


def shadow_settings(**shadow: Any) -> Settings:
    return load_settings(
        None,
        {
            "store": {"url": "none://"},
            "detector": {"silence_factor": 1e9},
            "shadow": {
                "enabled": True,
                "detector": {"threshold": 30.0, "params": {"zscore": {"z_alert": 3.5}}},
                **shadow,
            },
        },
    )


def _brute_force(live: list[float], shadow: list[float], tol: float) -> tuple[int, int, int]:
    both = 0
    left = sorted(shadow)
    for p in sorted(live):
        match = next((q for q in left if abs(q - p) <= tol), None)
        if match is not None:
            left.remove(match)
            both += 1
    return both, len(live) - both, len(left)


def test_shadow_agreement_on_a_seeded_simulation() -> None:
    s = shadow_settings(tolerance=3, max_rate=1e9)
    batches = simulated(12, 400, seed=5)
    p = Pipeline(s)
    published: list[tuple[str, bytes]] = []
    stored: list[Alert] = []
    run = ShadowRun(p, s, publish=lambda t, b: published.append((t, b)), store=stored.append)
    run.attach()
    live_alerts: list[Alert] = []
    for batch in batches:
        out = p.process(batch)
        live_alerts += out.alerts
        run.after(out)
    # the same alerts as two pipelines scoring alone: the shadow changes nothing live
    alone, cand = Pipeline(s), Pipeline(candidate_settings(s))
    alone_alerts: list[Alert] = []
    cand_alerts: list[Alert] = []
    for batch in batches:
        alone_alerts += alone.process(batch).alerts
        cand_alerts += cand.process(batch).alerts
    assert [a.id for a in live_alerts] == [a.id for a in alone_alerts]
    detector_names = {"threshold", "zscore", "stuck"}
    cand_ids = [a.id for a in cand_alerts if a.detector in detector_names]
    assert [a.id for a in stored] == cand_ids
    assert all(a.shadow == "candidate" for a in stored)
    assert {t for t, _ in published} <= {f"mqtt-anomaly/shadow/M{i:02d}/alerts" for i in range(12)}
    assert len(published) == len(stored)
    # the report against a brute-force match of the two independent runs
    report = run.report()
    rows = {(r["sensor_id"], r["detector"]): r for r in report["sensors"]}
    for key in {
        (a.sensor_id, a.detector)
        for a in alone_alerts + cand_alerts
        if a.detector in detector_names
    }:
        lv = [
            position(a)
            for a in alone_alerts
            if (a.sensor_id, a.detector) == key and a.state == "raised"
        ]
        sh = [
            position(a)
            for a in cand_alerts
            if (a.sensor_id, a.detector) == key and a.state == "raised"
        ]
        want = _brute_force([x for x in lv if x is not None], [x for x in sh if x is not None], 3)
        if want == (0, 0, 0):
            continue
        r = rows[key]
        assert (r["both"], r["live_only"], r["shadow_only"]) == want, key
    t = report["totals"]
    assert t["both"] > 0 and t["shadow_only"] > 0, t  # the candidate is more sensitive
    assert report["cost"]["readings"] == p.counters.processed


def test_a_noisy_candidate_is_counted_not_flooded_out() -> None:
    s = shadow_settings(max_rate=5.0, detector={"threshold": 10.0})  # every reading alarms
    p = Pipeline(s)
    sent: list[str] = []
    stored: list[Alert] = []
    run = ShadowRun(p, s, publish=lambda t, b: sent.append(t), store=stored.append)
    run.attach()
    now = [1000.0]
    run.clock = lambda: now[0]
    run._last = now[0]
    t0 = time.time() - 100
    run.after(p.process([msg(f"S{i}", 25.0, 0, t0) for i in range(20)]))
    assert run.alerts == 20 and len(stored) == len(sent) == 5 and run.dropped == 15
    now[0] += 1.0  # a second later: five more may go
    run.after(p.process([msg(f"T{i}", 25.0, 0, t0) for i in range(20)]))
    assert len(stored) == 10 and run.dropped == 30
    assert run.report()["totals"]["shadow_only"] == 40  # the agreement counts every one
    assert run.report()["shadow_alerts_dropped"] == 30


def test_agreement_matches_within_the_tolerance() -> None:
    def a(seq: int, det: str = "zscore") -> Alert:
        return Alert(
            "S",
            det,
            "warning",
            "raised",
            1.0,
            1.0,
            None,
            None,
            None,
            1.0,
            1.0,
            id=f"S:{det}:raised:{seq}@1.0",
        )

    ag = Agreement(2)
    ag.observe([a(10), a(50), a(90)], "live", {"zscore"})
    ag.observe([a(12), a(53), a(200)], "shadow", {"zscore"})
    (row,) = ag.report()["sensors"]
    assert (row["both"], row["live_only"], row["shadow_only"]) == (1, 2, 2)
    assert row["examples"] == {
        "both": [[10.0, 12.0]],
        "live_only": [50.0, 90.0],
        "shadow_only": [53.0, 200.0],
    }


# ---- the service in process, real broker ------------------------------------------------
def write_config(path: Path, text: str) -> None:
    """Write the file and move its modification time on (a watch compares it)."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


async def test_service_reload_between_batches(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    write_config(config, "[detector]\nthreshold = 90.0\nsilence_factor = 1e9\n")
    base = settings_for(mosquitto, tmp_path)
    overrides = {
        "broker": {"url": mosquitto.url, "client_id": "detector-under-test", "keepalive": 2},
        "store": {"url": "none://"},
        "service": {"state_dir": tmp_path / "state"},
    }
    source = ConfigSource(config, overrides)
    running = Running(source.load())
    assert running.service.settings.broker == base.broker
    svc = running.service
    svc.reloads = Reloads(svc, source)
    alerts: list[Alert] = []
    svc.listeners.append(lambda out: alerts.extend(out.alerts))
    t0 = time.time() - 100
    async with running, publisher(mosquitto.url) as pub:
        for k in range(40):
            pub.publish(
                "factory/S1/temperature", reading_payload("S1", 60.0 + 0.1 * (k % 3), k, t0 + k)
            )
        await eventually(lambda: len(running.processed) == 40, what="40 readings")
        zscore = next(d for d in svc.pipeline.detectors if d.name == "zscore")
        learned = zscore.state_dict()["arrays"]
        write_config(config, "[detector]\nthreshold = 50.0\nsilence_factor = 1e9\n")
        outcome = svc.reloads.from_source("test")
        assert outcome.result == "applied" and outcome.changed == ["detector.threshold"]
        now = next(d for d in svc.pipeline.detectors if d.name == "zscore")
        assert now is zscore
        assert all(np.array_equal(now.state_dict()["arrays"][k], v) for k, v in learned.items())
        assert not alerts
        pub.publish("factory/S1/temperature", reading_payload("S1", 60.0, 40, t0 + 40))
        await eventually(lambda: len(running.processed) == 41, what="the next reading")
        assert [(a.detector, a.state, a.threshold) for a in alerts] == [
            ("threshold", "raised", 50.0)
        ]
        assert alerts[0].id == f"S1:threshold:raised:40@{t0 + 40!r}"
        # invalid: the configuration in force stays
        write_config(config, '[detector]\nthreshold = "hot"\n')
        bad = svc.reloads.from_source("test")
        assert bad.result == "failed" and "detector.threshold" in bad.message
        assert svc.settings.detector.threshold == 50.0
        # back to the first configuration
        back = svc.reloads.rollback()
        assert back.result == "applied" and svc.settings.detector.threshold == 90.0
        assert svc.reloads.counts == {"applied": 2, "unchanged": 0, "refused": 0, "failed": 1}
        # the file watch (service.watch_config): a change of the file is a reload
        watch = asyncio.create_task(svc.reloads.watch(0.02))
        try:
            write_config(config, "[detector]\nthreshold = 70.0\nsilence_factor = 1e9\n")
            await eventually(lambda: svc.settings.detector.threshold == 70.0, what="the watch")
            assert svc.reloads.last is not None and svc.reloads.last.trigger == "watch"
            assert svc.reloads.counts["applied"] == 3
        finally:
            watch.cancel()


async def test_shadow_alerts_only_on_the_shadow_topic(mosquitto: Mosquitto, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    s = load_settings(
        None,
        {
            "broker": {"url": mosquitto.url, "client_id": "detector-under-test", "keepalive": 2},
            "store": {"url": f"sqlite:///{db}", "flush_interval": 0.05},
            "service": {"state_dir": tmp_path / "state"},
            "detector": {"silence_factor": 1e9},
            "shadow": {"enabled": True, "label": "t50", "detector": {"threshold": 50.0}},
        },
    )
    store = open_store(s.store.url, s.store)
    t0 = time.time() - 100
    with store:
        running = Running(s, store=store)
        async with (
            running,
            Observer(mosquitto.url, ["factory/+/alerts", "mqtt-anomaly/shadow/#"]) as obs,
            publisher(mosquitto.url) as pub,
        ):
            for sid in ("A", "B"):
                for k in range(30):
                    pub.publish(f"factory/{sid}/temperature", reading_payload(sid, 60.0, k, t0 + k))
            await eventually(lambda: len(running.processed) == 60, what="60 readings")
            await eventually(lambda: len(obs.on("/alerts")) == 2, what="two shadow alerts")
            async with http_server(running.service, HttpSettings(listen="127.0.0.1:0")) as port:
                api = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=api) as http:
                    report = (await http.get("/api/shadow")).json()
                    status = (await http.get("/api/status")).json()
                    metrics = (await http.get("/metrics")).text
                    active = (await http.get("/api/alerts/active")).json()
                    refused = await http.post("/api/reload", json={})  # no token: off
                runner = CliRunner()
                cli = [*("shadow", "report", "--api", api)]
                as_json = await asyncio.to_thread(runner.invoke, app, [*cli, "--json"])
                table = await asyncio.to_thread(runner.invoke, app, [*cli, "--sensor", "A"])
            assert as_json.exit_code == 0, as_json.output
            assert json.loads(as_json.output) == report
            assert table.exit_code == 0, table.output
            assert "both 0, live only 0, shadow only 1" in table.output
            assert status["shadow"] == {"enabled": True, "label": "t50"}
            assert "mqtt_anomaly_shadow_alerts_total 2.0" in metrics
            assert active == [] and refused.status_code == 403
        assert store.flush(10)
        topics = sorted(t for t, *_ in obs.messages)
        assert topics == ["mqtt-anomaly/shadow/A/alerts", "mqtt-anomaly/shadow/B/alerts"]
        shadow_alerts = [msgspec.json.decode(p) for _, p, *_ in obs.messages]
        assert {(a["detector"], a["state"], a["shadow"]) for a in shadow_alerts} == {
            ("threshold", "raised", "t50")
        }
        assert store.recent_alerts(limit=10) == []  # nothing live
        assert len(store.recent_alerts(limit=10, shadow=True)) == 2
        listed = CliRunner().invoke(
            app, ["alerts", "--store", f"sqlite:///{db}", "--shadow", "--json"]
        )
        assert listed.exit_code == 0, listed.output
        assert sorted(json.loads(line)["sensor_id"] for line in listed.output.splitlines()) == [
            "A",
            "B",
        ]
        plain = CliRunner().invoke(app, ["alerts", "--store", f"sqlite:///{db}", "--json"])
        assert plain.exit_code == 0 and plain.output.strip() == ""
    assert report["totals"] == {"both": 0, "live_only": 0, "shadow_only": 2}
    assert report["detectors"]["shadow"] == ["threshold", "zscore", "stuck"]


# ---- the real `detect`: SIGHUP and the API under a QoS 1 stream ---------------------------
SENSORS, PER_SENSOR = 40, 150
TOTAL = SENSORS * PER_SENSOR
TOKEN = "reload-test-token-0123456789"
CONFIG = """
[detector]
detectors = ["threshold", "zscore"]
threshold = {threshold}
silence_factor = 1e9

[alerts]
flood_threshold = 0

[http]
listen = "127.0.0.1:{port}"
token = "{token}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stored(db: Path, sql: str = "SELECT count(*) FROM readings") -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.timeout(240)
async def test_detect_reloads_on_sighup_and_api_mid_stream(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    write_config(config, CONFIG.format(threshold=90.0, port=port, token=TOKEN))
    db = tmp_path / "history.db"
    log = tmp_path / "detect.log"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "mqtt_anomaly", "detect", "-c", str(config)),
            *("--broker", mosquitto.url, "--store", f"sqlite:///{db}"),
            *("--state-dir", str(tmp_path / "state")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        cwd=tmp_path,
        env=dict(os.environ),
    )
    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    t0 = time.time() - PER_SENSOR - 10
    messages = [
        (
            f"factory/S{s:02d}/temperature",
            reading_payload(f"S{s:02d}", 60.0 + 0.05 * (k % 5), k, t0 + k),
        )
        for k in range(PER_SENSOR)
        for s in range(SENSORS)
    ]

    async def ready() -> bool:
        try:
            return (await http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_for(cond: Any, what: str, timeout: float = 60) -> None:
        start = time.monotonic()
        while not await cond():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def reloads(result: str) -> float:
        text = (await http.get("/metrics")).text
        return metric(text, f'mqtt_anomaly_reloads_total{{result="{result}"}}')

    try:
        await wait_for(ready, "the service")
        status = (await http.get("/api/status")).json()
        first_version = status["config_version"]
        async with publisher(mosquitto.url, "reload-publisher") as pub:

            async def publish_all() -> None:
                for i, (topic, payload) in enumerate(messages):
                    pub.publish(topic, payload)
                    if i % 100 == 99:  # about 2,000 a second: the stream lasts 3 s
                        await asyncio.sleep(0.05)

            sending = asyncio.create_task(publish_all())
            await eventually(lambda: stored(db) >= TOTAL // 4, timeout=60, what="a quarter")
            # 1. SIGHUP with a lower threshold: applied between two batches
            write_config(config, CONFIG.format(threshold=50.0, port=port, token=TOKEN))
            proc.send_signal(signal.SIGHUP)

            async def applied() -> bool:
                return await reloads("applied") == 1

            await wait_for(applied, "the SIGHUP reload")
            at_reload = stored(db)
            assert at_reload < TOTAL, "the reload came after the stream"
            # 2. an invalid file over the API: failed, the configuration in force kept
            write_config(config, "[detector]\nthreshold = 50.0\nthreshold_clear = 70.0\n")
            r = await http.post("/api/reload", json={})
            assert r.status_code == 409 and r.json()["detail"]["result"] == "failed"
            assert "threshold_clear" in r.json()["detail"]["message"]
            # 3. a live-only setting changed: refused, naming it
            text = CONFIG.format(threshold=40.0, port=port, token=TOKEN)
            write_config(config, text + '\n[service]\nack_after = "durable"\n')
            r = await http.post("/api/reload", json={})
            assert r.status_code == 409 and r.json()["detail"]["result"] == "refused"
            assert "service.ack_after" in r.json()["detail"]["message"]
            # 4. a detector's parameter over the API, then back to the SIGHUP's configuration
            write_config(
                config,
                CONFIG.format(threshold=50.0, port=port, token=TOKEN).replace(
                    "[alerts]", "[detector.params.zscore]\nalpha = 0.05\n\n[alerts]"
                ),
            )
            r = await http.post("/api/reload", json={})
            assert r.status_code == 200 and r.json()["changed"] == ["detector.params"]
            r = await http.post("/api/reload", json={"rollback": True})
            assert r.status_code == 200 and r.json()["trigger"] == "api"
            await sending
            await eventually(lambda: stored(db) >= TOTAL, timeout=120, what="every reading")
        m = (await http.get("/metrics")).text
        assert metric(m, "mqtt_anomaly_readings_processed_total") == TOTAL  # none twice
        assert await reloads("applied") == 3
        assert await reloads("failed") == 1 and await reloads("refused") == 1
        status = (await http.get("/api/status")).json()
        assert status["config_version"] != first_version
        assert status["reloads"] == {"applied": 3, "unchanged": 0, "refused": 1, "failed": 1}
        unauthenticated = await httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}").post(
            "/api/reload", json={}
        )
        assert unauthenticated.status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        await http.aclose()
    assert proc.returncode == 0, log.read_text()
    rows = stored(db, "SELECT count(*) FROM (SELECT sensor_id, seq FROM readings GROUP BY 1, 2)")
    assert rows == stored(db) == TOTAL
    # before the SIGHUP no threshold alert (60 < 90); after it, one per sensor, at once
    raised = stored(
        db, "SELECT count(*) FROM alerts WHERE detector = 'threshold' AND state = 'raised'"
    )
    assert raised == SENSORS
    lines = [line for line in log.read_text().splitlines() if "configuration reload" in line]
    assert len(lines) == 5, lines
    assert "applied (sighup" in lines[0] and "detector.threshold" in lines[0]
    assert "refused (api" in lines[2] and "service.ack_after" in lines[2]


async def test_the_shadow_s_state_survives_a_restart(tmp_path: Path) -> None:
    def candidate(alpha: float) -> ShadowSettings:
        return ShadowSettings(enabled=True, detector={"params": {"zscore": {"alpha": alpha}}})

    s = memory_settings(tmp_path).model_copy(update={"shadow": candidate(0.1)})
    broker = MemoryBroker()
    async with Running(s, transport=broker.transport) as run:
        broker.send(
            ("factory/S1/temperature", reading_payload("S1", 25.0 + (seq % 3) * 0.1, seq))
            for seq in range(60)
        )
        await eventually(lambda: len(run.processed) == 60)
        assert run.service.shadow is not None
        learned = run.service.shadow.scorer.state_dict()["detectors"]["zscore"]
    assert learned["arrays"]["n"][0] == 60 and learned["params"]["alpha"] == 0.1
    restarted = DetectorService(s, console=False, transport=broker.transport)
    restarted.restore()
    assert restarted.shadow is not None
    again = restarted.shadow.scorer.state_dict()["detectors"]["zscore"]
    for k, v in learned["arrays"].items():
        assert np.array_equal(again["arrays"][k][:1], v[:1]), k
    # another candidate: its detectors do not fit the saved state and learn again
    other = s.model_copy(update={"shadow": candidate(0.2)})
    fresh = DetectorService(other, console=False, transport=broker.transport)
    fresh.restore()
    assert fresh.shadow is not None
    n = fresh.shadow.scorer.state_dict()["detectors"]["zscore"]["arrays"]["n"]
    assert n[:1].tolist() in ([], [0])


# ---- a model promoted in the registry ------------------------------------------------------
def _model(reg: Path, s: Settings, alpha: float, base: float) -> str:
    """A model of zscore with ``alpha``, trained on S1 and S2 around ``base``; promoted."""
    from mqtt_anomaly.models.format import model_config, model_state
    from mqtt_anomaly.models.registry import Registry

    trained = s.model_copy(
        update={"detector": s.detector.model_copy(update={"params": {"zscore": {"alpha": alpha}}})}
    )
    p = Pipeline(trained)
    t0 = time.time() - 5000
    p.process([msg(sid, base, k, t0 + k) for k in range(200) for sid in ("S2", "S1")])
    ref = Registry(reg).create(
        config=model_config(trained), training={"test": True}, state=model_state(p.state_dict())
    )
    Registry(reg).promote(ref.version, force=True)
    return ref.version


async def test_a_promoted_model_is_picked_up_by_reload(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    write_config(config, "[detector]\nsilence_factor = 1e9\n")
    overrides = {
        "broker": {"url": mosquitto.url, "client_id": "detector-under-test", "keepalive": 2},
        "store": {"url": "none://"},
        "service": {"state_dir": tmp_path / "state"},
    }
    source = ConfigSource(config, overrides)
    running = Running(source.load())
    svc = running.service
    svc.reloads = Reloads(svc, source)
    reg = tmp_path / "state" / "models"  # the default registry
    t0 = time.time() - 100
    async with running, publisher(mosquitto.url) as pub:
        for k in range(40):
            pub.publish("factory/S1/temperature", reading_payload("S1", 60.0, k, t0 + k))
        await eventually(lambda: len(running.processed) == 40, what="40 readings")
        assert svc.reloads.from_source("test").result == "unchanged"  # no model yet
        v1 = _model(reg, svc.settings, alpha=0.05, base=25.0)
        outcome = svc.reloads.from_source("sighup")
        assert outcome.result == "applied", outcome
        assert "model none -> v1" in outcome.message and outcome.changed == ["detector.params"]
        assert svc.model is not None and svc.model.version == v1 == svc.reloads.model_version
        z = next(d for d in svc.pipeline.detectors if d.name == "zscore")
        assert z.params()["alpha"] == 0.05
        slot = svc.pipeline.sensors["S1"]
        assert z.state["mean"][slot] == pytest.approx(25.0)  # the model's, not 60 learned here
        assert z.state["n"][slot] == 200
        assert svc.pipeline.sensors.keys() == {"S1"}  # the model's S2 is not a sensor here
        model_drift = svc.model.state["drift"]["arrays"]["scored"]
        assert svc.pipeline.drift.scored[slot] == model_drift[1] > 0  # its reference, by id
        pub.publish("factory/S1/temperature", reading_payload("S1", 25.0, 40, t0 + 40))
        await eventually(lambda: len(running.processed) == 41, what="the next reading")
        assert z.state["n"][slot] == 201
        assert svc.reloads.from_source("sighup").result == "unchanged"  # v1 goes on learning
        assert z.state["n"][slot] == 201
        # the watch sees a promotion in the registry
        watch = asyncio.create_task(svc.reloads.watch(0.02))
        try:
            v2 = _model(reg, svc.settings, alpha=0.1, base=30.0)
            await eventually(lambda: svc.reloads.model_version == v2, what="the watch")
        finally:
            watch.cancel()
        z2 = next(d for d in svc.pipeline.detectors if d.name == "zscore")
        assert z2.params()["alpha"] == 0.1 and z2.state["mean"][slot] == pytest.approx(30.0)
        assert svc._snapshot()["model"] == v2  # the saved state continues v2
        status = svc.reloads.status()
        assert status["model_version"] == v2 and status["reloads"]["applied"] == 2


async def test_a_model_version_as_the_shadow_candidate(tmp_path: Path) -> None:
    base = memory_settings(tmp_path)
    reg = tmp_path / "state" / "models"
    version = _model(reg, base, alpha=0.05, base=25.0)
    s = base.model_copy(update={"shadow": ShadowSettings(enabled=True, model=version)})
    broker = MemoryBroker()
    t0 = time.time() - 100
    async with Running(s, transport=broker.transport) as run:
        shadow = run.service.shadow
        assert shadow is not None and shadow.label == version
        first = [
            (f"factory/{sid}/temperature", reading_payload(sid, 25.0, 0, t0))
            for sid in ["S1", "S3"]
        ]
        broker.send(first)
        await eventually(lambda: len(run.processed) == 2)
        z = next(d for d in shadow.scorer.probe.detectors if d.name == "zscore")
        assert z.params()["alpha"] == 0.05
        sensors = run.service.pipeline.sensors
        assert z.state["n"][sensors["S1"]] == 201  # the model's 200, and this one
        assert z.state["n"][sensors["S3"]] == 1  # not in the model: learns from here
        live = next(d for d in run.service.pipeline.detectors if d.name == "zscore")
        assert live.state["n"][sensors["S1"]] == 1
        report = shadow.report()
        assert report["model"] == version and "zscore" in report["from_model"]
    with pytest.raises(ValueError, match="either model or detector"):
        ShadowSettings(enabled=True, model="v1", detector={"threshold": 50.0})
    missing = base.model_copy(update={"shadow": ShadowSettings(enabled=True, model="v9")})
    with pytest.raises(ModelError, match="no model v9"):
        DetectorService(missing, console=False, transport=broker.transport)

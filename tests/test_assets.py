"""Assets in the pipeline: membership, rows from latest values, missing sensors, the
commissioning lifecycle, explained alerts, saved state."""

from __future__ import annotations

import asyncio
import doctest
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mqtt_anomaly import assets as assets_module
from mqtt_anomaly import statefile
from mqtt_anomaly.config import Settings, load_settings
from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.messages import Alert
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.store import open_store

from .helpers import Observer, eventually
from .mosquitto import Mosquitto
from .test_mvdetectors import K, machine
from .test_service import publisher
from .test_web import Served

NAMES = [f"s{j}" for j in range(K)]
T0 = 1_700_000_000.0
TOPIC = "factory/{asset}/{sensor}"
C = 400  # commissioning rows


def settings(**assets: object) -> Settings:
    return Settings.model_validate(
        {
            "mapping": {
                "rules": [
                    {"topic": "factory/{asset}/{sensor}", "value": "$.v", "timestamp": "$.ts"}
                ]
            },
            "detector": {"detectors": ["threshold"], "threshold": 1e9},
            "assets": {"commission_rows": C, **assets},
        }
    )


def messages(asset: str, rows: np.ndarray, start: int, skip: tuple[int, ...] = ()) -> list:
    """One batch per row: each sensor of ``asset`` publishes its value."""
    out = []
    for i, row in enumerate(rows):
        ts = T0 + start + i
        batch = [
            (f"factory/{asset}/{NAMES[j]}", json.dumps({"v": float(row[j]), "ts": ts}).encode(), ts)
            for j in range(K)
            if j not in skip
        ]
        out.append(batch)
    return out


def run(p: Pipeline, *streams: list) -> list[Alert]:
    alerts: list[Alert] = []
    for batches in zip(*streams, strict=True):
        out = p.process([m for b in batches for m in b])
        alerts += [a for a in out.alerts if a.detector == "asset"]
    return alerts


def test_doctests() -> None:
    result = doctest.testmod(assets_module)
    assert result.attempted > 0 and result.failed == 0


def test_assets_commission_then_raise_one_explained_alert() -> None:
    p = Pipeline(settings())
    good, bad = machine(1100, seed=11), machine(1100, seed=12, break_at=900)
    alerts = run(p, messages("PUMP-01", good[:C], 0), messages("PUMP-02", bad[:C], 0))
    assert alerts == []
    info = {a.id: a for a in p.assets.info()}
    assert set(info) == {"PUMP-01", "PUMP-02"}
    assert info["PUMP-01"].phase == "monitoring" and info["PUMP-01"].rows == C
    assert info["PUMP-01"].names == NAMES
    alerts = run(p, messages("PUMP-01", good[C:], C), messages("PUMP-02", bad[C:], C))
    assert [(a.asset_id, a.state) for a in alerts] == [("PUMP-02", "raised")]
    (raised,) = alerts
    assert raised.sensor_id == "PUMP-02" and raised.reading_ts is not None
    assert raised.reading_ts >= T0 + 900
    assert raised.contributions is not None
    assert set(raised.contributions) == {f"PUMP-02/{n}" for n in NAMES}
    assert max(raised.contributions, key=raised.contributions.__getitem__) == "PUMP-02/s2"
    assert "PUMP-02/s2" in raised.message
    assert raised.id == f"PUMP-02:asset:raised:t{raised.reading_ts!r}"
    assert {a.id: a.alarm for a in p.assets.info()} == {"PUMP-01": False, "PUMP-02": True}


def test_a_silent_sensor_is_missing_not_zero() -> None:
    p = Pipeline(settings(stale_after=3.0))
    x = machine(900, seed=13)
    run(p, messages("PUMP-01", x[:C], 0))
    # sensor s3 stops: each row is scored when the others report again, s3 stale
    alerts = run(p, messages("PUMP-01", x[C:], C, skip=(3,)))
    assert alerts == []
    det = p.assets.detectors[K]
    assert det.state["seen"][0] == C  # commissioning rows only; monitoring went on
    (info,) = p.assets.info()
    assert info.score is not None and info.score < 0.5


def test_state_survives_a_restart_and_recommission_learns_again(tmp_path: Path) -> None:
    p = Pipeline(settings())
    x = machine(700, seed=14)
    run(p, messages("PUMP-01", x[:500], 0))
    statefile.dump(tmp_path / "state.mqas", p.state_dict())
    q = Pipeline(settings())
    assert q.load_state_dict(statefile.load(tmp_path / "state.mqas")) == []
    assert [(a.id, a.phase) for a in q.assets.info()] == [("PUMP-01", "monitoring")]
    for batch in messages("PUMP-01", x[500:], 500):
        a, b = p.process(batch), q.process(batch)
        assert a.alerts == b.alerts
    assert p.assets.info() == q.assets.info()
    assert q.assets.recommission("PUMP-01") and not q.assets.recommission("nope")
    assert q.assets.info()[0].phase == "commissioning"


def test_defined_assets_keep_their_order_and_a_new_sensor_recommissions() -> None:
    ids = [f"M1/{n}" for n in reversed(NAMES)]
    p = Pipeline(settings(define=[{"id": "M1", "sensors": ids}], template=""))
    x = machine(450, seed=15)
    run(p, messages("M1", x[:420], 0))  # published in NAMES order
    (info,) = p.assets.info()
    assert info.sensors == ids and info.phase == "monitoring"
    # a sensor outside the definition with template off is in no asset
    p.process([("factory/M1/extra", b'{"v": 1.0, "ts": 1700001000.0}', 1700001000.0)])
    assert [a.sensors for a in p.assets.info()] == [ids]


def test_template_assets_grow_with_a_new_sensor() -> None:
    p = Pipeline(settings())
    x = machine(450, seed=16)
    run(p, messages("PUMP-01", x[:420], 0))
    assert p.assets.info()[0].phase == "monitoring"
    p.process([("factory/PUMP-01/extra", b'{"v": 1.0, "ts": 1700001000.0}', 1700001000.0)])
    (info,) = p.assets.info()
    assert len(info.sensors) == K + 1 and info.phase == "commissioning"


@pytest.mark.parametrize(
    ("assets", "message"),
    [
        ({"template": "{asset}"}, "assets.template"),
        ({"method": "nope"}, "assets.method"),
        (
            {"define": [{"id": "A", "sensors": ["x", "y"]}, {"id": "B", "sensors": ["y", "z"]}]},
            "'y'",
        ),
        ({"define": [{"id": "A", "sensors": ["x"]}]}, "assets.define"),
    ],
)
def test_bad_asset_settings_are_one_line_errors(assets: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        load_settings(overrides={"assets": assets})
    assert "\n" not in str(exc.value)


# ---- the service: MQTT in, asset alerts out, REST ------------------------------------------


async def cli(*args: str) -> tuple[int, str]:
    """Run the command line (without blocking the service in this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mqtt_anomaly", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    stdout, _ = await proc.communicate()
    return proc.returncode or 0, stdout.decode()


def stationary(n: int, seed: int) -> np.ndarray:
    """Rows of six sensors driven by one cause (independent rows: any window is like another)."""
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, 1))
    return 50.0 + t * np.array([1.0, 1.0, -1.0, 2.0, 0.5, -0.5]) + rng.normal(0, 0.05, (n, K))


def service_settings(broker: Mosquitto, tmp_path: Path, client_id: str) -> Settings:
    """A service with a SQLite store that reads ``plant/{asset}/{sensor}`` readings (value
    ``v``, time ``ts``) and commissions assets on 80 rows; no per-sensor alert fires."""
    rule = {"topic": "plant/{asset}/{sensor}", "value": "$.v", "timestamp": "$.ts"}
    return load_settings(
        None,
        {
            "broker": {"url": broker.url, "client_id": client_id},
            "store": {"url": f"sqlite:///{tmp_path / 'h.db'}", "flush_interval": 0.05},
            "service": {"state_dir": tmp_path / "state"},
            "mapping": {"rules": [rule]},
            "detector": {"detectors": ["threshold"], "threshold": 1e9},
            "assets": {"commission_rows": 80},
        },
    )


async def test_service_raises_asset_alerts_and_serves_assets(
    shared_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    s = service_settings(shared_mosquitto, tmp_path, "detector-assets")
    url = s.store.url
    x = stationary(160, seed=21)
    x[120:, 2] += 1.5  # 30 noise sd: the relation of s2 to the others breaks
    with open_store(url, s.store) as store:
        async with (
            Served(s, store) as srv,
            srv.client() as http,
            Observer(shared_mosquitto.url, ["factory/+/alerts"], "obs-assets") as obs,
            publisher(shared_mosquitto.url, "pub-assets") as pub,
        ):
            pl = srv.service.pipeline
            for i in range(100):
                for j in range(K):
                    doc = {"v": x[i, j], "ts": T0 + i}
                    pub.publish(f"plant/PUMP-07/{NAMES[j]}", json.dumps(doc).encode())
            await eventually(lambda: pl.counters.processed == 100 * K, what="rows processed")
            (listed,) = (await http.get("/api/assets")).json()
            assert listed["id"] == "PUMP-07" and listed["phase"] == "monitoring"
            assert listed["names"] == NAMES and listed["alarm"] is False
            probe = (await http.get("/healthz")).json()
            assert probe["assets"] == {"monitoring": 1}
            for i in range(100, 160):
                for j in range(K):
                    doc = {"v": x[i, j], "ts": T0 + i}
                    pub.publish(f"plant/PUMP-07/{NAMES[j]}", json.dumps(doc).encode())
            await eventually(lambda: bool(obs.on("/alerts")), what="asset alert on MQTT")
            (payload,) = obs.json("/alerts")
            assert payload["asset_id"] == "PUMP-07" and payload["detector"] == "asset"
            shares = payload["contributions"]
            assert isinstance(shares, dict)
            assert max(shares, key=shares.__getitem__) == "PUMP-07/s2"
            one = (await http.get("/api/assets/PUMP-07")).json()
            assert one["alarm"] is True and one["contributions"]["PUMP-07/s2"] > 0.5
            metrics = (await http.get("/metrics")).text
            assert 'mqtt_anomaly_assets{alarm="any",phase="monitoring"} 1.0' in metrics
            assert 'mqtt_anomaly_assets{alarm="true",phase="any"} 1.0' in metrics
            assert store.flush(10)
            stored = (await http.get("/api/alerts", params={"sensor": "PUMP-07"})).json()
            assert stored[0]["asset_id"] == "PUMP-07"
            assert stored[0]["contributions"] == shares
            code, listed_out = await cli("assets", "list", "--json", "--url", srv.base)
            assert code == 0 and json.loads(listed_out)[0]["alarm"] is True
            code, said = await cli("assets", "recommission", "PUMP-07", "--url", srv.base)
            assert code == 0 and said.strip() == "PUMP-07: commissioning"
            code, said = await cli("assets", "recommission", "NOPE", "--url", srv.base)
            assert code == 2 and "404 no such asset" in said and "Traceback" not in said
            assert (await http.get("/healthz")).json()["assets"] == {"commissioning": 1}
            assert (await http.post("/api/assets/NOPE/recommission")).status_code == 404
            assert (await http.get("/api/assets/NOPE")).status_code == 404


def test_batches_that_split_rows_still_score_whole_rows() -> None:
    p = Pipeline(settings())
    x = machine(50, seed=17)
    flat = [m for batch in messages("PUMP-01", x, 0) for m in batch]
    # batches of 9 messages: most begin in the middle of a row and end in the next one
    for i in range(0, len(flat), 9):
        p.process(flat[i : i + 9])
    kept = p.assets.detectors[K].rows[0]
    np.testing.assert_array_equal(kept, x[: len(kept)])
    assert len(kept) == 50  # each row scored as soon as its last sensor reported

"""``evaluate sim``: the live pipeline scored on the simulator's labels; simulated machines
scored against their asset labels."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.evaluate.cli import app
from mqtt_anomaly.evaluate.sim import run_sim_evaluation
from mqtt_anomaly.simulate.assets import AssetModel, default_rates
from mqtt_anomaly.simulate.plant import generate

from .mosquitto import Mosquitto


async def test_simulated_faults_are_scored(mosquitto: Mosquitto) -> None:
    report = await run_sim_evaluation(
        load_settings(),
        broker_url=mosquitto.url,
        sensors=60,
        interval=0.1,
        duration=30,
        warmup=5,
        seed=4,
        rate_scale=60,
    )
    kinds = {k.kind: k for k in report.by_kind}
    assert report.faults >= 3 and report.alerts > 0
    assert report.detected >= 1 and 0 < report.precision <= 1
    if "spike" in kinds:  # a 98.2 °C reading always crosses the threshold at once
        assert kinds["spike"].recall == 1.0 and kinds["spike"].delay_p50 == 0.0
    assert report.detected == sum(k.detected for k in report.by_kind)


# ---- --assets: simulated machines, no broker ------------------------------------------------
def _sim_assets(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["sim", "--assets", *args, "--json"])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_assets_are_scored_against_their_labels() -> None:
    doc = _sim_assets(["2", "--duration", "3600", "--seed", "5", "--rate-scale", "3"])
    assert doc["asset_kind"] == "pump" and len(doc["assets"]) == 2
    # the same run, generated again from the seed: the labels the report counted
    model = AssetModel(
        "pump", 2, interval=1.0, seed=5, rates={k: 3 * v for k, v in default_rates("pump").items()}
    )
    run = generate(model, 3600)
    for i, a in enumerate(doc["assets"]):
        assert (a["file"], a["train_rows"], a["scored_rows"]) == (model.ids[i], 600, 3000)
        assert a["labelled_rows"] == int(run.labels[600:, i].sum()) > 0
        assert a["columns"] == model.sensor_names
    names = [r["detector"] for r in doc["total"]["results"]]
    assert names[0] == "default" and names[-1] == "always" and "zscore" in names
    kinds = {k["kind"]: k for k in doc["by_fault_kind"]}
    assert sum(k["faults"] for k in kinds.values()) == len(run.faults) == doc["settings"]["faults"]
    assert all(k["detected"]["always"] == k["faults"] for k in kinds.values())
    longest = max(f.end_k - f.start_k for f in run.faults if f.end_k is not None)
    for k in kinds.values():
        assert k["delay_p50"]["always"] == 0.0
        for name, delay in k["delay_p50"].items():
            assert (delay is None) == (k["detected"][name] == 0)
            assert delay is None or 0.0 <= delay <= longest
    total = {r["detector"]: r for r in doc["total"]["results"]}
    assert total["always"]["event"]["detected_events"] == len(run.faults)


def test_univariate_detectors_see_the_machine_faults_no_better_than_chance() -> None:
    """The faults stay in range and set in over minutes: the default set's flags fall inside
    faults hardly more often than the faults' share of the rows, and miss most fault rows."""
    doc = _sim_assets(["3", "--duration", "14400", "--seed", "2", "-d", "default", "-d", "zscore"])
    share = doc["total"]["labelled_rows"] / doc["total"]["scored_rows"]
    total = {r["detector"]: r["point"] for r in doc["total"]["results"]}
    for name in ("default", "zscore"):
        assert total[name]["precision"] < share + 0.1, (name, total[name], share)
        assert total[name]["recall"] < 0.5, (name, total[name])
        assert total[name]["f1"] < total["always"]["f1"], (name, total[name])


def test_assets_mistakes_fail_in_one_line() -> None:
    runner = CliRunner()
    for args, message in (
        (["2", "--duration", "300"], "must be longer than the warmup 600 s"),
        (["2", "--asset-kind", "boat"], "unknown asset kind 'boat'"),
        (["0"], "--assets must be between 1 and 1000"),
        (["2", "-d", "nope"], "unknown detector 'nope'"),
    ):
        result = runner.invoke(app, ["sim", "--assets", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr

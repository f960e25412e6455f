"""The evaluate commands and the runner: NAB subset, labelled CSV, and user mistakes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mqtt_anomaly.detectors import create
from mqtt_anomaly.evaluate import nab
from mqtt_anomaly.evaluate.cli import app
from mqtt_anomaly.evaluate.runner import run_nab

NAB = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "nab"
SUBSET = (
    "realTraffic/speed_7578.csv",
    "realAdExchange/exchange-2_cpc_results.csv",
    "artificialNoAnomaly/art_flatline.csv",
)
runner = CliRunner()


@pytest.fixture
def subset(tmp_path: Path) -> Path:
    """A three-file NAB corpus: the data files, their windows and the profiles."""
    if not (NAB / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB corpus not found at {NAB}")
    root = tmp_path / "nab"
    windows = json.loads((NAB / "labels" / "combined_windows.json").read_text())
    for name in SUBSET:
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(NAB / "data" / name, root / "data" / name)
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(
        json.dumps({k: windows[k] for k in SUBSET})
    )
    (root / "config").mkdir()
    shutil.copy(NAB / "config" / "profiles.json", root / "config" / "profiles.json")
    return root


@pytest.fixture
def labelled_csv(tmp_path: Path) -> Path:
    """Two sensors, a 10-row level jump on one and a spike on the other, labelled."""
    rng = np.random.default_rng(1)
    n = 3000
    temp, pressure = 25 + rng.normal(0, 0.2, n), 60 + rng.normal(0, 0.5, n)
    label = np.zeros(n, dtype=int)
    temp[1500:1510] += 5
    pressure[2400] = 80
    label[1500:1510] = label[2400] = 1
    lines = ["timestamp,temp,pressure,anomaly"] + [
        f"{1_700_000_000 + 60 * i},{temp[i]:.3f},{pressure[i]:.3f},{label[i]}" for i in range(n)
    ]
    path = tmp_path / "plant.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_user_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_lockstep_run_scores_like_one_series_at_a_time(subset: Path) -> None:
    corpus = nab.load_corpus(subset)
    run = run_nab(corpus, "zscore")
    assert run.points == corpus.rows and run.points_per_second > 0
    for s in corpus.series:
        alone = create("zscore").score_series(s.values, s.epoch_seconds())
        np.testing.assert_array_equal(run.scores[s.name], alone)


def test_nab_json_on_a_subset(subset: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = ["nab", "--data", str(subset), "-d", "zscore", "-d", "stuck"]
    result = runner.invoke(app, [*args, "--results-dir", str(results), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    corpus = nab.load_corpus(subset)
    assert doc["corpus"]["files"] == 3
    assert doc["corpus"]["rows"] == corpus.rows
    assert doc["corpus"]["windows"] == corpus.n_windows > 0
    assert [d["detector"] for d in doc["detectors"]] == ["zscore", "stuck"]
    zscore = doc["detectors"][0]
    assert zscore["points"] == corpus.rows and zscore["points_per_second"] > 0
    assert set(zscore["profiles"]) == set(nab.PROFILE_NAMES)
    board = doc["leaderboard"]
    assert {"ARTime", "Numenta HTM", "zscore", "stuck"} <= {e["detector"] for e in board}
    standard = [e["scores"]["standard"] for e in board]
    assert standard == sorted(standard, reverse=True)
    ours = next(e for e in board if e["detector"] == "zscore")
    assert set(ours["thresholds"]) == set(nab.PROFILE_NAMES)
    # the written results are NAB's layout, and score back to the same numbers
    written = results / "zscore" / "realTraffic" / "zscore_speed_7578.csv"
    rows = written.read_text().splitlines()
    assert rows[0] == "timestamp,value,anomaly_score,label"
    assert len(rows) - 1 == len(corpus.by_name["realTraffic/speed_7578.csv"])
    scores = nab.load_results(results, "zscore", corpus)
    assert len(scores) == 3
    assert set(zscore["profiles"]) == set(nab.PROFILE_NAMES)
    for profile, got in zscore["profiles"].items():
        again = nab.score_at(corpus, scores, profile, got["threshold"])
        assert again.raw == pytest.approx(got["raw"], abs=1e-6)


def test_nab_table(subset: Path) -> None:
    result = runner.invoke(app, ["nab", "--data", str(subset), "--detector", "stuck"])
    assert result.exit_code == 0, result.output
    assert "stuck" in result.stdout and "ARTime" in result.stdout
    assert "3 files" in result.stdout


def test_nab_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_user_error(["nab", "--data", str(tmp_path / "nowhere")], "no NAB corpus there")
    assert_user_error(["nab", "--data", str(tmp_path)], "not a NAB corpus")
    assert_user_error(["nab", "--data", str(tmp_path), "-d", "nope"], "unknown detector 'nope'")
    monkeypatch.chdir(tmp_path)  # no ../shared/datasets/nab from here
    assert_user_error(["nab"], "pass --data PATH")


def test_csv_scores_a_labelled_file(labelled_csv: Path) -> None:
    result = runner.invoke(
        app, ["csv", str(labelled_csv), "--label-column", "anomaly", "-d", "zscore", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (file,) = doc["files"]
    assert (file["rows"], file["labelled_rows"]) == (3000, 11)
    assert file["columns"] == ["temp", "pressure"]
    report, always = file["results"]
    assert (report["detector"], always["detector"]) == ("zscore", "always")
    assert report["point"]["tp"] > 0 and report["point"]["precision"] > 0.5
    assert report["event"]["events"] == 2 and report["event"]["detected_events"] == 2
    assert report["nab"]["optimised"]["standard"]["score"] > 50
    assert always["point"]["tp"] == 11 and always["point"]["fp"] == 3000 - 11
    assert doc["total"]["results"][0]["point"] == report["point"]


def test_csv_value_column_and_table(labelled_csv: Path) -> None:
    args = ["csv", str(labelled_csv), "--label-column", "anomaly", "--value-column", "pressure"]
    result = runner.invoke(app, [*args, "--json", "-d", "zscore", "-d", "stuck"])
    assert result.exit_code == 0, result.output
    (file,) = json.loads(result.stdout)["files"]
    assert [r["detector"] for r in file["results"]] == ["zscore", "stuck", "always"]
    assert file["columns"] == ["pressure"]
    table = runner.invoke(app, [*args, "-d", "zscore"])
    assert table.exit_code == 0 and "zscore" in table.stdout and "always" in table.stdout


def test_csv_user_errors(labelled_csv: Path, tmp_path: Path) -> None:
    csv = str(labelled_csv)
    assert_user_error(["csv", csv, "--label-column", "nope"], "no column 'nope'")
    assert_user_error(
        ["csv", csv, "--label-column", "anomaly", "--value-column", "x"], "no column 'x'"
    )
    assert_user_error(["csv", str(tmp_path / "none.csv"), "--label-column", "a"], "no such file")
    bad = tmp_path / "bad.csv"
    bad.write_text("v,label\n1.0,0\noops,1\n")
    assert_user_error(["csv", str(bad), "--label-column", "label"], "'oops' is not a number")
    assert_user_error(["csv", csv, "--label-column", "anomaly", "-d", "nope"], "unknown detector")


def test_module_entry_point_fails_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mqtt_anomaly.evaluate.cli", "nab", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "not a NAB corpus" in proc.stderr

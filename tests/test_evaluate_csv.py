"""``evaluate csv`` as a new user runs it on a plant's exports: real files in a temp dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mqtt_anomaly.detectors import available
from mqtt_anomaly.evaluate import scorers
from mqtt_anomaly.evaluate.cli import app
from mqtt_anomaly.evaluate.runner import read_labelled_csv
from mqtt_anomaly.evaluate.scorers import RowScores, register_multivariate, scorer_names

runner = CliRunner()
SENSORS = [f"S{i}" for i in range(1, 9)]


def export(path: Path, seed: int, fault_at: int, rows: int = 1200) -> Path:
    """A European plant export: ';', decimal commas, ISO times, 8 sensors driven by one load,
    an ``anomaly`` and a ``changepoint`` column; the fault is a jump of sensor S3."""
    rng = np.random.default_rng(seed)
    load = np.cumsum(rng.normal(0, 0.02, rows))
    values = 10 * np.arange(1, 9) + np.outer(load, np.linspace(1, 2, 8))
    values += rng.normal(0, 0.05, values.shape)
    anomaly = np.zeros(rows, dtype=int)
    values[fault_at : fault_at + 60, 2] += 3.0
    anomaly[fault_at : fault_at + 60] = 1
    change = np.zeros(rows, dtype=int)
    change[fault_at] = 1
    start = np.datetime64("2026-03-09T10:14:33")
    lines = ["datetime;" + ";".join(SENSORS) + ";anomaly;changepoint"]
    for i in range(rows):
        cells = [f"{v:.3f}".replace(".", ",") for v in values[i]]
        stamp = str(start + np.timedelta64(i, "s")).replace("T", " ")
        lines.append(f"{stamp};{';'.join(cells)};{anomaly[i]:.1f};{change[i]:.1f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")  # as Excel saves it
    return path


@pytest.fixture
def exports(tmp_path: Path) -> list[Path]:
    return [export(tmp_path / f"valve{i}.csv", i, 600 + 150 * i) for i in range(3)]


def run_json(args: list[str]) -> dict[str, Any]:
    result = runner.invoke(app, ["csv", *args, "--json"])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_semicolon_export_with_second_label_column_excluded_end_to_end(
    exports: list[Path],
) -> None:
    data = read_labelled_csv(exports[0], exclude_columns=["changepoint"])
    assert (data.delimiter, data.label_column, data.columns) == (";", "anomaly", tuple(SENSORS))
    assert data.values[0, 0] == pytest.approx(10.0, abs=1.0)  # "10,012" read as 10.012
    assert np.all(np.diff(data.epoch) == 1.0)  # the datetime column, found by its name
    args = [*map(str, exports), "--train-rows", "400", "--exclude-column", "changepoint"]
    doc = run_json([*args, "-d", "zscore", "-d", "default"])
    assert doc["train_rows"] == 400 and len(doc["files"]) == 3
    for f in doc["files"]:
        assert f["columns"] == SENSORS  # neither label column is scored
        assert (f["rows"], f["scored_rows"], f["labelled_rows"]) == (1200, 800, 60)
        assert [r["detector"] for r in f["results"]] == ["zscore", "default", "always"]
        for r in f["results"]:
            p = r["point"]
            assert p["tp"] + p["fp"] + p["fn"] + p["tn"] == 800
            assert p["tp"] + p["fn"] == 60
        zscore = f["results"][0]
        assert zscore["event"]["detected_events"] == 1  # a 3-unit jump on a 0.05 noise
        assert zscore["point"]["false_alarm_rate"] < 0.05
    # micro-averaged: the counts add up over the files, the rates come from the sums
    total = {r["detector"]: r for r in doc["total"]["results"]}
    assert doc["total"]["scored_rows"] == 2400 and doc["total"]["labelled_rows"] == 180
    for name, r in total.items():
        for key in ("tp", "fp", "fn", "tn"):
            per_file = [
                next(x for x in f["results"] if x["detector"] == name) for f in doc["files"]
            ]
            assert r["point"][key] == sum(x["point"][key] for x in per_file)
        p = r["point"]
        assert p["false_alarm_rate"] == round(p["fp"] / (p["fp"] + p["tn"]), 4)
        assert p["missed_alarm_rate"] == round(p["fn"] / (p["fn"] + p["tp"]), 4)
    share = 180 / 2400
    assert total["always"]["point"]["f1"] == round(2 * share / (1 + share), 4)
    assert total["always"]["point"]["false_alarm_rate"] == 1.0
    # the table: totals, with the always-alarm floor
    table = runner.invoke(app, ["csv", *args, "-d", "zscore"])
    assert table.exit_code == 0, table.output
    assert "3 files, micro-averaged: 2,400 rows scored after 400 learned" in table.stdout
    assert "always" in table.stdout and "false alarms" in table.stdout
    for f in doc["files"]:  # one line per file: the best detector's point F1 and always-alarm's
        zscore, always = f["results"][0]["point"]["f1"], f["results"][-1]["point"]["f1"]
        line = next(ln for ln in table.stdout.splitlines() if Path(f["file"]).name in ln)
        assert f"{zscore:.2f} zscore" in line and line.rstrip().endswith(f"{always:.2f}")


def test_without_exclude_the_second_label_column_is_scored(exports: list[Path]) -> None:
    result = runner.invoke(app, ["csv", str(exports[0]), "-d", "stuck", "--json"])
    assert result.exit_code == 0, result.output
    assert "column 'changepoint' holds only 0 and 1" in result.stderr
    assert "--exclude-column changepoint" in result.stderr and result.stderr.count("\n") == 1
    doc = json.loads(result.stdout)
    assert doc["files"][0]["columns"] == [*SENSORS, "changepoint"]
    assert doc["files"][0]["train_rows"] == 0
    default = run_json([str(exports[0]), "--exclude-column", "changepoint"])
    names = [r["detector"] for r in default["files"][0]["results"]]
    assert names == ["default", *available(), "always"]  # multivariate: only with --train-rows
    trained = run_json([str(exports[0]), "--exclude-column", "changepoint", "--train-rows", "400"])
    assert [r["detector"] for r in trained["files"][0]["results"]] == scorer_names()


def test_a_text_column_can_be_excluded_and_a_trailing_delimiter_is_no_column(
    tmp_path: Path,
) -> None:
    path = tmp_path / "status.csv"
    rows = [
        f"{20 + (i % 7) * 0.1:.1f};{'RUN' if i % 50 else 'STOP'};{int(i == 90)};"
        for i in range(120)
    ]
    path.write_text("temp;state;anomaly;\n" + "\n".join(rows) + "\n")
    result = runner.invoke(app, ["csv", str(path)])
    assert result.exit_code == 2 and "column 'state': 'STOP' is not a number" in result.stderr
    doc = run_json([str(path), "--exclude-column", "state", "-d", "zscore"])
    assert doc["files"][0]["columns"] == ["temp"]


def test_training_rows_are_learned_not_scored(tmp_path: Path) -> None:
    """A labelled spike inside the commissioning rows counts nowhere; one after does."""
    rng = np.random.default_rng(3)
    v = 20 + rng.normal(0, 0.1, 1000)
    label = np.zeros(1000, dtype=int)
    v[[100, 700]] = 40.0
    label[[100, 700]] = 1
    path = tmp_path / "one.csv"
    rows = [f"{i},{x:.3f},{lab}" for i, (x, lab) in enumerate(zip(v, label, strict=True))]
    path.write_text("ts,temp,label\n" + "\n".join(rows) + "\n")
    doc = run_json([str(path), "--train-rows", "300", "-d", "zscore"])
    (f,) = doc["files"]
    assert (f["scored_rows"], f["labelled_rows"]) == (700, 1)
    zscore = f["results"][0]["point"]
    assert (zscore["tp"], zscore["fn"]) == (1, 0)


class MahalanobisRows:
    """A small multivariate detector: distance to the commissioning rows' mean and
    covariance, alarming beyond a chi-square-like limit."""

    def __init__(self, limit: float = 40.0) -> None:
        self.limit = limit
        self.mean: np.ndarray[Any, Any] | None = None
        self.inv: np.ndarray[Any, Any] | None = None

    def train(self, rows: np.ndarray[Any, Any], ts: np.ndarray[Any, Any]) -> None:
        self.mean = rows.mean(axis=0)
        self.inv = np.linalg.pinv(np.cov(rows, rowvar=False))

    def score(self, rows: np.ndarray[Any, Any], ts: np.ndarray[Any, Any]) -> RowScores:
        assert self.mean is not None and self.inv is not None
        d = rows - self.mean
        dist = np.einsum("ij,jk,ik->i", d, self.inv, d)
        return RowScores(dist > self.limit)


def test_a_registered_multivariate_detector_is_reported(
    exports: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scorers, "_multivariate", {})
    register_multivariate("mahalanobis", MahalanobisRows)
    with pytest.raises(Exception, match="already registered"):
        register_multivariate("zscore", MahalanobisRows)
    assert "mahalanobis" in scorer_names()
    args = [*map(str, exports), "--train-rows", "400", "--exclude-column", "changepoint"]
    doc = run_json([*args, "-d", "mahalanobis"])
    (total, always) = doc["total"]["results"]
    assert total["detector"] == "mahalanobis" and always["detector"] == "always"
    assert total["event"]["detected_events"] == 3


def assert_user_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["csv", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output


def test_bad_files_and_options_fail_in_one_line(exports: list[Path], tmp_path: Path) -> None:
    good = [str(exports[0]), "--exclude-column", "changepoint"]
    assert_user_error([*good, "--exclude-column", "nope"], "no column 'nope'")
    assert_user_error([*good, "--train-rows", "1200"], "leaves none of its 1200 rows")
    assert_user_error([*good, str(tmp_path / "gone.csv")], "gone.csv: no such file")
    assert_user_error([*good, "-d", "nope"], "unknown detector 'nope'")
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("a;b\n1;2\n")
    assert_user_error([str(nolabel)], "which column is the label? pass --label-column (a, b)")
    binary = tmp_path / "export.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe garbage")
    assert_user_error([str(binary)], "export.csv: cannot read")
    short = tmp_path / "short.csv"
    short.write_text("temp;anomaly\n1,5;0\n2,5\n")
    assert_user_error([str(short)], "short.csv:3: 1 cells for 2 columns")
    word = tmp_path / "word.csv"
    word.write_text("temp;anomaly\n1,5;0\nhigh;1\n")
    assert_user_error(
        [str(word)],
        "word.csv:3: column 'temp': 'high' is not a number (--exclude-column leaves a column out)",
    )
    stamps = tmp_path / "stamps.csv"
    stamps.write_text("time,temp,anomaly\nyesterday,1,0\n")
    assert_user_error([str(stamps)], "column 'time' holds neither epoch seconds nor ISO 8601")


OFFLINE = '''
import numpy as np

NAMES = ("rangecheck",)


def score_rows(name, train, rows, *, margin=0.5):
    """Flags rows with a column outside the commissioning range widened by ``margin``."""
    lo, hi = train.min(axis=0), train.max(axis=0)
    span = hi - lo
    out = np.maximum(lo - margin * span - rows, rows - hi - margin * span).max(axis=1)
    return out, out > 0, np.zeros_like(rows)
'''


def test_the_optional_offline_module_is_registered_by_its_names(
    exports: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "offline_probe.py").write_text(OFFLINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(scorers, "OFFLINE_MODULE", "offline_probe")
    monkeypatch.setattr(scorers, "_offline_checked", False)
    monkeypatch.setattr(scorers, "_multivariate", {})
    assert "rangecheck" in scorer_names()
    args = [*map(str, exports), "--train-rows", "400", "--exclude-column", "changepoint"]
    doc = run_json([*args, "-d", "rangecheck"])
    total = doc["total"]["results"][0]
    assert total["detector"] == "rangecheck" and total["point"]["tp"] > 0
    # its parameters come from [detector.params.rangecheck]
    config = tmp_path / "wide.toml"
    config.write_text("[detector.params.rangecheck]\nmargin = 1000.0\n")
    wide = run_json([*args, "-d", "rangecheck", "--config", str(config)])
    assert (
        wide["total"]["results"][0]["point"]["tp"] + wide["total"]["results"][0]["point"]["fp"] == 0
    )


def test_without_the_offline_module_its_names_are_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scorers, "OFFLINE_MODULE", "no_such_module_here.offline")
    monkeypatch.setattr(scorers, "_offline_checked", False)
    monkeypatch.setattr(scorers, "_multivariate", {})
    assert scorers.multivariate() == []
    assert scorer_names() == ["default", *available(), "always"]


def test_the_asset_detectors_score_plant_exports(exports: list[Path]) -> None:
    """mqtt_anomaly.mvdetectors.offline is installed: its methods are row scorers."""
    assert {"pca", "mewma", "pca_mewma"} <= set(scorer_names())
    args = [*map(str, exports), "--exclude-column", "changepoint"]
    doc = run_json([*args, "--train-rows", "400", "-d", "pca"])
    pca = doc["total"]["results"][0]
    assert pca["detector"] == "pca" and pca["event"]["detected_events"] == 3
    assert pca["point"]["f1"] > doc["total"]["results"][-1]["point"]["f1"]  # above always-alarm
    assert "nab" in doc["files"][0]["results"][0]  # a score scale: NAB scores too
    assert_user_error([*args, "-d", "pca_mewma"], "pca_mewma: commission_rows must be at least")

"""The NAB scorer: sigmoid, row weights, windows, sweep, and calibration on published results."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.evaluate import nab
from mqtt_anomaly.evaluate.nab import DEFAULT_PROFILES, Corpus, Series, Window

NAB = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "nab"
CALIBRATION = NAB / "calibration"
STD, LOW_FP, LOW_FN = nab.PROFILE_NAMES


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    if not (NAB / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB corpus not found at {NAB}")
    return nab.load_corpus(NAB)


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    path = CALIBRATION / "expected.json"
    if not path.is_file():
        pytest.skip(f"NAB calibration data not found at {CALIBRATION}")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


@pytest.fixture(scope="module")
def numenta(corpus: Corpus) -> dict[str, Any]:
    return nab.load_score_table(CALIBRATION / "numenta_scores.csv.gz")


def one_window(n: int = 100, start: int = 40, end: int = 49) -> Corpus:
    ts = np.arange(n).astype("datetime64[s]")
    return Corpus([Series("demo.csv", ts, np.zeros(n), (Window.rows(start, end),))])


# -- the formulas ------------------------------------------------------------------------


def test_scaled_sigmoid_matches_documented_values() -> None:
    a = nab.scaled_sigmoid([-1.0, -0.5, 0.0, 1.0, 3.0, 3.01, 10.0])
    np.testing.assert_allclose(a[:4], [0.98661, 0.84828, 0.0, -0.98661], atol=5e-6)
    assert a[4] > -1.0  # 3 itself is still on the curve
    assert a[5] == a[6] == -1.0
    grid = nab.scaled_sigmoid(np.linspace(-1, 3, 401))
    assert np.all(np.diff(grid) < 0)


def test_probation_is_fifteen_percent_capped_at_750() -> None:
    assert [nab.probation_length(n) for n in (1127, 4032, 5000, 10320, 22695)] == [
        169,
        604,
        750,
        750,
        750,
    ]


def test_row_weights_inside_before_and_after_a_window() -> None:
    series = one_window().series[0]
    std, low_fn = series.weights(DEFAULT_PROFILES[STD]), series.weights(DEFAULT_PROFILES[LOW_FN])
    a_1 = nab.scaled_sigmoid(-1.0)
    assert std[40] == pytest.approx(1.0)  # first row of the window earns tpWeight
    assert std[45] == pytest.approx(nab.scaled_sigmoid(-0.5) / a_1)  # about 0.86 halfway
    assert std[49] == pytest.approx(nab.scaled_sigmoid(-0.1) / a_1)  # near 0 at the end
    assert np.all(np.diff(std[40:50]) < 0)
    assert np.all(std[:40] == -0.11)  # no window before: the full FP penalty
    assert std[50] == pytest.approx(0.11 * nab.scaled_sigmoid(1 / 9))  # just after: small
    assert std[50] > -0.11 * 0.3
    assert std[58] == pytest.approx(0.11 * nab.scaled_sigmoid(1.0))  # one width after
    assert np.all(std[77:] == -0.11)  # beyond three widths
    np.testing.assert_allclose(low_fn, std)  # fnWeight does not change row weights


def test_window_counts_its_earliest_detection_and_every_fp_row_counts() -> None:
    corpus = one_window()
    w = corpus.series[0].weights(DEFAULT_PROFILES[STD])
    scores = np.zeros(100)
    scores[[43, 47, 48]] = 0.9  # three detections in the window
    scores[20:30] = 0.9  # a run of ten false positives
    got = nab.score_at(corpus, {"demo.csv": scores}, STD, 0.5)
    assert got.raw == pytest.approx(w[43] + 10 * -0.11)
    missed = nab.score_at(corpus, {"demo.csv": np.zeros(100)}, STD, 0.5)
    assert (missed.raw, missed.score) == (-1.0, 0.0)
    low_fn = nab.score_at(corpus, {"demo.csv": np.zeros(100)}, LOW_FN, 0.5)
    assert (low_fn.raw, low_fn.score) == (-2.0, 0.0)


def test_probationary_rows_are_not_scored() -> None:
    corpus = one_window()  # probation: 15 rows
    scores = np.zeros(100)
    scores[:15] = 1.0
    assert nab.score_at(corpus, {"demo.csv": scores}, STD, 0.5).raw == -1.0
    scores[15] = 1.0
    assert nab.score_at(corpus, {"demo.csv": scores}, STD, 0.5).raw == pytest.approx(-1.11)


def test_sweep_agrees_with_direct_scoring_and_prefers_higher_thresholds() -> None:
    rng = np.random.default_rng(3)
    ts = np.arange(2000).astype("datetime64[s]")
    wins = (Window.rows(400, 499), Window.rows(1200, 1299))
    corpus = Corpus([Series("a.csv", ts, np.zeros(2000), wins)])
    scores = np.round(rng.random(2000), 2)  # many ties
    scores[1200] = 1.0
    sw = nab.sweep(corpus, {"a.csv": scores}, STD)
    assert sw.thresholds[0] == nab.SENTINEL and sw.raw[0] == -2.0
    assert np.all(np.diff(sw.thresholds) < 0)
    assert len(sw.thresholds) == len(np.unique(scores[300:])) + 1
    for t, raw in zip(sw.thresholds, sw.raw, strict=True):
        assert nab.score_at(corpus, {"a.csv": scores}, STD, float(t)).raw == pytest.approx(raw)
    best = nab.optimise(corpus, {"a.csv": scores}, STD)
    assert best.raw == sw.raw.max()
    assert best.threshold == 1.0  # 1.0 alone catches a window; lower ones tie or lose


def test_windows_from_labels_follow_nab_rules() -> None:
    lab = np.zeros(10320, dtype=bool)
    lab[[100, 3000, 3001, 3002, 5000, 5100, 9000]] = True  # 5 anomalies: runs count once
    wins = nab.windows_from_labels(lab)
    # L = int(0.1 * 10320 / 5) = 206: 207-row windows; the first starts in probation and goes;
    # those at 5000 and 5100 overlap and merge
    assert [(w.start, w.end) for w in wins] == [(2897, 3103), (4897, 5203), (8897, 9103)]
    assert nab.windows_from_labels(np.zeros(50, dtype=bool)) == ()


def test_bad_scores_are_refused() -> None:
    corpus = one_window()
    with pytest.raises(ValueError, match="100 rows"):
        nab.score_at(corpus, {"demo.csv": np.zeros(99)}, STD, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nab.score_at(corpus, {"demo.csv": np.full(100, 1.5)}, STD, 0.5)
    with pytest.raises(ValueError, match="not in the corpus"):
        nab.score_at(corpus, {"other.csv": np.zeros(100)}, STD, 0.5)


# -- the corpus ----------------------------------------------------------------------------


def test_corpus_loads_every_file_and_window(corpus: Corpus) -> None:
    assert (len(corpus.series), corpus.rows, corpus.n_windows) == (58, 365_558, 116)
    taxi = corpus.by_name["realKnownCause/nyc_taxi.csv"]
    assert taxi.probation == 750
    assert [w.width for w in taxi.windows] == [207] * 5
    assert sum(int((s.window_ids() >= 0).sum()) for s in corpus.series) == 33_495


def test_not_a_corpus_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a NAB corpus"):
        nab.load_corpus(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "combined_windows.json").write_text('{"x/y.csv": []}')
    with pytest.raises(ConfigError, match=r"x/y.csv .* is missing"):
        nab.load_corpus(tmp_path)
    (tmp_path / "data" / "x").mkdir()
    (tmp_path / "data" / "x" / "y.csv").write_text("timestamp,value\n2020-01-01 00:00:00,1\n")
    (tmp_path / "labels" / "combined_windows.json").write_text(
        '{"x/y.csv": [["2020-01-02 00:00:00.000000", "2020-01-02 00:00:00.000000"]]}'
    )
    with pytest.raises(ConfigError, match="not a row timestamp"):
        nab.load_corpus(tmp_path)


# -- calibration: published result sets ----------------------------------------------------


@pytest.mark.parametrize("detector", ["numenta", "windowedGaussian"])
def test_published_scores_are_reproduced(
    corpus: Corpus, expected: dict[str, Any], detector: str, request: pytest.FixtureRequest
) -> None:
    scores = (
        request.getfixturevalue("numenta")
        if detector == "numenta"
        else nab.load_score_table(CALIBRATION / f"{detector}_scores.csv.gz")
    )
    want = expected[detector]
    got = nab.score_all(corpus, scores, want["thresholds"])
    for profile in nab.PROFILE_NAMES:
        assert got[profile].raw == pytest.approx(want["raw_scores"][profile], abs=1e-6)
        assert got[profile].score == pytest.approx(want["normalized_scores"][profile], abs=0.01)


def test_optimiser_finds_the_exact_best_threshold(
    corpus: Corpus, expected: dict[str, Any], numenta: dict[str, Any]
) -> None:
    start = time.perf_counter()
    best = nab.score_all(corpus, numenta)  # the sweep, three profiles, 365k rows
    assert time.perf_counter() - start < 10.0
    low_fp = best[LOW_FP]
    assert low_fp.threshold == pytest.approx(0.5431, abs=1e-4)
    assert low_fp.raw == pytest.approx(30.645, abs=1e-3)
    assert low_fp.score == pytest.approx(63.21, abs=0.01)
    for profile in nab.PROFILE_NAMES:  # never worse than the published thresholds
        assert best[profile].raw >= expected["numenta"]["raw_scores"][profile] - 1e-9


def test_missing_results_file_counts_as_missed_not_skipped(
    corpus: Corpus, expected: dict[str, Any], numenta: dict[str, Any]
) -> None:
    name = "realKnownCause/nyc_taxi.csv"
    t = expected["numenta"]["thresholds"][STD]
    full = nab.score_at(corpus, numenta, STD, t)
    partial = {k: v for k, v in numenta.items() if k != name}
    missing = nab.score_at(corpus, partial, STD, t)
    silent = nab.score_at(corpus, {**partial, name: np.zeros(len(numenta[name]))}, STD, t)
    assert missing.raw == pytest.approx(silent.raw)  # same as a file that never detects
    taxi = corpus.by_name[name]
    alone = nab.score_at(Corpus([taxi]), {name: numenta[name]}, STD, t).raw
    assert missing.raw == pytest.approx(full.raw - alone - len(taxi.windows))
    skipped = full.raw - alone  # what skipping the file silently would give
    assert missing.score < nab.normalise(skipped, DEFAULT_PROFILES[STD], corpus.n_windows)

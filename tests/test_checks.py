"""The detector contract (``detectors/checks.py``) and the registry of plug-ins.

Every check must be able to fail: each faulty detector below breaks one rule and the check
for that rule must say so. Plug-ins are installed for real: a module and a ``.dist-info``
directory with ``entry_points.txt`` on ``sys.path``, found by ``importlib.metadata``.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from mqtt_anomaly.detectors import available, create, registry
from mqtt_anomaly.detectors.base import Detector, Field, FloatArray, IntArray, Scores, nan_band
from mqtt_anomaly.detectors.checks import (
    check_batch_equals_one_by_one,
    check_declaration,
    check_detector,
    check_empty_batch,
    check_inputs_unchanged,
    check_params,
    check_reserve,
    check_reset,
    check_scores_in_range,
    check_slots_independent,
    check_state_round_trip,
)
from mqtt_anomaly.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


class Mean(Detector):
    """A correct detector: distance from the running mean, learned after scoring."""

    name: ClassVar[str] = "mean"

    def __init__(self, *, scale: float = 10.0) -> None:
        self.scale = float(scale)
        super().__init__()

    def fields(self) -> Mapping[str, Field]:
        return {"n": Field(np.int64, 0), "mean": Field(np.float64, 0.0)}

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        n, mean = self.state["n"][slots], self.state["mean"][slots]
        score = np.where(n > 0, np.clip(np.abs(values - mean) / self.scale, 0.0, 1.0), 0.0)
        self.state["mean"][slots] = mean + (values - mean) / (n + 1.0)
        self.state["n"][slots] = n + 1
        return Scores(score, nan_band(len(values)), nan_band(len(values)))


def test_a_correct_detector_passes() -> None:
    check_detector(Mean)
    check_detector(lambda: Mean(scale=2.0))


class Unbounded(Mean):
    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        res = super()._update(slots, values, ts)
        return Scores(res.score * 1e6, res.low, res.high)


class Hidden(Mean):
    """Keeps a count outside its fields: not saved, shared by every slot, never reset."""

    def __init__(self, *, scale: float = 10.0) -> None:
        self.seen = 0
        super().__init__(scale=scale)

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        res = super()._update(slots, values, ts)
        self.seen += len(values)
        return Scores(res.score * (self.seen % 7 != 0), res.low, res.high)


class BatchMean(Mean):
    """Scores against the mean of the batch: another batch, another score."""

    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        super()._update(slots, values, ts)
        centre = values.mean() if len(values) else 0.0
        score = np.clip(np.abs(values - centre) / self.scale, 0.0, 1.0)
        return Scores(score, nan_band(len(values)), nan_band(len(values)))


class InPlace(Mean):
    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        res = super()._update(slots, values, ts)
        values -= 1.0  # writes into the caller's array
        return res


class NoEmpty(Mean):
    def _update(self, slots: IntArray, values: FloatArray, ts: FloatArray) -> Scores:
        self.top = float(values.max())  # fails on an empty batch
        return super()._update(slots, values, ts)


class ForgetsOnGrowth(Mean):
    def reserve(self, n: int) -> None:
        if n > self.capacity:
            self.capacity = 0
            self.state = {k: np.empty(0, dtype=f.dtype) for k, f in self.fields().items()}
            super().reserve(n)


class ResetsNothing(Mean):
    def reset(self, slots: IntArray) -> None:
        pass


class ResetsAll(Mean):
    def reset(self, slots: IntArray) -> None:
        super().reset(np.arange(self.capacity, dtype=np.intp))


class AnyState(Mean):
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict({**state, "name": self.name})


class Positional(Mean):
    def __init__(self, scale: float = 10.0) -> None:
        super().__init__(scale=scale)


class Renamed(Mean):
    def __init__(self, *, width: float = 10.0) -> None:
        super().__init__(scale=width)  # kept as .scale: params() cannot find .width


class ObjectState(Mean):
    def fields(self) -> Mapping[str, Field]:
        return {**super().fields(), "tags": Field(np.object_, 0)}


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (Unbounded, check_scores_in_range, "score"),
        (Hidden, check_slots_independent, "next to others"),
        (Hidden, check_state_round_trip, "restored"),
        (BatchMean, check_batch_equals_one_by_one, "one by one"),
        (InPlace, check_inputs_unchanged, "modified its input"),
        (ForgetsOnGrowth, check_reserve, "reserve changed"),
        (ResetsNothing, check_reset, "does not forget"),
        (ResetsAll, check_reset, "changed slot 1"),
        (AnyState, check_state_round_trip, "another detector was accepted"),
        (Positional, check_params, "keyword-only"),
        (Renamed, check_params, "no attribute 'width'"),
        (ObjectState, check_declaration, "cannot be saved"),
    ],
)
def test_a_broken_rule_is_caught(cls: type[Detector], check: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check(cls)
    with pytest.raises(AssertionError):
        check_detector(cls)


def test_an_empty_batch_that_fails_is_caught() -> None:
    with pytest.raises(ValueError, match="zero-size"):
        check_empty_batch(NoEmpty)


# ---- the registry ---------------------------------------------------------------------------
def test_builtins_come_from_the_package_entry_points() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "mqtt_anomaly.detectors"
    ]
    assert declared == registry.BUILTIN
    installed = {
        ep.name: ep.value
        for ep in entry_points(group=registry.GROUP)
        if ep.dist is not None and ep.dist.name == "mqtt-anomaly"
    }
    assert installed == registry.BUILTIN  # the installed metadata, not the fallback table
    reg = registry.current()
    assert reg.detectors, "no detector registered"
    for name in reg.detectors:
        assert reg.origins[name].startswith(f"{registry.BUILTIN[name]} from mqtt-anomaly ")
    assert not reg.broken


def _install(where: Path, dist: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """A distribution as pip leaves it: modules and ``<dist>-1.0.dist-info``."""
    for name, code in modules.items():
        (where / f"{name}.py").write_text(textwrap.dedent(code))
    info = where / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[mqtt_anomaly.detectors]\n{lines}")


PLUGIN = """
    import numpy as np
    from mqtt_anomaly.detectors import Detector, Field, Scores
    from mqtt_anomaly.detectors.base import nan_band

    class Jump(Detector):
        name = "jump"

        def __init__(self, *, size: float = 5.0) -> None:
            self.size = float(size)
            super().__init__()

        def fields(self):
            return {"last": Field(np.float64, np.nan)}

        def _update(self, slots, values, ts):
            last = self.state["last"][slots]
            jump = np.clip(np.abs(values - last) / (2 * self.size), 0.0, 1.0)
            score = np.where(np.isnan(last), 0.0, jump)
            self.state["last"][slots] = values
            return Scores(score, nan_band(len(values)), nan_band(len(values)))

    class NotADetector:
        name = "plain"

    class Misnamed(Jump):
        name = "other"
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for plug-ins; the registry is read again afterwards."""
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for mod in [m for m in sys.modules if m.startswith("jump_plugin")]:
            del sys.modules[mod]
        importlib.invalidate_caches()
        registry.refresh()


def test_a_plugin_is_discovered_and_keeps_the_contract(site: Path) -> None:
    registry.refresh()
    _install(site, "jump_detectors", {"jump": "jump_plugin:Jump"}, {"jump_plugin": PLUGIN})
    assert "jump" not in available()  # read once: a new plug-in needs a refresh
    registry.refresh()
    assert "jump" in available()
    assert {"zscore", "ensemble"} <= set(available())
    assert registry.current().origins["jump"] == "jump_plugin:Jump from jump_detectors 1.0"
    from mqtt_anomaly.config import DetectorSettings

    det = create("jump", DetectorSettings(params={"jump": {"size": 1.0}}))
    assert det.params() == {"size": 1.0}
    assert det.score_series(np.array([1.0, 1.5, 9.0])).tolist() == [0.0, 0.25, 1.0]
    check_detector(lambda: create("jump"))


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("missing_module:Jump", "cannot be imported: ModuleNotFoundError: No module named"),
        ("jump_plugin:NoSuchClass", "cannot be imported: AttributeError"),
        ("jump_plugin:NotADetector", "is not a subclass of mqtt_anomaly.detectors.Detector"),
        ("jump_plugin:Misnamed", "the class's name is 'other', not the entry point's"),
    ],
)
def test_a_broken_plugin_is_one_clear_error(
    site: Path, caplog: pytest.LogCaptureFixture, entry: str, reason: str
) -> None:
    _install(site, "bad_detectors", {"jump": entry}, {"jump_plugin": PLUGIN})
    with caplog.at_level(logging.WARNING, logger="mqtt_anomaly.detectors.registry"):
        registry.refresh()
    assert [r.getMessage() for r in caplog.records if reason in r.getMessage()], caplog.text
    assert "jump" not in available()
    with pytest.raises(ConfigError, match=f"detector plug-in 'jump' \\({entry} from bad_detectors"):
        create("jump")
    assert create("zscore").name == "zscore"  # the others still work


def test_a_plugin_cannot_take_a_builtin_name(site: Path) -> None:
    plugin = PLUGIN.replace('name = "jump"', 'name = "zscore"')
    _install(site, "rogue", {"zscore": "jump_plugin:Jump"}, {"jump_plugin": plugin})
    registry.refresh()
    reg = registry.current()
    assert reg.origins["zscore"].startswith("mqtt_anomaly.detectors.zscore:ZScoreDetector")
    assert "the name is taken by mqtt_anomaly.detectors.zscore" in reg.broken["zscore"]
    assert type(create("zscore")).__module__ == "mqtt_anomaly.detectors.zscore"


def test_the_cli_reports_a_broken_plugin_in_one_line(site: Path, tmp_path: Path) -> None:
    _install(site, "bad_detectors", {"jump": "missing_module:Jump"}, {})
    csv = tmp_path / "data.csv"
    csv.write_text("timestamp,value,label\n" + "".join(f"{i},{i % 5},0\n" for i in range(50)))
    cmd = [sys.executable, "-m", "mqtt_anomaly", "evaluate", "csv", str(csv)]
    cmd += ["--label-column", "label", "-d", "jump"]
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: detector.detectors: detector plug-in 'jump' (missing_module:Jump from "
        "bad_detectors 1.0) cannot be imported: ModuleNotFoundError: No module named "
        "'missing_module'"
    ]


# ---- docs/detectors.md: "Write your own detector" runs as written ---------------------------
def _doc_blocks() -> dict[str, list[str]]:
    """The fenced code blocks of the section, by language."""
    text = (ROOT / "docs" / "detectors.md").read_text()
    section = text.split("## Write your own detector", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for part in section.split("```")[1::2]:
        lang, _, code = part.partition("\n")
        blocks.setdefault(lang.strip(), []).append(code)
    return blocks


def test_the_documented_plugin_works_as_written(site: Path) -> None:
    blocks = _doc_blocks()
    assert len(blocks["python"]) == 2 and len(blocks["toml"]) == 1
    detector, test = blocks["python"]
    entries = tomllib.loads(blocks["toml"][0])["project"]["entry-points"]["mqtt_anomaly.detectors"]
    assert entries == {"band": "my_detectors.band:BandDetector"}
    package = site / "my_detectors"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "band.py").write_text(detector)
    (package / "test_band.py").write_text("from my_detectors.band import BandDetector\n" + test)
    _install(site, "my_detectors", entries, {})
    try:
        registry.refresh()
        assert "band" in available()
        from mqtt_anomaly.config import DetectorSettings

        det = create("band", DetectorSettings(params={"band": {"width": 3}}))
        assert det.params() == {"alpha": 0.05, "width": 3.0, "warmup": 20}
        x = np.r_[10.0 + np.sin(np.arange(200)), 40.0]
        s = det.score_series(x)
        assert s[-1] >= 0.5 and s[:200].max() < 0.5  # the documented band catches the jump
        tests = importlib.import_module("my_detectors.test_band")
        tests.test_band_keeps_the_detector_contract()  # the documented test, check_detector
    finally:
        for mod in [m for m in sys.modules if m.startswith("my_detectors")]:
            del sys.modules[mod]

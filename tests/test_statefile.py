"""The saved-state file: data only, checked on load, moved aside when unusable."""

from __future__ import annotations

import logging
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mqtt_anomaly import statefile
from mqtt_anomaly.config import Settings, load_settings
from mqtt_anomaly.detectors import available
from mqtt_anomaly.detectors.river_adapter import river_available
from mqtt_anomaly.errors import StateFileError
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.service import LEGACY_STATE_FILE, STATE_FILE, DetectorService

from .test_pipeline import normal, reading

CLI = [sys.executable, "-m", "mqtt_anomaly"]


class Hostile:
    """Unpickling this opens (creates) ``path``: what a planted pickle could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def hostile_pickle(marker: Path) -> bytes:
    data = pickle.dumps({"version": 1, "payload": Hostile(marker)})
    probe = marker.with_name(marker.name + "-probe")
    pickle.loads(pickle.dumps(Hostile(probe)))  # the payload does run code when unpickled
    assert probe.exists()
    probe.unlink()
    return data


def settings_in(tmp_path: Path, **detector: Any) -> Settings:
    return load_settings(
        None,
        {
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state"},
            "detector": detector,
        },
    )


def trained(settings: Settings) -> Pipeline:
    pipe = Pipeline(settings)
    pipe.process(normal("S1", 400) + normal("S2", 400, seed=3) + [reading("S3", 25.0, 0)])
    pipe.process([reading("S1", 90.0, 400)])  # an active alert to restore
    return pipe


def aside(state_dir: Path, name: str, label: str) -> list[Path]:
    return sorted(state_dir.glob(f"{name}.{label}-*"))


# ---- the container -------------------------------------------------------------------
def test_every_leaf_type_round_trips() -> None:
    tree = {
        "int": -3,
        "big": 2**200,
        "floats": [1.5, float("nan"), float("-inf")],
        "nan": float("nan"),
        "ints": [1, -2, 3],
        "masks": [(1 << 1023) | 5, 0, 7],
        "strs": ["a", "ü", ""],
        "bools": [True, False],
        "mixed": [1, "a", None, 2.5, [3, 4], {"k": b"x"}],
        "empty": [],
        "blob": b"\x00\x01",
        "blobs": [b"ab", b"", b"c"],
        "nested": {"arr": np.arange(12, dtype=np.float32).reshape(3, 4), "none": None},
        "empty_arr": np.zeros((0, 7), dtype=np.uint16),
        "scalar": np.float64(2.0),
    }
    back = statefile.decode(bytearray(b"".join(statefile.encode(tree))))
    assert back["masks"] == tree["masks"] and back["big"] == 2**200
    assert back["ints"] == [1, -2, 3] and back["strs"] == ["a", "ü", ""]
    assert back["floats"][0] == 1.5 and np.isnan(back["floats"][1])
    assert back["floats"][2] == float("-inf") and np.isnan(back["nan"])
    assert back["bools"] == [True, False] and type(back["bools"][0]) is bool
    assert back["mixed"] == [1, "a", None, 2.5, [3, 4], {"k": b"x"}]
    assert back["blob"] == b"\x00\x01" and back["blobs"] == [b"ab", b"", b"c"]
    arr = back["nested"]["arr"]
    assert arr.dtype == np.float32 and arr.shape == (3, 4) and arr.flags.writeable
    np.testing.assert_array_equal(arr, tree["nested"]["arr"])
    assert back["empty_arr"].shape == (0, 7) and back["empty"] == []
    assert back["scalar"] == 2.0 and back["nested"]["none"] is None


@pytest.mark.parametrize(
    "bad",
    [
        {"t": (1, 2)},
        {"s": {1, 2}},
        {"o": object()},
        {"obj": np.array([object()], dtype=object)},
        {"u": np.array(["a"])},
        {1: "key not a str"},
        {"neg": [-(2**70), 1]},
        {"p": Path("/x")},
    ],
)
def test_anything_but_data_is_refused(bad: dict[Any, Any]) -> None:
    with pytest.raises(StateFileError):
        statefile.encode(bad)


def test_pipeline_with_every_detector_round_trips(tmp_path: Path) -> None:
    names = available()
    assert {"ensemble", "art", "zscore", "threshold"} <= set(names)
    settings = settings_in(tmp_path, detectors=names)
    a = trained(settings)
    path = tmp_path / STATE_FILE
    statefile.dump(path, a.state_dict())
    b = Pipeline(settings)
    assert b.load_state_dict(statefile.load(path)) == []
    assert b.sensor_ids == a.sensor_ids and b.seq.mask == a.seq.mask
    assert b.health == a.health and "anomalous" in b.health
    for name, book in a.books.items():
        np.testing.assert_array_equal(book.active, b.books[name].active)
    tail = normal("S1", 60, start=401, seed=9) + [reading("S2", 40.0, 400)]
    out_a, out_b = a.process(tail), b.process(tail)
    assert out_a.alerts == out_b.alerts and out_a.health == out_b.health
    for det_a, det_b in zip(a.detectors, b.detectors, strict=True):
        for k, v in det_a.state.items():
            np.testing.assert_array_equal(v[:3], det_b.state[k][:3], err_msg=f"{det_a.name}.{k}")


def test_flipped_byte_is_a_checksum_error(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    statefile.dump(path, trained(settings_in(tmp_path)).state_dict())
    data = bytearray(path.read_bytes())
    for at in (30, len(data) // 2, len(data) - 40):
        flipped = bytearray(data)
        flipped[at] ^= 0x01
        with pytest.raises(StateFileError, match="checksum"):
            statefile.decode(flipped)
    with pytest.raises(StateFileError, match="checksum"):
        statefile.decode(data[: len(data) // 2])
    with pytest.raises(StateFileError, match="not a mqtt-anomaly state file"):
        statefile.decode(pickle.dumps({"version": 1}))


def rechecksummed(data: bytes) -> bytes:
    import hashlib

    return data[:-32] + hashlib.sha256(data[:-32]).digest()


def test_forged_manifest_with_valid_checksum_is_refused() -> None:
    good = b"".join(statefile.encode({"a": np.arange(4, dtype=np.int64)}))
    forged = good.replace(b'"<i8"', b'"|O8"', 1)
    with pytest.raises(StateFileError, match="dtype"):
        statefile.decode(bytearray(rechecksummed(forged)))
    forged = good.replace(b"[4]", b"[9]", 1)
    with pytest.raises(StateFileError, match="offset or size"):
        statefile.decode(bytearray(rechecksummed(forged)))
    forged = good.replace(b'{"$a":0}', b'{"$x":0}', 1)
    with pytest.raises(StateFileError, match="unknown tag"):
        statefile.decode(bytearray(rechecksummed(forged)))


def test_file_is_0600_and_dir_0700(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state_dir = tmp_path / "state"
    service = DetectorService(settings_in(tmp_path), console=False)
    service.restore()  # creates the dir and the key
    service.save()
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / STATE_FILE).stat().st_mode) == 0o600
    key = state_dir / statefile.KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert statefile.load_or_create_key(state_dir) == key.read_bytes()  # kept, not replaced
    state_dir.chmod(0o755)
    (state_dir / STATE_FILE).chmod(0o644)
    with caplog.at_level(logging.WARNING):
        statefile.prepare_dir(state_dir)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert "tightened to 0700" in caplog.text
    service.save()
    assert stat.S_IMODE((state_dir / STATE_FILE).stat().st_mode) == 0o600


# ---- the service at start ------------------------------------------------------------
def restore_fresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> tuple[DetectorService, str]:
    service = DetectorService(settings_in(tmp_path), console=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        service.restore()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "\n" not in warnings[0]
    assert service.pipeline.sensor_ids == []  # fresh start
    return service, warnings[0]


def test_hostile_pickle_as_state_file_runs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    marker = tmp_path / "pwned"
    payload = hostile_pickle(marker)
    (state_dir / STATE_FILE).write_bytes(payload)
    service, warning = restore_fresh(tmp_path, caplog)
    assert not marker.exists()
    assert "not a mqtt-anomaly state file" in warning
    (moved,) = aside(state_dir, STATE_FILE, "corrupt")
    assert moved.read_bytes() == payload  # kept as it was
    assert not (state_dir / STATE_FILE).exists()
    service.save()  # a fresh state file, the moved one untouched
    assert statefile.load(state_dir / STATE_FILE)["sensor_ids"] == []
    assert moved.read_bytes() == payload


def test_old_pickled_state_is_moved_aside_unread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    marker = tmp_path / "pwned"
    payload = hostile_pickle(marker)
    (state_dir / LEGACY_STATE_FILE).write_bytes(payload)
    _, warning = restore_fresh(tmp_path, caplog)
    assert not marker.exists()
    assert "not loading pickled state" in warning
    (moved,) = aside(state_dir, LEGACY_STATE_FILE, "unsafe")
    assert moved.read_bytes() == payload and not (state_dir / LEGACY_STATE_FILE).exists()


def test_truncated_state_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_in(tmp_path)
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    path = state_dir / STATE_FILE
    statefile.dump(path, trained(settings).state_dict())
    os.truncate(path, path.stat().st_size // 3)
    _, warning = restore_fresh(tmp_path, caplog)
    assert "checksum mismatch" in warning and "starting fresh" in warning
    assert len(aside(state_dir, STATE_FILE, "corrupt")) == 1


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda s: s.update(sensor_ids=5), "sensor_ids is not a list"),
        (lambda s: s.update(version=2), "unknown state version"),
        (lambda s: s.update(seq_top=s["seq_top"][:-1]), "seq_top has 2 entries for 3 sensors"),
        (lambda s: s.update(health=["ok", "ok", "sideways"]), "unknown health"),
        (lambda s: s.update(interval=["x", "y", "z"]), "interval holds something else"),
        (lambda s: s.update(seq_mask=[-1, 0, 0]), "out of range"),
        (lambda s: s["books"].update(zscore={"active": 3}), "alert book zscore"),
        (lambda s: s.pop("detectors"), "detectors is not a dict"),
        (lambda s: s.clear(), "unknown state version"),
    ],
)
def test_wrong_tree_in_a_valid_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: Any, why: str
) -> None:
    settings = settings_in(tmp_path)
    state = trained(settings).state_dict()
    change(state)
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    statefile.dump(state_dir / STATE_FILE, state)
    service, warning = restore_fresh(tmp_path, caplog)
    assert why in warning
    assert len(aside(state_dir, STATE_FILE, "corrupt")) == 1
    # the pipeline is untouched and works
    assert service.pipeline.process(normal("S9", 3)).readings


def test_bad_detector_arrays_relearn_that_detector_only() -> None:
    settings = load_settings()
    state = trained(settings).state_dict()
    state["detectors"]["zscore"]["arrays"]["mean"] = np.zeros((16, 3))  # wrong shape
    state["detectors"]["stuck"]["arrays"] = {"n": "text"}  # wrong fields
    b = Pipeline(settings)
    assert sorted(b.load_state_dict(state)) == ["stuck", "zscore"]
    z = next(d for d in b.detectors if d.name == "zscore")
    assert z.capacity == 0 and all(len(a) == 0 for a in z.state.values())  # nothing half-loaded
    assert b.sensor_ids == ["S1", "S2", "S3"]
    assert b.process(normal("S1", 2, start=401)).readings


def test_load_into_a_used_pipeline_is_refused() -> None:
    a = trained(load_settings())
    with pytest.raises(StateFileError, match="new pipeline"):
        a.load_state_dict(a.state_dict())


def test_load_state_dict_only_raises_state_file_error() -> None:
    rng = np.random.default_rng(3)
    good = trained(load_settings()).state_dict()
    junk: list[Any] = [None, 1, "x", [1], {"a": 1}, np.zeros(3), {"version": 1}]
    assert len(good) >= 5, sorted(good)
    for key in good:
        for value in junk:
            state = dict(good)
            state[key] = value
            pipe = Pipeline(load_settings())
            try:
                pipe.load_state_dict(state)
            except StateFileError:
                assert pipe.sensor_ids == []
    for _ in range(50):
        state = dict(good)
        state[str(rng.choice(list(good)))] = junk[int(rng.integers(len(junk)))]
        with pytest.raises(StateFileError):
            Pipeline(load_settings()).load_state_dict({**state, "version": "1"})


# ---- refusing to start ---------------------------------------------------------------
def detect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "detect", "--broker", "mqtt://127.0.0.1:9", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_unwritable_state_dir_refuses_to_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = one_error_line(
        detect(tmp_path, "--store", "none://", "--state-dir", str(blocker / "state"))
    )
    assert "state dir" in line and str(blocker / "state") in line


def test_state_dir_without_write_permission_refuses_to_start(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into a 0500 directory")
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o500)
    line = one_error_line(detect(tmp_path, "--store", "none://", "--state-dir", str(state_dir)))
    assert "not writable" in line


def test_unwritable_store_refuses_to_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = one_error_line(
        detect(
            tmp_path,
            "--store",
            f"sqlite:///{blocker / 'history.db'}",
            "--state-dir",
            str(tmp_path / "state"),
        )
    )
    assert "history store" in line


# ---- signed River models -------------------------------------------------------------
def test_signature_checks() -> None:
    key, other = b"k" * 32, b"o" * 32
    signed = statefile.sign(key, b"blob")
    assert statefile.verify(key, signed) == b"blob"
    with pytest.raises(StateFileError, match="signature"):
        statefile.verify(other, signed)
    tampered = signed[:-1] + b"c"
    with pytest.raises(StateFileError, match="signature"):
        statefile.verify(key, tampered)
    with pytest.raises(StateFileError):
        statefile.verify(key, b"short")


needs_river = pytest.mark.skipif(not river_available(), reason="river is not installed")


@needs_river
def test_river_model_with_bad_signature_is_refused_unread(tmp_path: Path) -> None:
    from mqtt_anomaly.detectors.river_adapter import RiverDetector

    det = RiverDetector(seed=1)
    det.state_key = b"k" * 32
    det.score_series(np.random.default_rng(2).normal(0, 1, 50))
    saved = det.state_dict()
    clone = RiverDetector(seed=1)
    clone.state_key = b"k" * 32
    clone.load_state_dict(saved)  # same key: accepted
    assert clone.capacity == det.capacity
    marker = tmp_path / "pwned"
    planted = dict(saved, models=[statefile.sign(b"x" * 32, hostile_pickle(marker))])
    fresh = RiverDetector(seed=1)
    fresh.state_key = b"k" * 32
    with pytest.raises(ValueError, match="signature"):
        fresh.load_state_dict(planted)
    assert not marker.exists() and fresh.capacity == 0
    unsigned = dict(saved, models=[pickle.dumps(m) for m in det.models])
    with pytest.raises(ValueError, match="refused"):
        fresh.load_state_dict(unsigned)


@needs_river
def test_service_river_state_survives_restart_with_its_key(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, detectors=["river"])
    first = DetectorService(settings, console=False)
    first.restore()
    first.pipeline.process(normal("S1", 30))
    first.save()
    again = DetectorService(settings, console=False)
    again.restore()
    assert again.pipeline.sensor_ids == ["S1"]
    assert again.pipeline.detectors[0].state["n"][0] == 30
    # another key (a file copied from elsewhere): the models relearn, the rest is kept
    (tmp_path / "state" / statefile.KEY_FILE).write_bytes(b"z" * 32)
    other = DetectorService(settings, console=False)
    other.restore()
    assert other.pipeline.sensor_ids == ["S1"]
    assert other.pipeline.detectors[0].capacity == 0

"""The detector contract (``detectors/checks.py``), checked for every registered detector.

Plus for the built-ins: finite scores, a flat series does not alert, the parameters and numbers
saved states depend on, each detector's own behaviour, and the doctests.
"""

from __future__ import annotations

import doctest
import functools
import importlib
import pkgutil
from collections.abc import Callable

import numpy as np
import pytest

import mqtt_anomaly.detectors as detectors_pkg
from mqtt_anomaly.detectors import available, create, registry
from mqtt_anomaly.detectors.base import Detector
from mqtt_anomaly.detectors.checks import (  # the contract's own test series
    CHECKS,
    N,
    _normal,
    _ts,
    check_scores_in_range,
)
from mqtt_anomaly.detectors.river_adapter import river_available

NAMES = available()


def _scores(det: Detector, values: np.ndarray, ts: np.ndarray | None = None) -> np.ndarray:
    return det.score_series(values, _ts(len(values)) if ts is None else ts)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "stuck"])
@pytest.mark.parametrize("value", [0.0, 42.0, -3.5e9])
def test_flat_series_does_not_alert(name: str, value: float) -> None:
    s = _scores(create(name), np.full(N, value))
    if name == "threshold":
        assert np.all(s == s[0])  # a fixed limit: a flat value is simply in or out
    else:
        assert s.max() < 0.5


def test_stuck_alerts_on_flat_series() -> None:
    assert _scores(create("stuck"), np.full(N, 7.0)).max() >= 0.5


def test_registry_has_the_library() -> None:
    expected = {"robust", "rate", "seasonal", "changepoint", "ensemble"}
    assert expected <= set(NAMES)


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str, check: Callable[[Callable[[], Detector]], None]) -> None:
    check(functools.partial(create, name))


def test_contract_covers_the_registry() -> None:
    assert len(NAMES) >= 9  # the loops above ran over every built-in
    assert set(NAMES) == {n for n in registry.BUILTIN if n != "river" or river_available()}


@pytest.mark.parametrize("name", NAMES)
def test_builtin_scores_are_finite(name: str) -> None:
    check_scores_in_range(functools.partial(create, name), allow_nan=False)


def test_bad_parameters_are_config_errors() -> None:
    from mqtt_anomaly.config import DetectorSettings
    from mqtt_anomaly.errors import ConfigError

    for name, params in {
        "robust": {"rate": 2.0},
        "seasonal": {"bins": 0},
        "changepoint": {"h": -1.0},
        "ensemble": {"levels": 1},
        "rate": {"alpha": 0.0},
    }.items():
        with pytest.raises(ConfigError):
            create(name, DetectorSettings(params={name: params}))


def test_ensemble_reports_once_per_incident() -> None:
    x = _normal(15, 3000)
    x[2000:2050] += 40.0
    s = _scores(create("ensemble"), x)
    assert s[2000:2010].max() >= 0.5
    assert np.count_nonzero(s >= 0.5) <= 5


def _modules() -> list[str]:
    return [
        f"{detectors_pkg.__name__}.{m.name}"
        for m in pkgutil.iter_modules(detectors_pkg.__path__)
        if m.name != "river_adapter" or "river" in NAMES
    ]


@pytest.mark.parametrize("module", _modules())
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def _noise_burst() -> np.ndarray:
    """A daily-like cycle whose noise grows fourfold at 2000, staying near its usual range."""
    rng = np.random.default_rng(16)
    t = np.arange(3000)
    x = 20.0 + 3.0 * np.sin(2 * np.pi * t / 144) + rng.normal(0.0, 0.5, 3000)
    x[2000:2300] = 20.0 + 3.0 * np.sin(2 * np.pi * t[2000:2300] / 144)
    x[2000:2300] += np.clip(rng.normal(0.0, 2.0, 300), -2.5, 2.5)
    return x


def test_ensemble_volatility_records_catch_a_noise_burst_early() -> None:
    s = _scores(create("ensemble"), _noise_burst())
    assert s[2000:2020].max() >= 0.5


def test_art_reports_a_new_behaviour_once() -> None:
    s = _scores(create("art"), _noise_burst())
    assert s[2000:2020].max() >= 0.5
    assert np.count_nonzero(s >= 0.5) <= 2


def _missing_peak() -> tuple[np.ndarray, np.ndarray, int]:
    """A 5-minute series with a daily peak from 8 to 17 h; on day 10 the peak does not come."""
    rng = np.random.default_rng(19)
    n = 288 * 14
    ts = 1.7e9 + 300.0 * np.arange(n)
    hour = (ts % 86400) / 3600
    x = 10.0 + 5.0 * ((hour >= 8) & (hour < 17)) + rng.normal(0.0, 0.3, n)
    missing = (np.arange(n) // 288 == 10) & (hour >= 8) & (hour < 17)
    x[missing] -= 5.0  # the value stays inside its usual range
    return x, ts, int(np.flatnonzero(missing)[0])


def test_ensemble_profile_catches_a_missing_daily_peak() -> None:
    from mqtt_anomaly.detectors.ensemble import EnsembleDetector

    x, ts, start = _missing_peak()
    s = EnsembleDetector().score_series(x, ts)
    assert s[start : start + 12].max() >= 0.5
    without = EnsembleDetector(profile=0).score_series(x, ts)
    assert without[start : start + 108].max() < 0.5  # in range: records and contexts miss it


def test_ensemble_state_per_sensor_is_small() -> None:
    det = create("ensemble")
    det.reserve(16)
    per_slot = sum(a.nbytes for a in det.state.values()) // det.capacity
    assert per_slot <= 2400


def test_fusion_state_per_sensor_is_within_1_kib() -> None:
    det = create("fusion")
    det.reserve(16)
    per_slot = sum(a.nbytes for a in det.state.values()) // det.capacity
    assert per_slot == det.bytes_per_sensor() <= 1024  # type: ignore[attr-defined]


@pytest.mark.parametrize(("offset", "gain"), [(0.0, 1.0), (1e6, 1.0), (0.0, 1e7), (5.0, 1e-5)])
def test_fusion_profile_catches_a_missing_daily_peak_at_any_scale(
    offset: float, gain: float
) -> None:
    from mqtt_anomaly.detectors.fusion import FusionDetector

    x, ts, start = _missing_peak()  # float16 profile offsets in a per-sensor unit
    s = FusionDetector().score_series(offset + gain * x, ts)
    assert s[start : start + 12].max() >= 0.5
    assert np.count_nonzero(s >= 0.5) <= 5


def test_fusion_alerts_once_per_incident_once_settled() -> None:
    x = _normal(15, 3000)
    x[2000:2050] += 40.0
    s = _scores(create("fusion"), x)
    assert s[2000:2010].max() >= 0.5
    assert np.count_nonzero(s[300:] >= 0.5) <= 5  # settled: the ensemble's bound


def test_fusion_dead_band_silences_records_of_stationary_noise() -> None:
    from mqtt_anomaly.config import DetectorSettings

    def alerts(params: dict[str, float]) -> int:
        det = lambda: create("fusion", DetectorSettings(params={"fusion": params}))  # noqa: E731
        xs = [25 + np.random.default_rng(k).normal(0, 0.3, 3000) for k in range(20)]
        return sum(int(np.count_nonzero(det().score_series(x) >= 0.5)) for x in xs)

    assert alerts({}) > 100  # records of noise, broken by chance
    assert alerts({"band": 1.0}) == 0
    x = _normal(15, 3000)
    x[2000:2050] += 40.0  # a real incident still alerts
    assert (
        _scores(create("fusion", DetectorSettings(params={"fusion": {"band": 1.0}})), x)[
            2000:2010
        ].max()
        >= 0.5
    )


def test_fusion_parameters_are_checked() -> None:
    from mqtt_anomaly.config import DetectorSettings
    from mqtt_anomaly.errors import ConfigError

    for params in ({"prof_min": 16}, {"settle": -1}, {"band": -1.0}, {"profile": 100}):
        with pytest.raises(ConfigError):
            create("fusion", DetectorSettings(params={"fusion": params}))


def test_ensemble_profile_parameters_are_checked() -> None:
    from mqtt_anomaly.config import DetectorSettings
    from mqtt_anomaly.errors import ConfigError

    for params in ({"profile": 100}, {"prof_rate": 0.0}, {"prof_min": 0}, {"c_profile": 0.0}):
        with pytest.raises(ConfigError):
            create("ensemble", DetectorSettings(params={"ensemble": params}))


# ---- saved-state compatibility: params and numbers as they were --------------------------
# ``params()`` is saved with every detector's state and compared on restore, so its keys,
# values, types and order are part of the state file format: these are the dicts the
# detectors have always saved.
SAVED_PARAMS = {
    "art": "{'warmup': 400, 'categories': 32, 'size': 0.8, 'gap': 0.3, 'hold': 300, 'scale': 1.0}",
    "changepoint": "{'alpha': 0.005, 'drift': 0.5, 'h': 8.0, 'warmup': 50, 'clip': 3.0, "
    "'min_std': 0.01, 'rel_std': 0.0001}",
    "ensemble": "{'warmup': 150, 'smooth': 0.2, 'slow': 0.05, 'k': 0.05, 'c': 160.0, "
    "'alpha': 0.01, 'short': 0.2, 'long': 0.002, 'levels': 10, 'order': 3, 'table': 256, "
    "'hold': 300, 'level': 0.2547, 'lock': True, 'vol_fast': 0.05, 'vol_slow': 0.01, "
    "'kvol': 0.1, 'profile': 168, 'c_profile': 50.0, 'prof_rate': 0.1, 'prof_min': 5}",
    "fusion": "{'warmup': 150, 'smooth': 0.2, 'slow': 0.05, 'k': 0.05, 'c': 160.0, "
    "'alpha': 0.01, 'short': 0.2, 'long': 0.0016, 'levels': 10, 'order': 3, 'table': 64, "
    "'hold': 300, 'level': 0.243, 'lock': True, 'vol_fast': 0.05, 'vol_slow': 0.01, "
    "'kvol': 0.08, 'profile': 168, 'c_profile': 50.0, 'prof_rate': 0.1, 'prof_min': 5, "
    "'settle': 150, 'band': 0.0}",
    "rate": "{'alpha': 0.02, 'z_alert': 8.0, 'warmup': 10, 'clip': 4.0, 'max_rate': 0.0, "
    "'min_rate': 1e-06}",
    "robust": "{'rate': 0.02, 'z_alert': 6.0, 'warmup': 30, 'min_scale': 0.01, "
    "'rel_scale': 0.0001}",
    "seasonal": "{'period': 86400.0, 'bins': 24, 'alpha': 0.1, 'z_alert': 5.0, 'min_count': 3, "
    "'clip': 3.0, 'min_std': 0.01, 'rel_std': 0.001}",
    "stuck": "{'readings': 30, 'tolerance': 0.0}",
    "threshold": "{'threshold': 90.0, 'clear': 88.0}",
    "zscore": "{'alpha': 0.02, 'z_alert': 5.0, 'warmup': 30, 'clip': 3.0, 'min_std': 0.01, "
    "'rel_std': 0.0001}",
    "river": "{'model': 'HalfSpaceTrees', 'seed': 42, 'scale': True, 'alert': 0.8}",
}
# configured values are converted (an int warmup given as 10.0, a float given as 2)
CONFIGURED = {
    "threshold": (
        {"threshold": 95},
        "{'threshold': 95.0, 'clear': 88.0}",
    ),
    "zscore": (
        {"alpha": 0.1, "warmup": 10.0},
        "{'alpha': 0.1, 'z_alert': 5.0, 'warmup': 10, 'clip': 3.0, 'min_std': 0.01, "
        "'rel_std': 0.0001}",
    ),
    "seasonal": (
        {"bins": 48.0, "period": 604800},
        "{'period': 604800.0, 'bins': 48, 'alpha': 0.1, 'z_alert': 5.0, 'min_count': 3, "
        "'clip': 3.0, 'min_std': 0.01, 'rel_std': 0.001}",
    ),
    "ensemble": (
        {"lock": 0, "profile": 0},
        "{'warmup': 150, 'smooth': 0.2, 'slow': 0.05, 'k': 0.05, 'c': 160.0, 'alpha': 0.01, "
        "'short': 0.2, 'long': 0.002, 'levels': 10, 'order': 3, 'table': 256, 'hold': 300, "
        "'level': 0.2547, 'lock': False, 'vol_fast': 0.05, 'vol_slow': 0.01, 'kvol': 0.1, "
        "'profile': 0, 'c_profile': 50.0, 'prof_rate': 0.1, 'prof_min': 5}",
    ),
    "art": (
        {"categories": 8.0},
        "{'warmup': 400, 'categories': 8, 'size': 0.8, 'gap': 0.3, 'hold': 300, 'scale': 1.0}",
    ),
    "stuck": ({"readings": 3, "tolerance": 1}, "{'readings': 3, 'tolerance': 1.0}"),
    "rate": (
        {"max_rate": 2},
        "{'alpha': 0.02, 'z_alert': 8.0, 'warmup': 10, 'clip': 4.0, 'max_rate': 2.0, "
        "'min_rate': 1e-06}",
    ),
    "robust": (
        {"warmup": 5.0},
        "{'rate': 0.02, 'z_alert': 6.0, 'warmup': 5, 'min_scale': 0.01, 'rel_scale': 0.0001}",
    ),
    "changepoint": (
        {"h": 4},
        "{'alpha': 0.005, 'drift': 0.5, 'h': 4.0, 'warmup': 50, 'clip': 3.0, 'min_std': 0.01, "
        "'rel_std': 0.0001}",
    ),
}


@pytest.mark.parametrize("name", NAMES)
def test_saved_params_are_unchanged(name: str) -> None:
    assert repr(create(name).params()) == SAVED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(CONFIGURED))
def test_configured_params_are_unchanged(name: str) -> None:
    from mqtt_anomaly.config import DetectorSettings

    params, saved = CONFIGURED[name]
    assert repr(create(name, DetectorSettings(params={name: params})).params()) == saved


def test_threshold_default_clear_is_saved_as_a_number() -> None:
    from mqtt_anomaly.detectors.threshold import ThresholdDetector

    assert repr(ThresholdDetector(threshold=50).params()) == "{'threshold': 50.0, 'clear': 48.0}"


def _fixed_series() -> tuple[np.ndarray, np.ndarray]:
    """Three days at 5 minutes with a daily cycle, a spike, a level shift and a random walk."""
    rng = np.random.default_rng(2024)
    n = 3000
    ts = 1.7e9 + 300.0 * np.arange(n)
    x = 10 + 3 * np.sin(2 * np.pi * ts / 86400) + rng.normal(0, 0.4, n)
    x[1200:1210] += 25.0
    x[2000:] += 4.0
    x[2500:2600] = np.cumsum(rng.normal(0, 2, 100))
    return x, ts


def _digest(det: Detector) -> str:
    """SHA-256 of every score, band and the final state, three slots per call."""
    import hashlib

    x, ts = _fixed_series()
    h = hashlib.sha256()
    slots = np.array([1, 0, 2], dtype=np.intp)
    for i in range(len(x)):
        vals = np.array([x[i], -x[i] * 1e3, x[i] + 1e6])
        t = np.array([ts[i], ts[i] + 7.0, ts[i] - 30.0])
        r = det.update(slots, vals, t)
        h.update(r.score.tobytes())
        h.update(r.low.tobytes())
        h.update(r.high.tobytes())
    for k in sorted(det.state):
        h.update(det.state[k].tobytes())
    return h.hexdigest()


# Digests of these detectors' output as computed before their statistics were shared; they
# use only correctly rounded operations (+, -, *, /, sqrt), so the bytes are the same on
# every IEEE 754 machine.
NUMBERS = {
    ("zscore", ""): "404b3d65712cc27d4b537f64828d83a4bbd2da31fa3abed01bd7ab0114cbf714",
    ("zscore", "alpha=0.1, warmup=5, clip=1.5"): (
        "26addfa3ac4cf8935600bd618e46408563d78a5ab95b459a6d0a4f35e706cad7"
    ),
    ("changepoint", ""): "4ea5c48a1c8dac814e6d09c72c297266ad2db92488d8a2eda0bfbf804e2d8c8c",
    ("changepoint", "alpha=0.05, warmup=2, clip=1.0"): (
        "ba733d1d32441b175f978441e320aba0c03e0c44768c3686c6c2c2f959615594"
    ),
    ("seasonal", ""): "ed25520d1988ce4b1d0ce8352a13a5bb9167765fb3af0f525c145ccfaa32889e",
    ("seasonal", "bins=48, alpha=0.05, min_count=30, clip=2.0"): (
        "38b42322be24bce08ef8852a7fcabf1cb0403d28664b0008d1a56e11cd0032e4"
    ),
}


@pytest.mark.parametrize(("name", "args"), sorted(NUMBERS))
def test_scores_are_bit_identical(name: str, args: str) -> None:
    from mqtt_anomaly.config import DetectorSettings

    params = {k: float(v) for k, v in (a.split("=") for a in args.split(", ") if a)}
    det = create(name, DetectorSettings(params={name: params}))
    assert _digest(det) == NUMBERS[name, args]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("zscore", {"alpha": 1.0}, "alpha must be in"),
        ("zscore", {"clip": 0.0}, "clip must be positive"),
        ("zscore", {"z_alert": -1.0}, "z_alert must be positive"),
        ("changepoint", {"rel_std": -1e-3}, "rel_std non-negative"),
        ("changepoint", {"warmup": 1}, "warmup >= 2"),
        ("seasonal", {"alpha": 0.0}, "alpha must be in"),
        ("seasonal", {"min_std": -1.0}, "min_std and rel_std non-negative"),
        ("seasonal", {"bins": 0}, "bins, z_alert and min_count must be positive"),
    ],
)
def test_the_ewma_detectors_refuse_bad_parameters(
    name: str, params: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        registry.get(name)(**params)


def test_fusion_without_numba_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Numba is the `fusion` extra: without it the detector refuses to be built, with the
    install line, and listing the registry never imports it."""
    import importlib.util

    from mqtt_anomaly.detectors import fusion

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"^the fusion detector needs Numba: pip install"):
        fusion.FusionDetector()

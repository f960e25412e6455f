"""The detector contract as functions: call them from a plug-in's tests.

:func:`check_detector` runs every check in :data:`CHECKS` on a detector class (built with its
defaults) or on a factory that returns a new, configured detector on each call::

    from mqtt_anomaly.detectors.checks import check_detector

    def test_my_detector_keeps_the_contract():
        check_detector(MyDetector)
        check_detector(lambda: MyDetector(alpha=0.1))

Each check builds the detectors it needs from the factory and raises ``AssertionError``
saying what is wrong. The contract (see ``base.py``):

- the declaration: a ``name``, clear level below raise level, one array per field, of a
  numeric or boolean dtype (the state file holds nothing else);
- scores in [0, 1] (or NaN: no opinion) on normal, flat, zero, huge, tiny, negative,
  random-walk and step data; ``score``, ``low``, ``high`` one per reading, ``low <= high``;
- an empty batch is fine; the caller's arrays are not modified;
- score then learn: a score never depends on later readings;
- slots are independent: interleaved series in several slots, in any slot order, with a slot
  joining later, score as each alone; a round split into one call per reading scores as the
  whole round;
- state: saved, written to and read back from the state-file format, restored into a new
  detector, it continues identically; state of another detector is refused;
- ``reserve`` grows every array and keeps what was learned, new slots hold their fill;
  memory per slot does not grow with the readings;
- ``reset`` forgets a slot and only that slot;
- parameters are keyword-only, and ``type(det)(**det.params())`` is the same detector.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import statefile
from .base import Detector, FloatArray, IntArray

Factory = Callable[[], Detector]

N = 600


def _ts(n: int, step: float = 60.0) -> FloatArray:
    return 1.7e9 + step * np.arange(n, dtype=np.float64)


def _normal(seed: int, n: int = N) -> FloatArray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 20.0 + 3.0 * np.sin(2 * np.pi * t / 144) + rng.normal(0.0, 0.5, n)


def _walk(seed: int, n: int = N) -> FloatArray:
    return np.cumsum(np.random.default_rng(seed).normal(0.0, 1.0, n))


SERIES: dict[str, Callable[[], FloatArray]] = {
    "normal": lambda: _normal(0),
    "flat": lambda: np.full(N, 42.0),
    "zero": lambda: np.zeros(N),
    "huge": lambda: 1e12 * (1.0 + 0.01 * _normal(1)),
    "tiny": lambda: 1e-12 * _normal(2),
    "negative": lambda: -1e6 + _normal(3),
    "walk": lambda: _walk(4),
    "steps": lambda: np.repeat(np.random.default_rng(5).normal(0, 10, N // 20), 20),
}


def _slots(*s: int) -> IntArray:
    return np.array(s, dtype=np.intp)


def _run(det: Detector, values: FloatArray, ts: FloatArray | None = None) -> FloatArray:
    return det.score_series(values, _ts(len(values)) if ts is None else ts)


def _same(a: FloatArray, b: FloatArray, what: str) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=what)


def check_declaration(factory: Factory) -> None:
    """A name, consistent levels, one state array per field of a saveable dtype."""
    det = factory()
    assert isinstance(det, Detector), f"{det!r} is not a Detector"
    assert isinstance(det.name, str) and det.name, "a detector needs a non-empty name"
    assert 0.0 <= det.clear_level < det.raise_level <= 1.0, "need 0 <= clear < raise <= 1"
    assert set(det.state) == set(det.fields()), "state arrays and fields() differ"
    for k, f in det.fields().items():
        kind = np.dtype(f.dtype).kind
        assert kind in "biuf", f"field {k}: dtype {f.dtype} cannot be saved (numbers only)"


def check_scores_in_range(factory: Factory, *, allow_nan: bool = True) -> None:
    """Scores in [0, 1] (NaN allowed unless ``allow_nan`` is False) on many kinds of data."""
    for kind, make in SERIES.items():
        s = _run(factory(), make())
        assert s.shape == (N,), f"{kind}: one score per reading"
        ok = (s >= 0.0) & (s <= 1.0)
        if allow_nan:
            ok |= np.isnan(s)
        bad = np.flatnonzero(~ok)
        assert not len(bad), f"{kind} data: score {s[bad[0]]!r} at reading {bad[0]}"


def check_bands(factory: Factory) -> None:
    """``score``, ``low`` and ``high`` are float arrays, one value per reading, low <= high."""
    det = factory()
    x, ts = _normal(11), _ts(N)
    for i in range(0, N, 50):  # batches of 50 slots
        res = det.update(np.arange(50, dtype=np.intp), x[i : i + 50], ts[i : i + 50])
        for part in ("score", "low", "high"):
            arr = getattr(res, part)
            assert isinstance(arr, np.ndarray) and arr.shape == (50,), f"{part}: shape (50,)"
            assert arr.dtype.kind == "f", f"{part}: floats, not {arr.dtype}"
        both = ~np.isnan(res.low) & ~np.isnan(res.high)
        assert np.all(res.low[both] <= res.high[both]), "the band's low is above its high"


def check_empty_batch(factory: Factory) -> None:
    """An update without readings returns empty arrays and changes nothing."""
    det = factory()
    _run(det, _normal(17)[:100])
    before = det.state_dict()
    empty = np.zeros(0)
    res = det.update(np.zeros(0, dtype=np.intp), empty, empty)
    assert res.score.shape == res.low.shape == res.high.shape == (0,), "empty in, empty out"
    for k, a in det.state.items():
        np.testing.assert_array_equal(a, before["arrays"][k], err_msg=f"empty batch changed {k}")


def check_inputs_unchanged(factory: Factory) -> None:
    """``update`` does not write into the caller's arrays."""
    det = factory()
    x, ts = _normal(18), _ts(N)
    slots = _slots(3, 1, 0)
    for i in range(0, 300, 3):
        vals, t = x[i : i + 3].copy(), ts[i : i + 3].copy()
        keep = slots.copy(), vals.copy(), t.copy()
        det.update(slots, vals, t)
        for mine, theirs in zip((slots, vals, t), keep, strict=True):
            np.testing.assert_array_equal(mine, theirs, err_msg="update modified its input")


def check_causal(factory: Factory) -> None:
    """Score then learn: changing later readings does not change earlier scores."""
    x = _normal(6)
    y = x.copy()
    y[400:] = _walk(7, N - 400) * 50
    a, b = _run(factory(), x), _run(factory(), y)
    np.testing.assert_array_equal(a[:400], b[:400], err_msg="a score depends on later readings")


def check_slots_independent(factory: Factory) -> None:
    """Series in several slots (any order, one joining halfway) score as each alone."""
    half = N // 2
    series = [_normal(8), _walk(9) * 10, 1e6 + _normal(10), _walk(20) + 5.0]
    stamps = [_ts(N), _ts(N, 300.0), _ts(N, 1.0), _ts(N, 30.0)]
    alone = [_run(factory(), x, t) for x, t in zip(series[:3], stamps[:3], strict=True)]
    alone.append(_run(factory(), series[3][half:], stamps[3][half:]))
    det = factory()
    together = np.empty((N, 4))
    for i in range(N):
        k = 4 if i >= half else 3
        slots = _slots(2, 0, 1, 37)[:k]  # slot 37 joins halfway: the arrays grow
        vals = np.array([series[j][i] for j in range(k)])
        ts = np.array([stamps[j][i] for j in range(k)])
        together[i, :k] = det.update(slots, vals, ts).score
    for j in range(3):
        _same(together[:, j], alone[j], f"series {j} scores otherwise next to others")
    _same(together[half:, 3], alone[3], "a slot that joins later scores otherwise")


def check_batch_equals_one_by_one(factory: Factory) -> None:
    """A round of readings in one call scores as the same readings in one call each."""
    series = [_normal(21), _walk(22) * 3, -5.0 + _normal(23)]
    ts = _ts(N)
    batched, single = factory(), factory()
    a, b = np.empty((N, 3)), np.empty((N, 3))
    slots = _slots(0, 2, 1)
    for i in range(N):
        vals = np.array([s[i] for s in series])
        t = np.full(3, ts[i])
        a[i] = batched.update(slots, vals, t).score
        for j in range(3):
            b[i, j] = single.update(slots[j : j + 1], vals[j : j + 1], t[j : j + 1]).score[0]
    _same(a, b, "a batch scores otherwise than its readings one by one")


def check_state_round_trip(factory: Factory) -> None:
    """Saved state, also through the state-file format, continues identically in a new
    detector; the state of another detector is refused."""
    x, ts = _normal(12), _ts(N)
    det = factory()
    det.score_series(x[:300], ts[:300])
    saved = det.state_dict()
    json.dumps(saved["params"])  # the parameters go into the file's JSON manifest
    data = bytearray(b"".join(statefile.encode({"det": saved})))
    from_file = statefile.decode(data)["det"]
    rest = det.score_series(x[300:], ts[300:])
    for label, state in (("in memory", saved), ("through the state file", from_file)):
        clone = factory()
        clone.load_state_dict(state)
        np.testing.assert_array_equal(
            clone.score_series(x[300:], ts[300:]), rest, err_msg=f"restored {label}"
        )
    other = {**saved, "name": f"not-{det.name}"}
    try:
        factory().load_state_dict(other)
    except ValueError:
        pass
    else:
        raise AssertionError("state saved by another detector was accepted")


def check_reserve(factory: Factory) -> None:
    """``reserve`` grows every array, keeps the learned rows, fills new rows; memory per slot
    does not grow with the readings."""
    det = factory()
    _run(det, _normal(24)[:100])
    det.reserve(1)  # nothing to do
    kept = {k: a.copy() for k, a in det.state.items()}
    cap = det.capacity
    det.reserve(cap + 5)
    assert det.capacity >= cap + 5, "reserve(n) leaves room for n slots"
    fields = det.fields()
    for k, a in det.state.items():
        assert len(a) == det.capacity, f"{k}: {len(a)} rows for capacity {det.capacity}"
        np.testing.assert_array_equal(a[:cap], kept[k], err_msg=f"reserve changed {k}")
        np.testing.assert_array_equal(
            a[cap:], np.full_like(a[cap:], fields[k].fill), err_msg=f"new rows of {k}"
        )
    big = factory()
    big.update(_slots(100), np.ones(1), _ts(1))  # update grows by itself
    assert big.capacity > 100, "update does not make room for its slots"

    def nbytes(d: Detector) -> int:
        return sum(a.nbytes for a in d.state.values())

    det = factory()
    slot = _slots(0)
    x, ts = _walk(13, 2000), _ts(2000)
    for i in range(100):
        det.update(slot, x[i : i + 1], ts[i : i + 1])
    size = nbytes(det)
    for i in range(100, 2000):
        det.update(slot, x[i : i + 1], ts[i : i + 1])
    assert nbytes(det) == size, "memory per slot grows with the readings"


def check_reset(factory: Factory) -> None:
    """``reset`` forgets what a slot learned, and leaves the other slots alone."""
    x, y = _normal(14), _walk(25)
    ts = _ts(N)
    det = factory()
    first = _run(det, x, ts)
    det.reset(_slots(0))
    np.testing.assert_array_equal(_run(det, x, ts), first, err_msg="reset does not forget")
    two, ref = factory(), factory()
    for i in range(300):
        two.update(_slots(0, 1), np.array([x[i], y[i]]), np.full(2, ts[i]))
        ref.update(_slots(1), y[i : i + 1], ts[i : i + 1])
    two.reset(_slots(0))
    for i in range(300, N):
        a = two.update(_slots(1), y[i : i + 1], ts[i : i + 1]).score
        b = ref.update(_slots(1), y[i : i + 1], ts[i : i + 1]).score
        np.testing.assert_array_equal(a, b, err_msg="resetting slot 0 changed slot 1")


def check_params(factory: Factory) -> None:
    """Keyword-only parameters; ``type(det)(**det.params())`` rebuilds the same detector."""
    det = factory()
    try:
        params = det.params()
    except TypeError as exc:  # a parameter not kept as an attribute of its name
        raise AssertionError(str(exc)) from exc
    for k, v in params.items():
        assert v is None or isinstance(v, str | int | float | bool), f"{k}: {v!r} is not a scalar"
    cls = type(det)
    if params:
        try:
            cls(*params.values())
        except TypeError:
            pass
        else:
            raise AssertionError("positional parameters are accepted: make them keyword-only")
    again: Any = cls(**params)
    assert again.params() == params, "params() does not rebuild the detector"
    x = _normal(26)
    np.testing.assert_array_equal(_run(again, x), _run(factory(), x), err_msg="rebuilt")


CHECKS: tuple[Callable[[Factory], None], ...] = (
    check_declaration,
    check_params,
    check_scores_in_range,
    check_bands,
    check_empty_batch,
    check_inputs_unchanged,
    check_causal,
    check_slots_independent,
    check_batch_equals_one_by_one,
    check_state_round_trip,
    check_reserve,
    check_reset,
)


def yield_checks(factory: Factory) -> Iterator[Callable[[], None]]:
    """Each check bound to ``factory`` (named like the check), for one test per check."""
    for check in CHECKS:

        def bound(check: Callable[[Factory], None] = check) -> None:
            check(factory)

        bound.__name__ = check.__name__
        yield bound


def check_detector(factory: Factory) -> None:
    """Run every check of the contract on ``factory`` (a detector class or a function that
    returns a new detector); AssertionError at the first that fails."""
    for check in yield_checks(factory):
        check()

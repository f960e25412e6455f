"""The history stores on real files and a real server.

Behaviour tests run against SQLite and PostgreSQL (``backend`` fixture; PostgreSQL in a
database of the session's own, skipped when no server answers); file and SQL-dialect details
are SQLite's own."""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psycopg
import pytest

from mqtt_anomaly.config import StoreSettings
from mqtt_anomaly.errors import StoreError
from mqtt_anomaly.messages import Alert
from mqtt_anomaly.store import NullStore, Store, open_store, sqlite_path
from mqtt_anomaly.store.postgres import PostgresStore
from mqtt_anomaly.store.sqlite import SCHEMA_VERSION, SqliteStore

from .postgres import private_database

NOW = time.time()
DAY = 86400.0


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.002)


def settings(**kw: object) -> StoreSettings:
    return StoreSettings(**kw)  # type: ignore[arg-type]


def alert(sensor: str = "S1", ts: float = NOW, **kw: object) -> Alert:
    fields: dict[str, object] = {
        "sensor_id": sensor,
        "detector": "threshold",
        "severity": "critical",
        "state": "raised",
        "value": 95.5,
        "score": 1.25,
        "threshold": 90.0,
        "expected_low": None,
        "expected_high": 90.0,
        "reading_ts": ts - 0.5,
        "alert_ts": ts,
        "message": "above 90.0 °C",
    }
    fields.update(kw)
    return Alert(**fields)  # type: ignore[arg-type]


def count(path: Path, sql: str = "SELECT count(*) FROM readings") -> int:
    """A count through an independent connection: what another process would see."""
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql).fetchone()[0])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "history.db"


# ---- backends: every behaviour test runs against SQLite and PostgreSQL ------------------


class Backend:
    """How a test opens a store of one kind and looks at its tables from outside."""

    name = ""
    logger = ""
    lock_error = ""  # what ``stats.last_error`` says when a write waited too long for a lock

    def open(self, store_settings: StoreSettings | None = None, **kw: Any) -> Store:
        raise NotImplementedError

    def count(self, sql: str = "SELECT count(*) FROM readings") -> int:
        """A count through an independent connection: what another process would see."""
        raise NotImplementedError

    def lock_writes(self) -> Any:
        """A connection holding a lock that keeps the store from committing until ROLLBACK."""
        raise NotImplementedError


class SqliteBackend(Backend):
    name, logger, lock_error = "sqlite", "mqtt_anomaly.store.sqlite", "locked"

    def __init__(self, db: Path) -> None:
        self.db = db

    def open(self, store_settings: StoreSettings | None = None, **kw: Any) -> Store:
        if "write_timeout" in kw:
            kw["busy_timeout"] = kw.pop("write_timeout")
        return SqliteStore(self.db, store_settings, **kw)

    def count(self, sql: str = "SELECT count(*) FROM readings") -> int:
        return count(self.db, sql)

    def lock_writes(self) -> Any:
        return lock_writes(self.db)


class PostgresBackend(Backend):
    name, logger, lock_error = "postgresql", "mqtt_anomaly.store.postgres", "lock timeout"

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self, store_settings: StoreSettings | None = None, **kw: Any) -> Store:
        if "write_timeout" in kw:
            kw["lock_timeout"] = kw.pop("write_timeout")
        return PostgresStore(self.url, store_settings, **kw)

    def count(self, sql: str = "SELECT count(*) FROM readings") -> int:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(sql.encode()).fetchone()
            assert row is not None
            return int(row[0])

    def lock_writes(self) -> Any:
        conn = psycopg.connect(self.url, autocommit=True)
        conn.execute("BEGIN")
        conn.execute("LOCK TABLE readings, alerts IN EXCLUSIVE MODE")
        return conn


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of this test session's own, dropped at the end."""
    with private_database("test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, db: Path) -> Iterator[Backend]:
    """SQLite in a fresh file, or PostgreSQL in a fresh schema of the session's database."""
    if request.param == "sqlite":
        yield SqliteBackend(db)
        return
    base: str = request.getfixturevalue("pg_database")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    try:
        yield PostgresBackend(f"{base}?options=-csearch_path%3D{schema}")
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    with backend.open(settings(flush_interval=0.05)) as st:
        yield st


@pytest.fixture
def sqlite_store(db: Path) -> Iterator[SqliteStore]:
    with SqliteStore(db, settings(flush_interval=0.05)) as st:
        yield st


# ---- URLs and opening ----------------------------------------------------------------
def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///data/h.db") == Path("data/h.db")
    assert sqlite_path("sqlite:////var/lib/h.db") == Path("/var/lib/h.db")
    with open_store("sqlite:///data/h.db", StoreSettings()) as st:
        assert isinstance(st, SqliteStore)
        assert isinstance(st, Store)
    assert (tmp_path / "data" / "h.db").is_file()
    absolute = tmp_path / "abs.db"
    with open_store(f"sqlite:///{absolute}", StoreSettings()) as st:
        st.add_alert(alert())
        assert st.flush(10)
    assert count(absolute, "SELECT count(*) FROM alerts") == 1


def test_none_store_keeps_nothing() -> None:
    with open_store("none://", StoreSettings()) as st:
        assert isinstance(st, NullStore)
        st.add_readings(["S1"], [NOW], [1.0], [1])
        st.add_alert(alert())
        assert st.flush(0.1)
        assert st.recent_alerts() == []
        assert st.readings("S1") == []


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///:memory:", "sqlite://x/y.db", "pg://x"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(StoreError, match="store URL"):
        open_store(url, StoreSettings())


def test_schema(sqlite_store: SqliteStore, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[1]: r[2] for r in conn.execute("PRAGMA index_list(readings)")}
        assert indexes == {"readings_key": 1}  # unique: a redelivered reading is stored once
        cols = [r[2] for r in conn.execute("PRAGMA index_info(readings_key)")]
        assert cols == ["sensor_id", "ts", "seq"]
        alert_idx = {
            name: [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='alerts'"
            )
        }
        assert sorted(alert_idx.values()) == [
            ["alert_id"],  # feedback finds an alert by its id
            ["alert_ts"],
            ["sensor_id", "alert_ts"],
            ["sensor_id", "detector", "state", "reading_ts", "shadow"],
        ]
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_reopen_keeps_data_and_one_version_row(db: Path) -> None:
    with SqliteStore(db) as st:
        st.add_readings(["S1"], [NOW], [1.5], [7])
    with SqliteStore(db) as st:
        assert st.readings("S1") == [(NOW, 1.5, 7)]
    assert count(db, "SELECT count(*) FROM schema_version") == 1


def test_newer_schema_is_refused(db: Path) -> None:
    SqliteStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(db)


# ---- unwritable paths ----------------------------------------------------------------
def test_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    path = blocker / "history.db"
    with pytest.raises(StoreError) as exc:
        open_store(f"sqlite:///{path}", StoreSettings())
    msg = str(exc.value)
    assert "\n" not in msg
    assert (
        msg
        == f"cannot open history store {path}: {blocker} is not a directory (a file is in the way)"
    )


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        open_store(f"sqlite:///{tmp_path}", StoreSettings())


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not SQLite\n" * 100)
    with pytest.raises(StoreError, match="not a SQLite database") as info:
        open_store(f"sqlite:///{path}", StoreSettings())
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)  # chained, not hidden
    assert "\n" not in str(info.value)
    assert path.read_bytes().startswith(b"this is not SQLite")


def permissions_enforced(directory: Path) -> bool:
    """False when we may write through file modes anyway (root with CAP_DAC_OVERRIDE)."""
    probe = directory / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
    return False


def test_read_only_directory(tmp_path: Path) -> None:
    if not permissions_enforced(tmp_path):
        pytest.skip("file modes are not enforced for this user (root)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(StoreError, match=r"not writable|read-only"):
            open_store(f"sqlite:///{ro / 'h.db'}", StoreSettings())
    finally:
        ro.chmod(0o755)


def test_read_only_file(db: Path) -> None:
    if not permissions_enforced(db.parent):
        pytest.skip("file modes are not enforced for this user (root)")
    SqliteStore(db).close()
    for p in db.parent.glob(db.name + "*"):
        p.chmod(0o444)
    with pytest.raises(StoreError, match=r"read-only|not readable and writable"):
        open_store(f"sqlite:///{db}", StoreSettings())


# ---- writing and reading -------------------------------------------------------------
def test_batches_written_and_read_back(store: Store, backend: Backend) -> None:
    store.add_readings(["S1", "S2", "S1"], [NOW, NOW + 0.1, NOW + 1], [20.5, 30.0, 21.5], [1, 1, 2])
    n = 50
    store.add_readings(
        np.array(["S3"] * n),
        NOW + np.arange(n, dtype=np.float64),
        np.linspace(0.0, 1.0, n),
        np.arange(100, 100 + n, dtype=np.int64),
    )
    assert store.flush(10)
    assert backend.count() == 3 + n
    assert store.stats.written == 3 + n
    assert store.stats.queued == 0
    assert store.readings("S1") == [(NOW, 20.5, 1), (NOW + 1, 21.5, 2)]
    assert store.readings("S2") == [(NOW + 0.1, 30.0, 1)]
    s3 = store.readings("S3")
    assert [r[2] for r in s3] == list(range(100, 100 + n))
    assert all(isinstance(r[2], int) for r in s3)
    assert s3[-1][1] == 1.0
    # latest `limit` without start; the first `limit` from start with it; bounds inclusive
    assert [r[2] for r in store.readings("S3", limit=3)] == [147, 148, 149]
    assert [r[2] for r in store.readings("S3", start=NOW + 10, limit=3)] == [110, 111, 112]
    window = store.readings("S3", start=NOW + 10, end=NOW + 12)
    assert [r[2] for r in window] == [110, 111, 112]
    assert [r[2] for r in store.readings("S3", end=NOW + 1)] == [100, 101]
    assert store.readings("nope") == []


def test_exact_round_trip(backend: Backend) -> None:
    values = [0.1, -0.0, 1e-300, 5e-324, 1.7976931348623157e308, 123456.789012345, 2.0 / 3]
    n = len(values)
    odd_ids = ['quote"d', "back\\slash", "ünï-çødé ✓", "tab\tnew\nline", "S'1", "[1,2]", "{}"]
    seqs = [0, 1, 2**62 - 1, -1, 7, 8, 9]
    big = 1007
    with backend.open() as st:
        st.add_readings(odd_ids, [NOW + v for v in values], values, seqs)
        # numpy scalars in plain lists (sqlite3 alone would store them as BLOBs)
        st.add_readings(
            [np.str_("NP")] * 2, [np.float64(NOW)] * 2, [np.float32(0.5)] * 2, [np.int64(1)] * 2
        )
        st.add_readings(["BIG"] * big, list(np.arange(big) + NOW), [1.0] * big, list(range(big)))
        st.add_readings(["NAN"], [NOW], [math.nan], [1])  # refused by NOT NULL: dropped
        assert st.flush(10)
        for sid, v, seq in zip(odd_ids, values, seqs, strict=True):
            (row,) = st.readings(sid)
            assert row == (NOW + v, v, seq)  # (SQLite keeps -0.0 as 0.0: equal, sign lost)
        assert st.readings("NP") == [(NOW, 0.5, 1)]  # the same reading twice: stored once
        assert st.readings("BIG") == [(NOW + i, 1.0, i) for i in range(big)]
        assert st.readings("NAN") == []
        assert st.stats.dropped == 1
        assert st.stats.duplicates == 1
        assert st.stats.written == n + 1 + big


def test_flush_interval_writes_without_flush(backend: Backend) -> None:
    with backend.open(settings(flush_interval=0.05, batch_size=10_000)) as st:
        st.add_readings(["S1"] * 5, [NOW] * 5, [1.0] * 5, [1, 2, 3, 4, 5])
        wait_until(lambda: backend.count() == 5, what="the interval write")


def test_batch_size_triggers_write(backend: Backend) -> None:
    with backend.open(settings(flush_interval=3600, batch_size=100)) as st:
        st.add_readings(["S1"] * 60, [NOW] * 60, [1.0] * 60, list(range(60)))
        st.add_readings(["S1"] * 60, [NOW] * 60, [1.0] * 60, list(range(60, 120)))
        wait_until(lambda: st.stats.written == 120, what="the batch-size write")
        assert backend.count() == 120


def test_flush_semantics(backend: Backend) -> None:
    with backend.open(settings(flush_interval=3600, batch_size=1_000_000)) as st:
        assert st.flush(0.01)  # nothing queued: at once
        st.add_readings(["S1"] * 10, [NOW] * 10, [2.0] * 10, list(range(10)))
        st.add_alert(alert())
        # Neither the interval nor the batch size is reached: nothing is written by itself.
        assert st.stats.queued == 11
        assert backend.count() == 0
        assert st.flush(10)
        # Once flush returns, another connection sees everything, and it was synced.
        assert backend.count() == 10
        assert backend.count("SELECT count(*) FROM alerts") == 1
        assert backend.count("SELECT count(*) FROM schema_version WHERE flushed_at > 0") == 1
        assert st.stats.queued == 0
        assert st.stats.write_rows == 11
        assert st.flush(0.01)
        st.add_readings(["S1"], [NOW], [3.0], [10])
    # close() flushes too
    assert backend.count() == 11


def test_readings_setting_off(backend: Backend) -> None:
    with backend.open(settings(readings=False)) as st:
        st.add_readings(["S1"], [NOW], [1.0], [1])
        st.add_alert(alert())
        assert st.flush(10)
        assert st.readings("S1") == []
        assert len(st.recent_alerts()) == 1
        assert st.stats.dropped == 0


def test_mismatched_columns_rejected(store: Store) -> None:
    with pytest.raises(ValueError, match="different lengths"):
        store.add_readings(["S1", "S2"], [NOW], [1.0], [1])


# ---- alerts --------------------------------------------------------------------------
def test_alerts_round_trip_every_field(store: Store) -> None:
    full = alert(
        "S1",
        NOW,
        detector="zscore",
        severity="warning",
        value=-12.25,
        score=4.5,
        threshold=3.0,
        expected_low=18.5,
        expected_high=24.0,
        message="z=4.5 ✓ “quoted”",
    )
    sparse = alert(
        "S2",
        NOW + 1,
        detector="silence",
        state="cleared",
        value=None,
        threshold=None,
        expected_low=None,
        expected_high=None,
        reading_ts=None,
        message="",
    )
    store.add_alert(full)
    store.add_alert(sparse)
    assert store.flush(10)
    assert store.recent_alerts() == [sparse, full]  # newest first
    nan = alert("S3", NOW + 2, score=math.nan)
    store.add_alert(nan)
    assert store.flush(10)
    got = store.recent_alerts(sensor_id="S3")[0]
    assert math.isnan(got.score)
    assert got.alert_ts == nan.alert_ts


def test_recent_alerts_filters(store: Store) -> None:
    for i in range(30):
        det = "threshold" if i % 2 else "zscore"
        store.add_alert(alert(f"S{i % 3}", NOW + i, detector=det))
    assert store.flush(10)
    assert [a.alert_ts for a in store.recent_alerts(limit=3)] == [NOW + 29, NOW + 28, NOW + 27]
    s1 = store.recent_alerts(sensor_id="S1", limit=100)
    assert len(s1) == 10
    assert {a.sensor_id for a in s1} == {"S1"}
    assert len(store.recent_alerts(since=NOW + 25, limit=100)) == 5
    both = store.recent_alerts(sensor_id="S0", detector="threshold", since=NOW + 10, limit=100)
    assert [a.alert_ts for a in both] == [NOW + 27, NOW + 21, NOW + 15]


# ---- retention -----------------------------------------------------------------------
def test_retention_deletes_old_readings_in_chunks(backend: Backend) -> None:
    old, new = 100, 20
    st = backend.open(settings(retention_days=1.0), retention_interval=0.05, retention_chunk=7)
    with st:
        st.add_readings(
            ["OLD"] * old, [NOW - 2 * DAY + i for i in range(old)], [1.0] * old, list(range(old))
        )
        st.add_readings(["NEW"] * new, [NOW - 0.5 * DAY] * new, [2.0] * new, list(range(new)))
        st.add_alert(alert("OLD", NOW - 30 * DAY))
        assert st.flush(10)
        wait_until(lambda: st.stats.expired == old, what="old rows to expire")
        assert st.readings("OLD") == []
        assert len(st.readings("NEW")) == new
        assert len(st.recent_alerts()) == 1  # alerts are kept
    assert backend.count() == new


# ---- back-pressure and failures ------------------------------------------------------
def lock_writes(db: Path) -> sqlite3.Connection:
    """Another connection holding the write lock: the store cannot commit until it ends."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_full_queue_drops_readings_keeps_alerts(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=backend.logger)
    st = backend.open(settings(batch_size=10, flush_interval=0.01), max_queued_rows=1000)
    locked = backend.lock_writes()
    with st, contextlib.closing(locked):
        st.add_readings(["S1"] * 600, [NOW] * 600, [1.0] * 600, list(range(600)))
        for k in range(3):  # none of these fits any more, whatever the writer took
            st.add_readings(["S1"] * 600, [NOW] * 600, [1.0] * 600, list(range(600)))
            st.add_alert(alert(ts=NOW + k))
        assert st.stats.dropped == 1800
        assert st.stats.alerts_dropped == 0
        assert st.stats.queued == 603
        drops = [r for r in caplog.records if "readings dropped" in r.getMessage()]
        assert len(drops) == 1  # rate-limited
        assert not st.flush(0.2)  # the lock is still held
        locked.execute("ROLLBACK")
        assert st.flush(20)
        assert len(st.readings("S1")) == 600
        assert len(st.recent_alerts()) == 3
        assert st.stats.written == 600


def test_write_errors_are_counted_and_retried(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=backend.logger)
    st = backend.open(settings(batch_size=1, flush_interval=0.01), write_timeout=0.02)
    locked = backend.lock_writes()
    with st, contextlib.closing(locked):
        st.add_readings(["S1"] * 3, [NOW] * 3, [1.0] * 3, [1, 2, 3])
        st.add_alert(alert())
        wait_until(lambda: st.stats.errors >= 3, what="retried failures")
        assert backend.lock_error in (st.stats.last_error or "")
        assert sum("write failed" in r.getMessage() for r in caplog.records) == 1
        st.add_readings(["S1"], [NOW], [1.0], [4])  # the caller never sees the failure
        locked.execute("ROLLBACK")
        assert st.flush(20)
        assert [r[2] for r in st.readings("S1")] == [1, 2, 3, 4]  # each exactly once
        assert len(st.recent_alerts()) == 1


def test_disk_full_is_counted_not_raised(db: Path) -> None:
    st = SqliteStore(
        db, settings(batch_size=1000, flush_interval=0.01), pragmas={"max_page_count": 12}
    )
    n = 5000
    st.add_readings([f"SENSOR-{i}" for i in range(n)], [NOW] * n, [1.0] * n, list(range(n)))
    st.add_alert(alert())
    wait_until(lambda: st.stats.errors >= 1, what="a failed write")
    assert "full" in (st.stats.last_error or "")
    assert not st.flush(0.3)
    assert st.stats.queued == n + 1
    st.close(timeout=0.5)  # gives up and logs; does not raise
    assert count(db) == 0


def test_data_sqlite_refuses_is_dropped_batch_by_batch(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SqliteStore(db, settings(flush_interval=3600, batch_size=1_000_000)) as st:
        st.add_readings(["S1"] * 2, [NOW, NOW + 1], [1.0, 2.0], [1, 2])
        st.add_readings(["S1"] * 2, [NOW + 2, NOW + 3], [None, 4.0], [3, 4])  # type: ignore[list-item]
        st.add_readings(["S1"], [NOW + 4], [5.0], [5])
        st.add_alert(alert())
        assert st.flush(10)
        assert [r[2] for r in st.readings("S1")] == [1, 2, 5]
        assert st.stats.dropped == 2
        assert st.stats.errors >= 1
        assert len(st.recent_alerts()) == 1
    assert any("cannot store" in r.getMessage() for r in caplog.records)


# ---- concurrency ---------------------------------------------------------------------
def test_reads_do_not_wait_for_a_writer(sqlite_store: SqliteStore, db: Path) -> None:
    store = sqlite_store
    store.add_readings(["S1"] * 3, [NOW, NOW + 1, NOW + 2], [1.0, 2.0, 3.0], [1, 2, 3])
    store.add_alert(alert())
    assert store.flush(10)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO readings VALUES ('S1', 0, 0, 0)")
    try:
        started = time.monotonic()
        assert len(store.readings("S1")) == 3
        assert len(store.recent_alerts()) == 1
        assert time.monotonic() - started < 1.0
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_concurrent_reads_while_writing(backend: Backend) -> None:
    batches, size = 200, 250
    errors: list[BaseException] = []
    seen: dict[int, list[int]] = {}
    done = threading.Event()

    def reader(k: int) -> None:
        counts = seen.setdefault(k, [])
        try:
            while not done.is_set():
                counts.append(len(st.readings("S1", limit=1_000_000)))
                st.recent_alerts(limit=5)
        except BaseException as exc:
            errors.append(exc)

    with backend.open(settings(batch_size=500, flush_interval=0.01)) as st:
        threads = [threading.Thread(target=reader, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for b in range(batches):
            seqs = list(range(b * size, (b + 1) * size))
            st.add_readings(["S1"] * size, [NOW + s for s in seqs], [0.5] * size, seqs)
            if b % 20 == 0:
                st.add_alert(alert(ts=NOW + b))
        assert st.flush(30)
        wait_until(lambda: all(seen.get(k) and seen[k][-1] == batches * size for k in range(3)))
        done.set()
        for t in threads:
            t.join(10)
    assert not errors
    for counts in seen.values():
        assert counts == sorted(counts)  # every read saw a committed prefix, never less
        assert counts[-1] == batches * size
    assert sum(len(c) for c in seen.values()) > 3


# ---- PostgreSQL's own ----------------------------------------------------------------
@pytest.fixture
def pg(backend: Backend) -> PostgresBackend:
    if not isinstance(backend, PostgresBackend):
        pytest.skip("PostgreSQL only")
    return backend


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_schema_and_open_store(pg: PostgresBackend) -> None:
    with open_store(pg.url, StoreSettings()) as st:
        assert isinstance(st, PostgresStore)
    with open_store(pg.url, StoreSettings()) as st:  # reopening keeps one version row
        pass
    assert pg.count("SELECT count(*) FROM schema_version") == 1
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
    assert pg.count(tables) == 4  # schema_version, readings, alerts, feedback
    indexes = (
        "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname IN "
        "('readings_key', 'readings_ts_brin', 'alerts_ts', 'alerts_sensor_ts', "
        "'alerts_key_shadow')"
    )
    assert pg.count(indexes) == 5


def test_postgres_unreachable_is_one_clear_error() -> None:
    port = 1  # nothing listens there
    with pytest.raises(StoreError, match=r"cannot open history store postgresql://.*:1/") as info:
        open_store(f"postgresql://postgres@127.0.0.1:{port}/x?connect_timeout=2", StoreSettings())
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_connection_loss_is_retried(
    pg: PostgresBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=pg.logger)
    with pg.open(settings(batch_size=1, flush_interval=0.01)) as st:
        st.add_readings(["S1"], [NOW], [1.0], [1])
        assert st.flush(10)
        assert st.readings("S1") == [(NOW, 1.0, 1)]  # a pooled reader connection now
        killed = pg.count(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'mqtt-anomaly' AND pid <> pg_backend_pid()"
        )
        assert killed >= 2  # the writer and the reader
        st.add_readings(["S1"], [NOW + 1], [2.0], [2])
        st.add_alert(alert())
        assert st.flush(20)
        assert st.stats.errors >= 1
        assert [r[2] for r in st.readings("S1")] == [1, 2]
        assert len(st.recent_alerts()) == 1


# ---- delivery tracking: idempotent writes, tickets, migration ---------------------------
def test_redelivered_readings_and_alerts_are_stored_once(backend: Backend) -> None:
    with backend.open(settings(flush_interval=0.05)) as st:
        ids, ts, values, seqs = ["S1"] * 3, [NOW, NOW + 1, NOW + 2], [1.0, 2.0, 3.0], [1, 2, 3]
        st.add_readings(ids, ts, values, seqs)
        st.add_alert(alert(reading_ts=NOW + 1))
        assert st.flush(10)
        # the broker sends the last two again (and a new one), the alert is raised again
        st.add_readings(["S1"] * 3, [NOW + 1, NOW + 2, NOW + 3], [2.0, 3.0, 4.0], [2, 3, 4])
        st.add_alert(alert(reading_ts=NOW + 1, alert_ts=NOW + 60))
        st.add_alert(alert(reading_ts=NOW + 3))  # another reading's alert is kept
        # a counter restart: the same seq at another time is another reading
        st.add_readings(["S1"], [NOW + 4], [5.0], [1])
        assert st.flush(10)
        assert backend.count() == 5
        assert backend.count("SELECT count(*) FROM alerts") == 2
        assert st.stats.written == 5
        assert st.stats.duplicates == 2


def test_mark_and_wait_confirmed(backend: Backend) -> None:
    from mqtt_anomaly.sinks.base import DurableSink

    # neither the interval nor the batch size would write: mark() asks for a commit
    with backend.open(settings(flush_interval=3600, batch_size=1_000_000)) as st:
        assert isinstance(st, DurableSink)
        assert st.wait_confirmed(st.mark(), 0.01)  # nothing given: confirmed at once
        st.add_readings(["S1"] * 10, [NOW + i for i in range(10)], [1.0] * 10, list(range(10)))
        st.add_alert(alert())
        assert st.backlog == 11
        assert not st.wait_confirmed(2, 0.2)  # not marked: nothing is written yet
        assert backend.count() == 0
        ticket = st.mark()
        assert ticket == 2
        assert st.wait_confirmed(ticket, 10)
        assert backend.count() == 10
        assert backend.count("SELECT count(*) FROM alerts") == 1
        assert st.backlog == 0
        assert st.backlog_limit > 0


def test_version_1_database_is_upgraded(db: Path) -> None:
    with sqlite3.connect(db) as conn:  # a version 1 file holding duplicates
        conn.executescript(
            """
            CREATE TABLE schema_version (version INTEGER NOT NULL, created_at REAL NOT NULL,
                                         flushed_at REAL);
            INSERT INTO schema_version VALUES (1, 0, NULL);
            CREATE TABLE readings (sensor_id TEXT NOT NULL, ts REAL NOT NULL,
                                   value REAL NOT NULL, seq INTEGER NOT NULL);
            CREATE INDEX readings_sensor_ts ON readings (sensor_id, ts);
            INSERT INTO readings VALUES ('S1', 1, 1.0, 1), ('S1', 1, 1.0, 1), ('S1', 2, 2.0, 2);
            CREATE TABLE alerts (id INTEGER PRIMARY KEY, sensor_id TEXT NOT NULL,
                detector TEXT NOT NULL, severity TEXT NOT NULL, state TEXT NOT NULL, value REAL,
                score REAL, threshold REAL, expected_low REAL, expected_high REAL,
                reading_ts REAL, alert_ts REAL NOT NULL, message TEXT NOT NULL);
            INSERT INTO alerts (sensor_id, detector, severity, state, reading_ts, alert_ts,
                                message)
                VALUES ('S1', 'threshold', 'critical', 'raised', 1, 5, ''),
                       ('S1', 'threshold', 'critical', 'raised', 1, 6, ''),
                       ('S1', 'silence', 'warning', 'raised', NULL, 7, ''),
                       ('S1', 'silence', 'warning', 'raised', NULL, 8, '');
            """
        )
    conn.close()
    with SqliteStore(db) as st:
        st.add_readings(["S1"], [1.0], [1.0], [1])
        assert st.flush(10)
    assert count(db) == 2
    assert count(db, "SELECT count(*) FROM alerts") == 3  # NULL reading_ts: not duplicates
    assert count(db, "SELECT max(version) FROM schema_version") == SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert "readings_key" in names
    assert "readings_sensor_ts" not in names


# ---- schema version 4: why an alert was suppressed -------------------------------------
def test_suppressed_alerts_keep_their_reason(backend: Backend) -> None:
    with backend.open(settings(flush_interval=0.05)) as st:
        st.add_alert(alert("S1", ts=NOW, suppressed="maintenance: press 1 relining"))
        st.add_alert(alert("S2", ts=NOW + 1))
        assert st.flush(10)
        got = {a.sensor_id: a.suppressed for a in st.recent_alerts(limit=10)}
    assert got == {"S1": "maintenance: press 1 relining", "S2": ""}
    assert backend.count("SELECT count(*) FROM alerts WHERE suppressed IS NULL") == 1
    assert backend.count("SELECT max(version) FROM schema_version") == SCHEMA_VERSION == 6


# ---- schema version 6: the alerts of a shadow candidate -------------------------------
def test_shadow_alerts_are_kept_apart_from_the_live_ones(backend: Backend) -> None:
    live = alert("S1", ts=NOW, id="S1:threshold:raised:7@1.0")
    shadow = msgspec.structs.replace(live, shadow="candidate-2")  # the same reading
    with backend.open(settings(flush_interval=0.05)) as st:
        st.add_alert(live)
        st.add_alert(shadow)
        st.add_alert(shadow)  # a repeat (a journal replayed): one row
        assert st.flush(10)
        assert st.recent_alerts(limit=10) == [live]
        assert st.recent_alerts(limit=10, shadow=True) == [shadow]
        assert [n for *_, n in st.alert_counts()] == [1]  # the live configuration's only
        assert st.alert_by_id(live.id) == live  # feedback finds the live alert, one id for both
    assert backend.count("SELECT count(*) FROM alerts") == 2
    assert backend.count("SELECT count(*) FROM alerts WHERE shadow = 'candidate-2'") == 1


def _as_version_2(backend: Backend) -> None:
    """Turn the store's tables back into those of schema version 2."""
    drop = "ALTER TABLE alerts DROP COLUMN suppressed"
    back = "UPDATE schema_version SET version = 2"
    if isinstance(backend, SqliteBackend):
        with sqlite3.connect(backend.db) as conn:
            conn.execute(drop)
            conn.execute(back)
        conn.close()
    else:
        assert isinstance(backend, PostgresBackend)
        with psycopg.connect(backend.url, autocommit=True) as conn:
            conn.execute(drop.encode())
            conn.execute(back.encode())


def test_version_2_store_is_upgraded_in_place(backend: Backend) -> None:
    with backend.open(settings(flush_interval=0.05)) as st:
        st.add_alert(alert("S1", ts=NOW))
        assert st.flush(10)
    _as_version_2(backend)
    with backend.open(settings(flush_interval=0.05)) as st:
        st.add_alert(alert("S2", ts=NOW + 1, suppressed="gate: press-1 off"))
        assert st.flush(10)
        got = {a.sensor_id: a.suppressed for a in st.recent_alerts(limit=10)}
    assert got == {"S1": "", "S2": "gate: press-1 off"}
    assert backend.count("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
    assert backend.count("SELECT count(*) FROM schema_version") == 1


def test_a_step_missing_at_the_current_version_is_still_applied(backend: Backend) -> None:
    """Steps compose in any merge order: a store recorded at version 4 that lacks a step's
    column (one written on another line of development) gets it on the next open."""
    with backend.open(settings(flush_interval=0.05)) as st:
        assert st.flush(10)
    _as_version_2(backend)
    if isinstance(backend, SqliteBackend):
        with sqlite3.connect(backend.db) as conn:
            conn.execute("UPDATE schema_version SET version = 4")
        conn.close()
    else:
        assert isinstance(backend, PostgresBackend)
        with psycopg.connect(backend.url, autocommit=True) as conn:
            conn.execute(b"UPDATE schema_version SET version = 4")
    with backend.open(settings(flush_interval=0.05)) as st:
        st.add_alert(alert("S3", ts=NOW, suppressed="maintenance: x"))
        assert st.flush(10)
        assert [a.suppressed for a in st.recent_alerts(limit=10)] == ["maintenance: x"]


def test_asset_alerts_keep_asset_and_contributions(store: Store) -> None:
    shares = {"PUMP-01/flow": 0.625, "PUMP-01/discharge_pressure": 0.25, "PUMP-01/voltage": 0.125}
    asset = alert("PUMP-01", NOW, detector="asset", asset_id="PUMP-01", contributions=shares)
    plain = alert("S9", NOW + 1)
    store.add_alert(asset)
    store.add_alert(plain)
    assert store.flush(10)
    assert store.recent_alerts() == [plain, asset]
    got = store.recent_alerts(sensor_id="PUMP-01")[0]
    assert got.asset_id == "PUMP-01" and got.contributions == shares
    assert plain.asset_id == "" and plain.contributions is None


def version_2_file(db: Path) -> None:
    """A version 2 SQLite file (no asset columns) holding one alert."""
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE schema_version (version INTEGER NOT NULL, created_at REAL NOT NULL,
                                         flushed_at REAL);
            INSERT INTO schema_version VALUES (2, 0, NULL);
            CREATE TABLE readings (sensor_id TEXT NOT NULL, ts REAL NOT NULL,
                                   value REAL NOT NULL, seq INTEGER NOT NULL);
            CREATE TABLE alerts (id INTEGER PRIMARY KEY, sensor_id TEXT NOT NULL,
                detector TEXT NOT NULL, severity TEXT NOT NULL, state TEXT NOT NULL, value REAL,
                score REAL, threshold REAL, expected_low REAL, expected_high REAL,
                reading_ts REAL, alert_ts REAL NOT NULL, message TEXT NOT NULL);
            INSERT INTO alerts (sensor_id, detector, severity, state, reading_ts, alert_ts,
                                message, score)
                VALUES ('S1', 'threshold', 'critical', 'raised', 1, 5, 'old', 1.0);
            """
        )
    conn.close()


def test_version_2_database_gains_the_asset_columns(db: Path) -> None:
    version_2_file(db)
    with SqliteStore(db) as st:
        (old,) = st.recent_alerts()
        assert old.message == "old" and old.asset_id == "" and old.contributions is None
        st.add_alert(alert("P1", NOW, asset_id="P1", contributions={"P1/a": 1.0}))
        assert st.flush(10)
        assert st.recent_alerts(sensor_id="P1")[0].contributions == {"P1/a": 1.0}
    assert count(db, "SELECT max(version) FROM schema_version") == SCHEMA_VERSION == 6
    with SqliteStore(db):  # opening again changes nothing
        pass
    assert count(db, "SELECT count(*) FROM alerts") == 2


def test_migration_steps_are_idempotent(db: Path) -> None:
    from mqtt_anomaly.store.migrations import create_steps, postgres_steps, sqlite_steps

    version_2_file(db)
    with sqlite3.connect(db) as conn:
        # the asset_id column is already there (a crash after the first step, say)
        conn.execute("ALTER TABLE alerts ADD COLUMN asset_id TEXT NOT NULL DEFAULT ''")

        def existing() -> dict[str, set[str]]:
            return {
                table: {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                for table in ("readings", "alerts")
            }

        todo = sqlite_steps(existing())
        assert todo == [
            "ALTER TABLE alerts ADD COLUMN contributions TEXT",
            "ALTER TABLE alerts ADD COLUMN suppressed TEXT",
            "ALTER TABLE alerts ADD COLUMN alert_id TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE alerts ADD COLUMN shadow TEXT NOT NULL DEFAULT ''",
        ]
        for statement in todo:
            conn.execute(statement)
        assert sqlite_steps(existing()) == []
        creates = create_steps("sqlite")  # always given: idempotent as they stand
        assert "DROP INDEX IF EXISTS alerts_key" in creates
        for _ in range(2):
            for statement in creates:
                conn.execute(statement)
    conn.close()
    pg_steps = postgres_steps()
    assert all("ADD COLUMN IF NOT EXISTS" in s for s in pg_steps) and len(pg_steps) == 5


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_version_2_schema_is_upgraded(pg: PostgresBackend) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(
            b"CREATE TABLE schema_version (version integer NOT NULL, "
            b"created_at double precision NOT NULL, flushed_at double precision)"
        )
        conn.execute(b"INSERT INTO schema_version VALUES (2, 0, NULL)")
        conn.execute(
            b"CREATE TABLE alerts (id bigserial PRIMARY KEY, sensor_id text NOT NULL, "
            b"detector text NOT NULL, severity text NOT NULL, state text NOT NULL, "
            b"value double precision, score double precision, threshold double precision, "
            b"expected_low double precision, expected_high double precision, "
            b"reading_ts double precision, alert_ts double precision NOT NULL, "
            b"message text NOT NULL)"
        )
        conn.execute(
            b"INSERT INTO alerts (sensor_id, detector, severity, state, reading_ts, alert_ts, "
            b"message, score) VALUES ('S1', 'threshold', 'critical', 'raised', 1, 5, 'old', 1)"
        )
    with pg.open(settings(flush_interval=0.05)) as st:
        assert st.recent_alerts()[0].asset_id == ""
        st.add_alert(alert("P1", NOW, asset_id="P1", contributions={"P1/a": 1.0}))
        assert st.flush(10)
        assert st.recent_alerts(sensor_id="P1")[0].contributions == {"P1/a": 1.0}
    assert pg.count("SELECT max(version) FROM schema_version") == SCHEMA_VERSION


def test_migrations_doctest() -> None:
    import doctest

    from mqtt_anomaly.store import migrations

    result = doctest.testmod(migrations)
    assert result.attempted > 0 and result.failed == 0

"""Schema changes after version 2, for both backends: one ordered list keyed by version.

Each step only adds (a column, for now), and every step is applied **idempotently on every
open** — a column that is already there is left alone — so steps written on separate lines of
development compose in any order: a database that got version 4 before version 3 existed
still gets version 3's columns when it is opened by a program that has both. The recorded
version is the highest step's (:data:`SCHEMA_VERSION`); a program finding a higher one in the
database refuses to open it.

Version 1 → 2 (unique keys, duplicates removed) is not additive and stays in each backend.

A step may also run a statement that is idempotent as it stands (:class:`Create`: ``CREATE …
IF NOT EXISTS``, ``DROP INDEX IF EXISTS``), run after the columns of every step are in place:
version 6 puts ``shadow`` in the alerts' unique key, so a shadow alert and the live alert of the
same reading are both kept.

>>> [version for version, _ in MIGRATIONS]
[3, 4, 5, 6]
>>> ADDED_COLUMNS["alerts"]
('asset_id', 'contributions', 'suppressed', 'alert_id', 'shadow')
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AddColumn",
    "Create",
    "create_steps",
    "postgres_steps",
    "sqlite_steps",
]


class AddColumn(NamedTuple):
    table: str
    column: str
    sqlite_type: str
    postgres_type: str


class Create(NamedTuple):
    """A statement idempotent as it stands (``CREATE TABLE IF NOT EXISTS``, ``CREATE INDEX IF
    NOT EXISTS``, ``DROP INDEX IF EXISTS``), for each backend."""

    sqlite: str
    postgres: str


MIGRATIONS: Final[tuple[tuple[int, tuple[AddColumn | Create, ...]], ...]] = (
    # 3: asset alerts: the asset and the contributing sensors' shares (a JSON object)
    (
        3,
        (
            AddColumn("alerts", "asset_id", "TEXT NOT NULL DEFAULT ''", "text NOT NULL DEFAULT ''"),
            AddColumn("alerts", "contributions", "TEXT", "text"),
        ),
    ),
    # 4: why an alert was suppressed (maintenance window, operating-state gate); NULL: it was not
    (4, (AddColumn("alerts", "suppressed", "TEXT", "text"),)),
    # 5: operator feedback on alerts (store/feedback.py): the alert's own id, and the verdicts
    (
        5,
        (
            AddColumn("alerts", "alert_id", "TEXT NOT NULL DEFAULT ''", "text NOT NULL DEFAULT ''"),
            Create(
                "CREATE INDEX IF NOT EXISTS alerts_alert_id ON alerts (alert_id)",
                "CREATE INDEX IF NOT EXISTS alerts_alert_id ON alerts (alert_id)",
            ),
            Create(
                "CREATE TABLE IF NOT EXISTS feedback (alert_id TEXT PRIMARY KEY, "
                "sensor_id TEXT NOT NULL, detector TEXT NOT NULL, reading_ts REAL, "
                "alert_ts REAL NOT NULL, verdict TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', "
                "at REAL NOT NULL)",
                "CREATE TABLE IF NOT EXISTS feedback (alert_id text PRIMARY KEY, "
                "sensor_id text NOT NULL, detector text NOT NULL, reading_ts double precision, "
                "alert_ts double precision NOT NULL, verdict text NOT NULL, "
                "note text NOT NULL DEFAULT '', at double precision NOT NULL)",
            ),
        ),
    ),
    # 6: the alerts of a shadow candidate ([shadow]): its label; '' for the live configuration.
    # The unique key of alerts gains the label (a live and a shadow alert of one reading are two
    # rows); the key of version 2 goes.
    (
        6,
        (
            AddColumn("alerts", "shadow", "TEXT NOT NULL DEFAULT ''", "text NOT NULL DEFAULT ''"),
            Create("DROP INDEX IF EXISTS alerts_key", "DROP INDEX IF EXISTS alerts_key"),
            Create(
                "CREATE UNIQUE INDEX IF NOT EXISTS alerts_key_shadow "
                "ON alerts (sensor_id, detector, state, reading_ts, shadow)",
                "CREATE UNIQUE INDEX IF NOT EXISTS alerts_key_shadow "
                "ON alerts (sensor_id, detector, state, reading_ts, shadow)",
            ),
        ),
    ),
)
SCHEMA_VERSION: Final = max([2, *(version for version, _ in MIGRATIONS)])
ADDED_COLUMNS: Final = {
    table: tuple(
        c.column
        for _, steps in MIGRATIONS
        for c in steps
        if isinstance(c, AddColumn) and c.table == table
    )
    for table in {c.table for _, steps in MIGRATIONS for c in steps if isinstance(c, AddColumn)}
}
"""Per table, the columns the steps add, in order (they follow the version 2 columns)."""


def sqlite_steps(existing: dict[str, set[str]]) -> list[str]:
    """The ``ALTER TABLE`` statements still needed, given each table's existing columns
    (SQLite has no ``ADD COLUMN IF NOT EXISTS``)."""
    return [
        f"ALTER TABLE {c.table} ADD COLUMN {c.column} {c.sqlite_type}"
        for _, steps in MIGRATIONS
        for c in steps
        if isinstance(c, AddColumn) and c.column not in existing.get(c.table, set())
    ]


def postgres_steps() -> list[str]:
    """Every step as ``ALTER TABLE … ADD COLUMN IF NOT EXISTS`` (idempotent as it stands)."""
    return [
        f"ALTER TABLE {c.table} ADD COLUMN IF NOT EXISTS {c.column} {c.postgres_type}"
        for _, steps in MIGRATIONS
        for c in steps
        if isinstance(c, AddColumn)
    ]


def create_steps(backend: str) -> list[str]:
    """The steps' statements that are idempotent as they stand (:class:`Create`), for
    ``"sqlite"`` or ``"postgres"``, in order, run after the columns are in place."""
    return [getattr(c, backend) for _, steps in MIGRATIONS for c in steps if isinstance(c, Create)]

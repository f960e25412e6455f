"""Schema changes after version 2, for both backends: one ordered list keyed by version.

Each step only adds (a column, for now), and every step is applied **idempotently on every
open** — a column that is already there is left alone — so steps written on separate lines of
development compose in any order: a database that got version 4 before version 3 existed
still gets version 3's columns when it is opened by a program that has both. The recorded
version is the highest step's (:data:`SCHEMA_VERSION`); a program finding a higher one in the
database refuses to open it.

Version 1 → 2 (unique keys, duplicates removed) is not additive and stays in each backend.

>>> [version for version, _ in MIGRATIONS]
[3, 4]
>>> ADDED_COLUMNS["alerts"]
('asset_id', 'contributions', 'suppressed')
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "AddColumn", "postgres_steps", "sqlite_steps"]


class AddColumn(NamedTuple):
    table: str
    column: str
    sqlite_type: str
    postgres_type: str


MIGRATIONS: Final[tuple[tuple[int, tuple[AddColumn, ...]], ...]] = (
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
)
SCHEMA_VERSION: Final = max([2, *(version for version, _ in MIGRATIONS)])
ADDED_COLUMNS: Final = {
    table: tuple(c.column for _, steps in MIGRATIONS for c in steps if c.table == table)
    for table in {c.table for _, steps in MIGRATIONS for c in steps}
}
"""Per table, the columns the steps add, in order (they follow the version 2 columns)."""


def sqlite_steps(existing: dict[str, set[str]]) -> list[str]:
    """The ``ALTER TABLE`` statements still needed, given each table's existing columns
    (SQLite has no ``ADD COLUMN IF NOT EXISTS``)."""
    return [
        f"ALTER TABLE {c.table} ADD COLUMN {c.column} {c.sqlite_type}"
        for _, steps in MIGRATIONS
        for c in steps
        if c.column not in existing.get(c.table, set())
    ]


def postgres_steps() -> list[str]:
    """Every step as ``ALTER TABLE … ADD COLUMN IF NOT EXISTS`` (idempotent as it stands)."""
    return [
        f"ALTER TABLE {c.table} ADD COLUMN IF NOT EXISTS {c.column} {c.postgres_type}"
        for _, steps in MIGRATIONS
        for c in steps
    ]

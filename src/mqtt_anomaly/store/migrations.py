"""Schema migrations of the history store, one ordered list for both backends.

:data:`MIGRATIONS` maps a schema version to the steps that bring a store from the version
before it to that one; :data:`SCHEMA_VERSION` is the highest. A store opened at version ``v``
runs the steps of every version above ``v`` in order, inside the transaction that creates
the schema, then records the new version. A new store creates the tables of version 2 and runs
the steps of every later version.

Every step is idempotent, so a step that ran before a crash (or a branch of the schema that
already added a column) runs again harmlessly:

- :class:`AddColumn` adds a column when the table lacks it (SQLite: checked in
  ``PRAGMA table_info``; PostgreSQL: ``ADD COLUMN IF NOT EXISTS``);
- :class:`Sql` runs one statement per backend, written to be repeatable.

>>> [v for v in sorted(MIGRATIONS)]
[2, 3]
>>> [s.column for s in MIGRATIONS[3]]
['asset_id', 'contributions']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class AddColumn:
    """``ALTER TABLE table ADD COLUMN column`` (its type per backend), when it is missing."""

    table: str
    column: str
    sqlite: str
    postgres: str

    def statements(self, dialect: str, columns: Callable[[str], set[str]]) -> Iterator[str]:
        if dialect == "postgres":
            yield (
                f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS {self.column} {self.postgres}"
            )
        elif self.column not in columns(self.table):
            yield f"ALTER TABLE {self.table} ADD COLUMN {self.column} {self.sqlite}"


@dataclass(frozen=True, slots=True)
class Sql:
    """One repeatable statement per backend."""

    sqlite: str
    postgres: str

    def statements(self, dialect: str, columns: Callable[[str], set[str]]) -> Iterator[str]:
        yield self.postgres if dialect == "postgres" else self.sqlite


Step = AddColumn | Sql

MIGRATIONS: Final[dict[int, tuple[Step, ...]]] = {
    # 1 → 2: unique keys; keep the first copy of each row (the indexes come with the schema)
    2: (
        Sql(
            "DELETE FROM readings WHERE rowid NOT IN "
            "(SELECT min(rowid) FROM readings GROUP BY sensor_id, ts, seq)",
            "DELETE FROM readings r USING readings d WHERE r.sensor_id = d.sensor_id "
            "AND r.ts = d.ts AND r.seq = d.seq AND r.ctid > d.ctid",
        ),
        Sql(
            "DELETE FROM alerts WHERE reading_ts IS NOT NULL AND id NOT IN "
            "(SELECT min(id) FROM alerts GROUP BY sensor_id, detector, state, reading_ts)",
            "DELETE FROM alerts a USING alerts d WHERE a.sensor_id = d.sensor_id "
            "AND a.detector = d.detector AND a.state = d.state "
            "AND a.reading_ts = d.reading_ts AND a.id > d.id",
        ),
        Sql("DROP INDEX IF EXISTS readings_sensor_ts", "DROP INDEX IF EXISTS readings_sensor_ts"),
    ),
    # 2 → 3: asset alerts: the asset and the contributing sensors' shares (JSON object)
    3: (
        AddColumn("alerts", "asset_id", "TEXT NOT NULL DEFAULT ''", "text NOT NULL DEFAULT ''"),
        AddColumn("alerts", "contributions", "TEXT", "text"),
    ),
}
SCHEMA_VERSION: Final = max(MIGRATIONS)
BASE_VERSION: Final = 2
"""The version whose tables the backends' ``CREATE TABLE`` statements describe."""


def pending(version: int | None) -> list[tuple[int, Step]]:
    """The steps a store at ``version`` (None: a new store, created at
    :data:`BASE_VERSION`) runs, in order."""
    start = BASE_VERSION if version is None else version
    return [(v, step) for v in sorted(MIGRATIONS) if v > start for step in MIGRATIONS[v]]


def statements(
    dialect: str, version: int | None, columns: Callable[[str], set[str]]
) -> Iterator[str]:
    """The SQL that brings a store at ``version`` to :data:`SCHEMA_VERSION` (``dialect``:
    ``"sqlite"`` or ``"postgres"``; ``columns(table)`` the columns a table has now)."""
    for _, step in pending(version):
        yield from step.statements(dialect, columns)

"""History of readings and alerts.

:func:`open_store` turns the ``store.url`` setting into a :class:`~.base.Store`:

- ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db``: a SQLite file
  (:class:`~.sqlite.SqliteStore`), created with its schema when missing;
- ``postgresql://user@host:port/dbname`` (or ``postgres://``): a PostgreSQL database
  (:class:`~.postgres.PostgresStore`), its schema created when missing;
- ``none://``: keep nothing (:class:`~.base.NullStore`).

The package: :mod:`.base` (the :class:`~.base.Store` protocol, counters, the null store),
:mod:`.queued` (the front-end both SQL backends share: a
:class:`~mqtt_anomaly.writebehind.WriteBehind` queue and the error policy of the writer),
:mod:`.queries` (the SQL reads), :mod:`.rows` (row ↔ alert mapping), and the backends
:mod:`.sqlite` and :mod:`.postgres` (connect, schema, commit, retention, and the one place
their driver's errors become :class:`~mqtt_anomaly.errors.StoreError`).

>>> with open_store("none://", StoreSettings()) as st:
...     st.recent_alerts()
[]
"""

from __future__ import annotations

from pathlib import Path

from ..config import StoreSettings
from ..errors import StoreError
from .base import NullStore, Store, StoreStats

__all__ = ["NullStore", "Store", "StoreStats", "open_store", "sqlite_path"]

_SQLITE = "sqlite:///"


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:///`` URL names (three slashes: relative, four: absolute)."""
    if not url.startswith(_SQLITE):
        raise StoreError(f"store URL {url!r}: expected sqlite:///PATH or sqlite:////ABSOLUTE/PATH")
    raw = url[len(_SQLITE) :]
    if not raw or raw.endswith("/"):
        raise StoreError(f"store URL {url!r}: no file name")
    if raw == ":memory:" or raw.startswith("file:"):
        raise StoreError(f"store URL {url!r}: only a file path is supported (or none://)")
    return Path(raw).expanduser()


def open_store(url: str, settings: StoreSettings) -> Store:
    """Open the store ``url`` names; raises :class:`StoreError` when it cannot be opened."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "none":
        return NullStore()
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(sqlite_path(url), settings)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, settings)
    raise StoreError(f"store URL {url!r}: scheme must be sqlite://, postgresql:// or none://")

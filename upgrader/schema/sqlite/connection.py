"""SQLite schema changes: the connection an application uses to see one release.

:func:`connect` returns a :class:`ReleaseConnection`: a ``sqlite3.Connection`` whose TEMP
views and triggers are those of one release, rebuilt when a start, complete or rollback
changed the database's schema.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ... import db
from ...errors import SchemaError
from .catalog import BUSY_TIMEOUT_MS, VIEWS_TABLE, quote, sqlite_path

T = TypeVar("T")


class ReleaseConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` whose TEMP views and triggers are those of one release.

    Before each statement it compares the database's schema version with the one its temp
    objects were built for, and rebuilds them when a start, complete or rollback changed
    it; a statement that still met stale objects (the change committed in between) fails
    before doing anything and is run once more after the rebuild."""

    upgrader_release: str
    _built_version: int | None
    _temp_views: list[str]

    def _setup(self, release: str) -> None:
        self.upgrader_release = release
        self._built_version = None
        self._temp_views = []
        self._rebuild()

    def _schema_version(self) -> int:
        return int(super().execute("PRAGMA main.schema_version").fetchone()[0])

    def _rebuild(self) -> None:
        own = not self.in_transaction
        if own:
            super().execute("BEGIN")
        try:
            version = self._schema_version()
            for view in self._temp_views:
                super().execute(f"DROP VIEW IF EXISTS temp.{quote(view)}")
            self._temp_views = []
            has_state = super().execute(
                "SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND name = ?",
                (VIEWS_TABLE,)).fetchone()[0]
            rows = super().execute(
                f'SELECT "view", "statements" FROM main."{VIEWS_TABLE}" WHERE "release" = ?',
                (self.upgrader_release,)).fetchall() if has_state else []
            if not rows and has_state:
                live = [r[0] for r in super().execute(
                    f'SELECT DISTINCT "release" FROM main."{VIEWS_TABLE}"')]
                if live:
                    raise SchemaError(f"release {self.upgrader_release!r} is not live on this "
                                      f"database (live: {', '.join(live)})",
                                      database=None)
            for view, statements in rows:
                for sql in json.loads(statements):
                    super().execute(sql)
                self._temp_views.append(view)
            self._built_version = version
        except BaseException:
            if own:
                super().execute("ROLLBACK")
            raise
        if own:
            super().execute("COMMIT")

    def _fresh(self) -> None:
        if self._schema_version() != self._built_version:
            self._rebuild()

    def _retry(self, call: Callable[..., T], *args: Any) -> T:
        self._fresh()
        try:
            return call(*args)
        except sqlite3.OperationalError:
            if self._schema_version() == self._built_version:
                raise
            self._rebuild()
            return call(*args)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self._retry(super().execute, sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        return self._retry(super().executemany, sql, parameters)

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        self._fresh()
        return super().executescript(script)

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory or _ReleaseCursor)


class _ReleaseCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        conn: ReleaseConnection = self.connection  # type: ignore[assignment]
        return conn._retry(super().execute, sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:  # type: ignore[override]
        conn: ReleaseConnection = self.connection  # type: ignore[assignment]
        return conn._retry(super().executemany, sql, parameters)


def connect(path: str | Path, release: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS,
            **kwargs: Any) -> ReleaseConnection:
    """A connection to the SQLite file ``path`` that sees release ``release``'s tables.

    Before the first migration of a database there are no views and the connection sees
    the tables as they are. A release that is not live (rolled back, or retired by a
    complete) raises :class:`~upgrader.errors.SchemaError`. Other keyword arguments go to
    :func:`sqlite3.connect`."""
    kwargs.setdefault("isolation_level", "")     # sqlite3's own default: deferred
    kwargs.pop("timeout", None)                   # busy_timeout_ms decides, as it always did
    conn = db.connect_sqlite(db.SQLiteTarget(sqlite_path(path), str(path)), error=SchemaError,
                             what="the SQLite database", busy_timeout=busy_timeout_ms / 1000,
                             factory=ReleaseConnection, **kwargs)
    if not isinstance(conn, ReleaseConnection):
        conn.close()
        raise TypeError("factory must stay ReleaseConnection")
    try:
        conn._setup(release)
    except BaseException:
        conn.close()
        raise
    return conn

"""Live schema changes: a view per release, expand/contract, on SQLite and PostgreSQL.

    from upgrader.schema import load_migration, open_backend, connect

    migration = load_migration("migrations/0002_split_name.toml")
    with open_backend("postgresql://app@db/app") as db:    # or a SQLite file path
        db.start(migration)
    conn = connect("app.sqlite", "v2")   # SQLite: a connection that sees release v2's views

See docs/SCHEMA.md.
"""

from __future__ import annotations

import os
from typing import Any

from .. import db
from ..db import is_postgres_url
from .model import BackfillResult, LiveRelease, Migration, SchemaBackend, SchemaStatus

__all__ = [
    "BackfillResult",
    "LiveRelease",
    "Migration",
    "SchemaBackend",
    "SchemaStatus",
    "connect",
    "is_postgres_url",
    "load_migration",
    "open_backend",
]


def open_backend(url: str | os.PathLike[str], *, create: bool = True) -> SchemaBackend:
    """The :class:`SchemaBackend` of a database: a ``postgresql://`` URL, a SQLite file path
    or ``sqlite:///path`` (``create=False``: ConfigError when the SQLite file does not
    exist). A context manager; ``close()`` when done."""
    target = db.parse_target(url)
    if isinstance(target, db.PostgresTarget):
        from .postgres import PostgresBackend

        return PostgresBackend(target.url)
    from .sqlite import SQLiteBackend

    return SQLiteBackend(target.spec, create=create)


def load_migration(path: Any) -> Migration:
    from .loader import load_migration as _load

    return _load(path)


def connect(path: Any, release: str, **kwargs: Any) -> Any:
    """A ``sqlite3.Connection`` to ``path`` that sees release ``release``'s views."""
    from .sqlite import connect as _connect

    return _connect(path, release, **kwargs)

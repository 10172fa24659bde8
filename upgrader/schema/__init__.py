"""Live schema changes: a view per release, expand/contract, on SQLite and PostgreSQL.

    from upgrader.schema import load_migration, open_backend, connect

    migration = load_migration("migrations/0002_split_name.toml")
    with open_backend("postgresql://app@db/app") as db:    # or a SQLite file path
        db.start(migration)
    conn = connect("app.sqlite", "v2")   # SQLite: a connection that sees release v2's views

See docs/SCHEMA.md.
"""

from __future__ import annotations

from typing import Any

from .model import LiveRelease, Migration, SchemaBackend, SchemaStatus

__all__ = [
    "LiveRelease",
    "Migration",
    "SchemaBackend",
    "SchemaStatus",
    "connect",
    "is_postgres_url",
    "load_migration",
    "open_backend",
]


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_backend(url: str) -> Any:
    """A :class:`SchemaBackend` for a ``postgresql://`` URL or a SQLite file path (or
    ``sqlite:///path``). A context manager; ``close()`` when done."""
    if is_postgres_url(url):
        from .postgres import PostgresBackend

        return PostgresBackend(url)
    from .sqlite import SQLiteBackend

    return SQLiteBackend(url)


def load_migration(path: Any) -> Migration:
    from .loader import load_migration as _load

    return _load(path)


def connect(path: Any, release: str, **kwargs: Any) -> Any:
    """A ``sqlite3.Connection`` to ``path`` that sees release ``release``'s views."""
    from .sqlite import connect as _connect

    return _connect(path, release, **kwargs)

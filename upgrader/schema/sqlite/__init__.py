"""Live schema changes on SQLite: per-release TEMP views over the base tables.

SQLite has no schemas, so a release's "schema" is a set of TEMP views named like the base
tables (a temp object shadows the main one for its connection) with INSTEAD OF triggers
that write every physical column, computing the other release's columns with the
migration's ``up``/``down`` expressions. :func:`connect` creates them on a connection.

A temp trigger cannot name a main table whose name a temp view shadows, so writes go
through one plain "write-through" view per base table in main,
``_upgrader_w<generation>_<table>`` (``SELECT rowid, *`` with INSTEAD OF triggers that copy
every column). The generation changes with every start, complete and rollback, so a
connection's temp objects from before a change fail to prepare instead of writing a stale
row layout; :class:`ReleaseConnection` then rebuilds them and runs the statement again.

State lives in the database: ``_upgrader_schema_migrations`` (history, the active
migration, its undo and contract steps, backfill progress) and ``_upgrader_schema_views``
(for each live release and view: the definition and the SQL that :func:`connect` runs).

The package: :mod:`.catalog` (the catalogue, the SQL of a release's views),
:mod:`.compiler` (a start compiled per operation, the contract steps), :mod:`.backend`
(:class:`SQLiteBackend`) and :mod:`.connection` (:func:`connect`, :class:`ReleaseConnection`).
"""

from __future__ import annotations

from ..model import BackfillResult
from .backend import SQLiteBackend
from .catalog import (
    BUSY_TIMEOUT_MS,
    MIGRATIONS_TABLE,
    NOT_NULL_PREFIX,
    PASSTHROUGH_PREFIX,
    UNIQUE_PREFIX,
    VIEWS_TABLE,
    quote,
    sqlite_path,
)
from .connection import ReleaseConnection, connect

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MIGRATIONS_TABLE",
    "NOT_NULL_PREFIX",
    "PASSTHROUGH_PREFIX",
    "UNIQUE_PREFIX",
    "VIEWS_TABLE",
    "BackfillResult",
    "ReleaseConnection",
    "SQLiteBackend",
    "connect",
    "quote",
    "sqlite_path",
]

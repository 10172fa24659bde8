"""Live schema changes: the data model shared by the loader, the checker and both backends.

A :class:`Migration` (one TOML file) moves a database from the schema of release
``previous`` to the schema of release ``release`` through a list of operations. Its life:

``start``     expand: add what the new release needs beside what the old release reads
              (new physical columns, triggers that keep old and new columns in step, batched
              backfill) and create the new release's views. The previous release's views are
              created too when they do not exist yet (the first migration of a database), so
              that both releases run at once against their own view of the same base tables.
``complete``  contract: drop what only the old release needed, give the new columns their
              final names, drop the triggers, and drop the views of every release that the
              contraction would break (views that still read correctly are kept: more than
              two releases may be live at once).
``rollback``  undo ``start`` exactly: the database is as before (a schema dump compares equal).

Only one migration is active (started, neither completed nor rolled back) per database.

The physical names an expanding operation introduces follow one rule, shared by both
backends so that a dump, a test or an operator can read them: the new column for
``table.column`` is ``_upg_new_<column>`` until ``complete`` renames it.

Backends: :mod:`upgrader.schema.sqlite` and :mod:`upgrader.schema.postgres` implement
:class:`SchemaBackend`; :func:`upgrader.schema.open_backend` picks one from a URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: physical name of the new column of an expanding operation (``change_type``,
#: ``set_not_null``, ``add_column`` with ``up``) until ``complete``
NEW_COLUMN_PREFIX = "_upg_new_"


def new_column_name(column: str) -> str:
    return NEW_COLUMN_PREFIX + column


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    #: SQL type as written in the migration (``integer``, ``text``, ``varchar(40)``, ...)
    type: str
    nullable: bool = True
    #: an SQL expression (``'0'``, ``'now()'``, ``"'unknown'"``), or None
    default: str | None = None
    primary_key: bool = False
    unique: bool = False
    #: ``"table(column)"`` for a foreign key, or None
    references: str | None = None


# --------------------------------------------------------------------------------------------
# Operations. Each names the table it acts on; expressions are SQL over the row's columns.


@dataclass(frozen=True, slots=True)
class CreateTable:
    table: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class AddColumn:
    table: str
    column: Column
    #: backfill: an SQL expression over the row's OTHER columns computing the new column for
    #: existing rows and for rows the previous release writes (it cannot see the column).
    #: None: existing and old-release rows get ``column.default`` (or NULL).
    up: str | None = None


@dataclass(frozen=True, slots=True)
class DropColumn:
    table: str
    column: str
    #: value for the column when the NEW release inserts a row (the old release still reads
    #: the column until ``complete``): an SQL expression, or None for the column's default
    down: str | None = None


@dataclass(frozen=True, slots=True)
class RenameColumn:
    table: str
    column: str
    to: str


@dataclass(frozen=True, slots=True)
class ChangeType:
    table: str
    column: str
    type: str
    #: new value from the old: SQL over the row with ``column`` meaning the OLD column
    up: str
    #: old value from the new: SQL over the row with ``column`` meaning the NEW column
    down: str


@dataclass(frozen=True, slots=True)
class SetNotNull:
    table: str
    column: str
    #: the value for rows where the column is NULL (existing rows and old-release writes):
    #: SQL over the row, e.g. ``"coalesce(email, 'unknown@example.com')"``
    up: str
    #: old value from the new one (default: the same value)
    down: str | None = None


@dataclass(frozen=True, slots=True)
class AddIndex:
    table: str
    name: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True, slots=True)
class RenameTable:
    table: str
    to: str


@dataclass(frozen=True, slots=True)
class RawSQL:
    """Explicit SQL: run ``up`` on start, ``down`` on rollback. The views of the new release
    are rebuilt from the catalogue after ``up`` (so raw SQL that adds a table or a column is
    visible to the new release only). ``on_complete`` runs at complete (optional).
    ``down`` None: the operation cannot be undone (``irreversible = true`` in the file);
    a rollout freezes instead of rolling such a migration back."""

    up: str
    down: str | None
    on_complete: str | None = None


Operation = (CreateTable | AddColumn | DropColumn | RenameColumn | ChangeType | SetNotNull
             | AddIndex | RenameTable | RawSQL)

#: the ``op`` value in a migration file -> the operation class
OPERATIONS: dict[str, type] = {
    "create_table": CreateTable,
    "add_column": AddColumn,
    "drop_column": DropColumn,
    "rename_column": RenameColumn,
    "change_type": ChangeType,
    "set_not_null": SetNotNull,
    "add_index": AddIndex,
    "rename_table": RenameTable,
    "sql": RawSQL,
}


@dataclass(frozen=True, slots=True)
class Migration:
    #: the migration's name (the file's ``name``, default: its stem), unique per database
    name: str
    #: the release whose views this migration creates
    release: str
    #: the release before it (whose views stay live until complete); None: the first
    #: migration of a database, whose "previous" views are created from the tables as found
    previous: str | None
    operations: tuple[Operation, ...]
    #: rows per backfill batch (each batch is its own short transaction)
    batch_size: int = 1000
    source: Path | None = None
    #: 1-based line of each operation in ``source`` (for errors found against the database)
    lines: tuple[int | None, ...] = field(default=(), compare=False)

    @property
    def irreversible(self) -> str | None:
        """Why ``rollback`` cannot undo this migration (its operations without a way back),
        or None."""
        bad = [i for i, op in enumerate(self.operations)
               if isinstance(op, RawSQL) and op.down is None]
        if not bad:
            return None
        where = []
        for i in bad:
            line = self.lines[i] if i < len(self.lines) else None
            where.append(f"operation {i + 1} (sql" + (f", line {line})" if line else ")"))
        return ", ".join(where) + " cannot be undone (irreversible = true)"


# --------------------------------------------------------------------------------------------
# State as read back from a database


@dataclass(frozen=True, slots=True)
class LiveRelease:
    release: str
    #: how an application selects this release's views: for PostgreSQL the ``search_path``
    #: value (``options=-csearch_path=...`` in a URL); for SQLite the call
    #: ``upgrader.schema.connect(path, "<release>")``
    connection: str
    #: the migration that created these views (None: the baseline of the first migration)
    migration: str | None = None
    #: PostgreSQL: the database URL with ``options=-csearch_path%3D<schema>`` (None: SQLite)
    url: str | None = None


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    #: the active migration (started, not completed or rolled back), or None
    active: str | None
    #: its state: "started" while active; None otherwise
    live: tuple[LiveRelease, ...]
    #: every migration this database has seen: (name, release, state) with state in
    #: started | complete | rolled_back, oldest first
    history: tuple[tuple[str, str, str], ...] = ()
    #: backfill progress of the active migration: table -> (rows done, rows total)
    backfill: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class BackfillResult:
    """What one call of ``backfill`` did: rows rewritten, batches (each its own
    transaction); ``done`` when no row is left to backfill."""

    rows: int = 0
    batches: int = 0
    done: bool = False


class SchemaBackend(Protocol):
    """One database; :class:`~upgrader.schema.sqlite.SQLiteBackend` and
    :class:`~upgrader.schema.postgres.PostgresBackend` both are one, and
    :func:`upgrader.schema.open_backend` opens the right one for a database. Every method is
    synchronous (backends run it in a thread when called from the engine) and
    all-or-nothing: an error leaves the database as it was. A context manager that closes
    the connection."""

    url: str

    def plan(self, migration: Migration, phase: str = "start") -> list[str]:
        """The SQL statements ``phase`` (start | complete | rollback) would run, in order,
        without running them. Backfill batches appear as one templated statement. An
        unknown phase is a ConfigError."""
        ...

    def start(self, migration: Migration, *, backfill: bool = True) -> BackfillResult | None:
        """Expand, then (unless ``backfill=False``) backfill to the end. Refuses
        (SchemaError naming the active migration) while another is active; a ConfigError
        (with the migration file and operation line) when an operation names an unknown
        table or column. Called again for the active migration, it resumes the backfill."""
        ...

    def backfill(self, name: str, *, max_batches: int | None = None,
                 batch_size: int | None = None) -> BackfillResult:
        """Backfill the active migration ``name`` from where it stopped, one transaction per
        batch: at most ``max_batches`` batches (None: to the end). SchemaError when ``name``
        is not active."""
        ...

    def complete(self, name: str) -> None:
        """Contract the active migration ``name`` (SchemaError when it is not active)."""
        ...

    def rollback(self, name: str) -> None:
        """Undo the start of the active migration ``name``: the database as before."""
        ...

    def check_rollback(self, name: str) -> None:
        """Raise the SchemaError ``rollback(name)`` would raise before changing anything
        (``name`` not active, or irreversible); change nothing."""
        ...

    def status(self) -> SchemaStatus:
        """The active migration, the live releases, the history and backfill progress."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> SchemaBackend: ...

    def __exit__(self, *exc: Any) -> None: ...

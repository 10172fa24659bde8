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
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SchemaError
from .loader import _operation_error, op_name, validate_against
from .model import (
    AddColumn,
    AddIndex,
    ChangeType,
    Column,
    CreateTable,
    DropColumn,
    LiveRelease,
    Migration,
    RawSQL,
    RenameColumn,
    RenameTable,
    SchemaStatus,
    SetNotNull,
    new_column_name,
)

__all__ = ["ReleaseConnection", "SQLiteBackend", "connect", "quote", "sqlite_path"]

MIGRATIONS_TABLE = "_upgrader_schema_migrations"
VIEWS_TABLE = "_upgrader_schema_views"
PASSTHROUGH_PREFIX = "_upgrader_w"
NOT_NULL_PREFIX = "_upgrader_notnull_"
UNIQUE_PREFIX = "_upgrader_unique_"
BUSY_TIMEOUT_MS = 30_000

_STATE_DDL = (
    f'CREATE TABLE IF NOT EXISTS "{MIGRATIONS_TABLE}" ('
    '"seq" INTEGER PRIMARY KEY, "name" TEXT NOT NULL, "release" TEXT NOT NULL, '
    '"previous" TEXT, "state" TEXT NOT NULL, "started_at" REAL, "finished_at" REAL, '
    '"generation" INTEGER NOT NULL, "record" TEXT NOT NULL)',
    f'CREATE TABLE IF NOT EXISTS "{VIEWS_TABLE}" ('
    '"release" TEXT NOT NULL, "view" TEXT NOT NULL, "migration" TEXT, '
    '"position" INTEGER NOT NULL, "generation" INTEGER NOT NULL, "spec" TEXT NOT NULL, '
    '"statements" TEXT NOT NULL, PRIMARY KEY ("release", "view"))',
)

_LITERAL_RE = re.compile(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?|'(?:[^']|'')*'|NULL|TRUE|FALSE|"
                         r"CURRENT_TIME|CURRENT_DATE|CURRENT_TIMESTAMP", re.IGNORECASE)


def quote(name: str) -> str:
    """An SQL identifier, always quoted."""
    return '"' + name.replace('"', '""') + '"'


def sqlite_path(url: str | Path) -> str:
    """A file path from a path or a URL: ``sqlite:///rel/path``, ``sqlite:////abs/path``."""
    text = str(url)
    if text.startswith("sqlite:///"):
        return text[len("sqlite:///"):]
    return text


def _split_statements(sql: str) -> list[str]:
    """Raw SQL text -> its statements (without running executescript, which commits)."""
    out: list[str] = []
    current = ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip() if current.strip().endswith(";") else current.strip() + ";")
    return [s for s in out if s.strip(" ;\n")]


# --------------------------------------------------------------------------------------------
# Catalogue


@dataclass(slots=True)
class PhysicalColumn:
    name: str
    type: str
    notnull: bool
    default: str | None
    pk: int


@dataclass(slots=True)
class Catalogue:
    tables: dict[str, list[PhysicalColumn]] = field(default_factory=dict)
    #: index name -> (table, columns, unique, sql or None for automatic indexes)
    indexes: dict[str, tuple[str, list[str], bool, str | None]] = field(default_factory=dict)
    without_rowid: set[str] = field(default_factory=set)

    def columns(self, table: str) -> list[str]:
        return [c.name for c in self.tables[table]]

    def column(self, table: str, name: str) -> PhysicalColumn:
        for column in self.tables[table]:
            if column.name == name:
                return column
        raise KeyError(name)


def read_catalogue(conn: sqlite3.Connection) -> Catalogue:
    """User tables (not sqlite_* or _upgrader_*), their columns and indexes, of main."""
    cat = Catalogue()
    rows = conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'table' "
                        "ORDER BY name").fetchall()
    for name, sql in rows:
        if name.startswith(("sqlite_", "_upgrader_")):
            continue
        cols = [PhysicalColumn(r[1], r[2] or "", bool(r[3]), r[4], r[5])
                for r in conn.execute(f"PRAGMA main.table_info({quote(name)})")]
        cat.tables[name] = cols
        if sql and re.search(r"\bWITHOUT\s+ROWID\b", sql, re.IGNORECASE):
            cat.without_rowid.add(name)
        for _, index, unique, origin, _partial in conn.execute(
                f"PRAGMA main.index_list({quote(name)})"):
            columns = [r[2] for r in conn.execute(f"PRAGMA main.index_info({quote(index)})")]
            isql = conn.execute("SELECT sql FROM main.sqlite_master WHERE type = 'index' AND "
                                "name = ?", (index,)).fetchone()
            cat.indexes[index] = (name, columns, bool(unique), isql[0] if isql else None)
    return cat


# --------------------------------------------------------------------------------------------
# Release view specs and their SQL
#
# spec = {"view": logical table name, "table": physical table,
#         "columns": [[logical, physical], ...]            (what the release reads)
#         "writes": {physical: {"copy": logical} | {"expr": sql, "source": logical | None}}}
# A physical column a release does not write gets its default on INSERT and is kept on
# UPDATE. Expressions see the release's logical columns by name (the NEW row's values).


def passthrough_name(generation: int, table: str) -> str:
    return f"{PASSTHROUGH_PREFIX}{generation}_{table}"


def render_passthrough(generation: int, table: str, columns: list[str]) -> list[str]:
    name = passthrough_name(generation, table)
    view, base = quote(name), quote(table)
    cols = ", ".join(quote(c) for c in columns)
    new = ", ".join(f"NEW.{quote(c)}" for c in columns)
    sets = ", ".join(f"{quote(c)} = NEW.{quote(c)}" for c in columns)
    return [
        f'CREATE VIEW {view} AS SELECT rowid AS "_upgrader_rowid", * FROM {base}',
        f"CREATE TRIGGER {quote(name + '_insert')} INSTEAD OF INSERT ON {view} BEGIN "
        f"INSERT INTO {base} ({cols}) VALUES ({new}); END",
        f"CREATE TRIGGER {quote(name + '_update')} INSTEAD OF UPDATE ON {view} BEGIN "
        f'UPDATE {base} SET {sets} WHERE rowid = OLD."_upgrader_rowid"; END',
        f"CREATE TRIGGER {quote(name + '_delete')} INSTEAD OF DELETE ON {view} BEGIN "
        f'DELETE FROM {base} WHERE rowid = OLD."_upgrader_rowid"; END',
    ]


def identity_spec(table: str, columns: list[str]) -> dict[str, Any]:
    return {"view": table, "table": table, "columns": [[c, c] for c in columns],
            "writes": {c: {"copy": c} for c in columns}}


def render_release(spec: dict[str, Any], cat: Catalogue, generation: int) -> list[str]:
    """The TEMP view and its INSTEAD OF triggers for one release and table."""
    table, view = spec["table"], spec["view"]
    physical = cat.tables[table]
    source = quote(passthrough_name(generation, table))
    reads = spec["columns"]
    select = ", ".join(f"{quote(p)} AS {quote(l)}" for l, p in reads)
    qview = quote(view)
    aliases = ", ".join(f"NEW.{quote(l)} AS {quote(l)}" for l, _ in reads)

    def expr(sql: str) -> str:
        return f"(SELECT ({sql}) FROM (SELECT {aliases}))"

    insert_values, update_sets = [], []
    for column in physical:
        write = spec["writes"].get(column.name)
        default = column.default if column.default is not None else "NULL"
        if write is None:
            insert_values.append(default)
            continue
        if "copy" in write:
            new = f"NEW.{quote(write['copy'])}"
            insert_values.append(new if column.default is None
                                 else f"coalesce({new}, {default})")
            update_sets.append(f"{quote(column.name)} = {new}")
        else:
            insert_values.append(expr(write["expr"]))
            if write.get("insert_only"):
                continue
            if write.get("source"):
                src = quote(write["source"])
                update_sets.append(f"{quote(column.name)} = CASE WHEN NEW.{src} IS OLD.{src} "
                                   f"THEN {quote(column.name)} ELSE {expr(write['expr'])} END")
            else:
                update_sets.append(f"{quote(column.name)} = {expr(write['expr'])}")
    key = _row_key(spec, physical)
    trigger = lambda kind: quote(f"_upgrader_{view}_{kind}")  # noqa: E731
    cols = ", ".join(quote(c.name) for c in physical)
    statements = [
        f"CREATE TEMP VIEW {qview} AS SELECT {select} FROM main.{source}",
        f"CREATE TEMP TRIGGER {trigger('insert')} INSTEAD OF INSERT ON {qview} BEGIN "
        f"INSERT INTO {source} ({cols}) VALUES ({', '.join(insert_values)}); END",
        f"CREATE TEMP TRIGGER {trigger('delete')} INSTEAD OF DELETE ON {qview} BEGIN "
        f"DELETE FROM {source} WHERE {key}; END",
    ]
    if update_sets:
        statements.insert(2, f"CREATE TEMP TRIGGER {trigger('update')} INSTEAD OF UPDATE ON "
                             f"{qview} BEGIN UPDATE {source} SET {', '.join(update_sets)} "
                             f"WHERE {key}; END")
    return statements


def _row_key(spec: dict[str, Any], physical: list[PhysicalColumn]) -> str:
    """How a view's trigger finds the row: the primary key (as the release reads it), else
    every column the release reads (IS: NULLs match)."""
    read = {p: l for l, p in spec["columns"]}
    pk = sorted((c for c in physical if c.pk), key=lambda c: c.pk)
    if pk and all(c.name in read for c in pk):
        return " AND ".join(f"{quote(c.name)} = OLD.{quote(read[c.name])}" for c in pk)
    return " AND ".join(f"{quote(p)} IS OLD.{quote(l)}" for l, p in spec["columns"])


# --------------------------------------------------------------------------------------------
# Compiling a start


@dataclass
class _StartPlan:
    migration: Migration
    previous: str | None
    generation: int
    ddl: list[str]
    #: statements that undo ``ddl``, in the order they must run
    undo: list[str]
    #: contract steps for complete: ["drop_column", t, c] | ["rename_column", t, a, b] |
    #: ["rename_table", a, b] | ["sql", text] | ["not_null", t, c] | ["recreate_indexes", t, c]
    contract: list[list[Any]]
    #: table -> [[physical column, up expression], ...]
    backfill: dict[str, list[list[str]]]
    old_specs: dict[str, dict[str, Any]]
    new_specs: dict[str, dict[str, Any]]
    #: releases (other than previous) that stay live during the migration
    keep_others: bool
    hidden: set[tuple[str, str]]


def _column_sql(column: Column, *, add: bool) -> str:
    parts = [quote(column.name), column.type]
    if column.primary_key and not add:
        parts.append("PRIMARY KEY")
    if not column.nullable and not (add and column.default is None):
        parts.append("NOT NULL")
    if column.unique and not add:
        parts.append("UNIQUE")
    if column.default is not None:
        default = column.default
        parts.append(f"DEFAULT {default}" if _LITERAL_RE.fullmatch(default.strip())
                     else f"DEFAULT ({default})")
    if column.references:
        table, col = re.fullmatch(r"\s*(\w+)\s*\(\s*(\w+)\s*\)\s*", column.references).groups()
        parts.append(f"REFERENCES {quote(table)} ({quote(col)})")
    return " ".join(parts)


def _create_table_sql(op: CreateTable) -> str:
    pks = [c for c in op.columns if c.primary_key]
    cols = []
    for column in op.columns:
        if len(pks) > 1 and column.primary_key:
            column = Column(column.name, column.type, column.nullable, column.default, False,
                            column.unique, column.references)
        cols.append(_column_sql(column, add=False))
    if len(pks) > 1:
        cols.append(f"PRIMARY KEY ({', '.join(quote(c.name) for c in pks)})")
    return f"CREATE TABLE {quote(op.table)} ({', '.join(cols)})"


def _not_null_guard(table: str, logical: str, physical: str) -> list[str]:
    """SQLite cannot add NOT NULL to a column: triggers enforce it instead."""
    name = f"{NOT_NULL_PREFIX}{table}_{logical}"
    message = f"NOT NULL constraint failed: {table}.{logical}".replace("'", "''")
    body = f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
    return [f"CREATE TRIGGER {quote(name + '_insert')} BEFORE INSERT ON {quote(table)} "
            f"WHEN NEW.{quote(physical)} IS NULL {body}",
            f"CREATE TRIGGER {quote(name + '_update')} BEFORE UPDATE OF {quote(physical)} ON "
            f"{quote(table)} WHEN NEW.{quote(physical)} IS NULL {body}"]


def _guard_names(table: str, logical: str) -> list[str]:
    name = f"{NOT_NULL_PREFIX}{table}_{logical}"
    return [name + "_insert", name + "_update"]


def _compile_start(conn: sqlite3.Connection, migration: Migration, cat: Catalogue,
                   live: dict[str, dict[str, dict[str, Any]]], previous: str | None,
                   generation: int) -> _StartPlan:
    catalogue = {t: [c.name for c in cols] for t, cols in cat.tables.items()}
    if previous is not None and previous in live:
        old = copy.deepcopy(live[previous])
        # the previous release reads every table by its physical name (the last complete
        # renamed everything to its final name)
        catalogue_prev = {s["view"]: [l for l, _ in s["columns"]] for s in old.values()}
        for table in catalogue:
            catalogue_prev.setdefault(table, catalogue[table]) if table not in old else None
    else:
        old = {t: identity_spec(t, cols) for t, cols in catalogue.items()} \
            if previous is not None else {}
        catalogue_prev = dict(catalogue)
    validate_against(migration, catalogue_prev, cat.indexes.keys())
    new = copy.deepcopy(old) if old else {t: identity_spec(t, cols)
                                          for t, cols in catalogue.items()}
    ddl: list[str] = []
    undo: list[str] = []
    contract: list[list[Any]] = []
    backfill: dict[str, list[list[str]]] = {}
    hidden: set[tuple[str, str]] = set()
    keep_others = True

    def fail(i: int, key: str | None, message: str) -> None:
        raise _operation_error(migration, i, key, message)

    def physical_of(spec: dict[str, Any], logical: str) -> str:
        for l, p in spec["columns"]:
            if l == logical:
                return p
        raise KeyError(logical)

    def check_droppable(i: int, table: str, physical: str, what: str) -> None:
        column = cat.column(table, physical)
        if column.pk:
            fail(i, "column", f"cannot {what} {table}.{physical} on SQLite: it is part of "
                              f"the primary key")
        for index, (itable, icols, unique, isql) in cat.indexes.items():
            if itable == table and physical in icols and unique and isql is None:
                fail(i, "column", f"cannot {what} {table}.{physical} on SQLite: a UNIQUE "
                                  f"constraint uses it ({index})")

    def need_rowid(i: int, table: str) -> None:
        if table in cat.without_rowid:
            fail(i, "table", f"table {table!r} is a WITHOUT ROWID table: upgrader's SQLite "
                             f"views need a rowid")

    for i, op in enumerate(migration.operations):
        if isinstance(op, CreateTable):
            ddl.append(_create_table_sql(op))
            undo.insert(0, f"DROP TABLE {quote(op.table)}")
            new[op.table] = identity_spec(op.table, [c.name for c in op.columns])
        elif isinstance(op, AddColumn):
            need_rowid(i, op.table)
            spec, c = new[op.table], op.column
            physical = c.name if op.up is None else new_column_name(c.name)
            column = Column(physical, c.type, c.nullable, c.default, False, False, c.references)
            add_not_null = not c.nullable and c.default is not None and op.up is None
            ddl.append(f"ALTER TABLE {quote(op.table)} ADD COLUMN "
                       f"{_column_sql(column if add_not_null else _nullable(column), add=True)}")
            undone = [f"ALTER TABLE {quote(op.table)} DROP COLUMN {quote(physical)}"]
            if not c.nullable and not add_not_null:
                guards = _not_null_guard(op.table, c.name, physical)
                ddl.extend(guards)
                undone[:0] = [f"DROP TRIGGER {quote(n)}" for n in _guard_names(op.table, c.name)]
            if c.unique:
                index = f"{UNIQUE_PREFIX}{op.table}_{c.name}"
                ddl.append(f"CREATE UNIQUE INDEX {quote(index)} ON {quote(op.table)} "
                           f"({quote(physical)})")
                undone.insert(0, f"DROP INDEX {quote(index)}")
            undo[:0] = undone
            spec["columns"].append([c.name, physical])
            spec["writes"][physical] = {"copy": c.name}
            if op.up is not None:
                keep_others = False
                if op.table in old:
                    old[op.table]["writes"][physical] = {"expr": op.up, "source": None}
                # with a default, rows from before read the default until the backfill
                # reaches them: it fills those too (see _backfill_sets)
                backfill.setdefault(op.table, []).append(
                    [physical, op.up] + ([c.default] if c.default is not None else []))
                contract.append(["rename_column", op.table, physical, c.name])
        elif isinstance(op, DropColumn):
            need_rowid(i, op.table)
            spec = new[op.table]
            physical = physical_of(spec, op.column)
            check_droppable(i, op.table, physical, "drop")
            pcol = cat.column(op.table, physical)
            if pcol.notnull and pcol.default is None and op.down is None:
                fail(i, "down", f"{op.table}.{op.column} is NOT NULL without a default: the "
                                f"previous release still reads it, so rows the new release "
                                f"inserts need a value: give `down` (an SQL expression over "
                                f"the new release's columns)")
            spec["columns"] = [[l, p] for l, p in spec["columns"] if l != op.column]
            if op.down is not None:   # a value for the rows it inserts; updates keep it
                spec["writes"][physical] = {"expr": op.down, "source": None,
                                            "insert_only": True}
            else:
                spec["writes"].pop(physical, None)
            hidden.add((op.table, physical))
            contract.append(["drop_column", op.table, physical])
        elif isinstance(op, RenameColumn):
            need_rowid(i, op.table)
            spec = new[op.table]
            physical = physical_of(spec, op.column)
            spec["columns"] = [[op.to if l == op.column else l, p] for l, p in spec["columns"]]
            spec["writes"][physical] = {"copy": op.to}
            contract.append(["rename_column", op.table, physical, op.to])
        elif isinstance(op, (ChangeType, SetNotNull)):
            need_rowid(i, op.table)
            keep_others = False
            spec = new[op.table]
            physical = physical_of(spec, op.column)
            what = "change the type of" if isinstance(op, ChangeType) else "set NOT NULL on"
            check_droppable(i, op.table, physical, what)
            pcol = cat.column(op.table, physical)
            target = new_column_name(op.column)
            sql_type = op.type if isinstance(op, ChangeType) else pcol.type
            column = Column(target, sql_type, True, None)
            ddl.append(f"ALTER TABLE {quote(op.table)} ADD COLUMN "
                       f"{_column_sql(column, add=True)}")
            undone = [f"ALTER TABLE {quote(op.table)} DROP COLUMN {quote(target)}"]
            not_null = isinstance(op, SetNotNull)
            if not_null:
                ddl.extend(_not_null_guard(op.table, op.column, target))
                undone[:0] = [f"DROP TRIGGER {quote(n)}"
                              for n in _guard_names(op.table, op.column)]
            undo[:0] = undone
            spec["columns"] = [[l, target if l == op.column else p] for l, p in spec["columns"]]
            spec["writes"][target] = {"copy": op.column}
            down = op.down if op.down is not None else quote(op.column)
            source = op.column if isinstance(op, ChangeType) else None
            spec["writes"][physical] = {"expr": down, "source": source}
            if op.table in old:
                old[op.table]["writes"][target] = {"expr": op.up, "source": source}
            backfill.setdefault(op.table, []).append([target, op.up])
            hidden.add((op.table, physical))
            contract.append(["drop_column", op.table, physical])
            contract.append(["rename_column", op.table, target, op.column])
            contract.append(["recreate_indexes", op.table, op.column])
            if isinstance(op, ChangeType) and pcol.notnull:
                contract.append(["not_null", op.table, op.column])
        elif isinstance(op, AddIndex):
            spec = new[op.table]
            cols = ", ".join(quote(physical_of(spec, c)) for c in op.columns)
            unique = "UNIQUE " if op.unique else ""
            ddl.append(f"CREATE {unique}INDEX {quote(op.name)} ON {quote(spec['table'])} "
                       f"({cols})")
            undo.insert(0, f"DROP INDEX {quote(op.name)}")
        elif isinstance(op, RenameTable):
            need_rowid(i, op.table)
            new[op.table]["view"] = op.to
            contract.append(["rename_table", op.table, op.to])
        elif isinstance(op, RawSQL):
            statements = _split_statements(op.up)
            if not statements:
                fail(i, "up", "no SQL statement in `up`")
            ddl.extend(statements)
            undo[:0] = _split_statements(op.down)
            if op.on_complete:
                contract.append(["sql", op.on_complete])
    return _StartPlan(migration, previous, generation, ddl, undo, contract, backfill, old, new,
                      keep_others, hidden)


def _nullable(column: Column) -> Column:
    return Column(column.name, column.type, True, column.default, False, False,
                  column.references)


def _discover(spec_by_table: dict[str, dict[str, Any]], cat: Catalogue,
              hidden: set[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """The new release after raw SQL: tables and columns nobody maps become its own."""
    out = {t: s for t, s in spec_by_table.items() if t in cat.tables}
    for table, cols in cat.tables.items():
        if table not in out:
            out[table] = identity_spec(table, [c.name for c in cols])
            continue
        spec = out[table]
        mapped = {p for _, p in spec["columns"]} | set(spec["writes"])
        for column in cols:
            if (column.name not in mapped and (table, column.name) not in hidden
                    and not column.name.startswith("_upg_new_")):
                spec["columns"].append([column.name, column.name])
                spec["writes"][column.name] = {"copy": column.name}
        spec["columns"] = [[l, p] for l, p in spec["columns"]
                           if p in {c.name for c in cols}]
        spec["writes"] = {p: w for p, w in spec["writes"].items()
                          if p in {c.name for c in cols}}
    return out


# --------------------------------------------------------------------------------------------
# The backend


class SQLiteBackend:
    """:class:`~upgrader.schema.model.SchemaBackend` for one SQLite file."""

    def __init__(self, url: str | Path, *, create: bool = True,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.url = str(url)
        self.path = sqlite_path(url)
        if not create and self.path != ":memory:" and not Path(self.path).exists():
            raise ConfigError("no such SQLite database", file=self.path)
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        except sqlite3.Error as exc:
            raise SchemaError(f"cannot open the SQLite database: {exc}",
                              database=self.url) from exc

    def __enter__(self) -> SQLiteBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # -- state

    def _has_state(self) -> bool:
        return self.conn.execute("SELECT count(*) FROM main.sqlite_master WHERE type = 'table' "
                                 "AND name = ?", (MIGRATIONS_TABLE,)).fetchone()[0] > 0

    def _active(self) -> tuple[int, str, dict[str, Any]] | None:
        if not self._has_state():
            return None
        row = self.conn.execute(f'SELECT "seq", "name", "record" FROM "{MIGRATIONS_TABLE}" '
                                "WHERE state = 'started'").fetchone()
        return (row[0], row[1], json.loads(row[2])) if row else None

    def _live(self) -> dict[str, dict[str, dict[str, Any]]]:
        """release -> physical table -> spec, oldest release first."""
        if not self._has_state():
            return {}
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for release, spec in self.conn.execute(
                f'SELECT "release", "spec" FROM "{VIEWS_TABLE}" ORDER BY "position", "release", '
                '"view"'):
            spec = json.loads(spec)
            out.setdefault(release, {})[spec["table"]] = spec
        return out

    def _generation(self) -> int:
        if not self._has_state():
            return 0
        # rolled back ones count too: a generation's name is never reused for a new layout
        row = self.conn.execute(f'SELECT max("generation") FROM "{MIGRATIONS_TABLE}"').fetchone()
        return row[0] or 0

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _snapshot_views(self) -> list[list[Any]]:
        if not self._has_state():
            return []
        return [list(r) for r in self.conn.execute(
            f'SELECT "release", "view", "migration", "position", "generation", "spec", '
            f'"statements" FROM "{VIEWS_TABLE}" ORDER BY "release", "view"')]

    def _passthrough_objects(self) -> list[list[str]]:
        """(type, name, sql) of the write-through views and their triggers, views first."""
        rows = self.conn.execute(
            "SELECT type, name, sql FROM main.sqlite_master WHERE name LIKE ? ESCAPE '\\' "
            "AND type IN ('view', 'trigger') ORDER BY type = 'trigger', name",
            (PASSTHROUGH_PREFIX.replace("_", "\\_") + "%",)).fetchall()
        return [list(r) for r in rows]

    def _drop_passthroughs(self) -> list[str]:
        return [f"DROP VIEW {quote(name)}" for kind, name, _ in self._passthrough_objects()
                if kind == "view"]

    def _write_views(self, live: dict[str, dict[str, dict[str, Any]]],
                     meta: dict[str, tuple[str | None, int]], cat: Catalogue,
                     generation: int) -> list[str]:
        """Replace the views table by ``live``; the write-through views' DDL to run."""
        self.conn.execute(f'DELETE FROM "{VIEWS_TABLE}"')
        tables: set[str] = set()
        for release, specs in live.items():
            migration, position = meta[release]
            for spec in specs.values():
                tables.add(spec["table"])
                statements = render_release(spec, cat, generation)
                self.conn.execute(
                    f'INSERT INTO "{VIEWS_TABLE}" VALUES (?, ?, ?, ?, ?, ?, ?)',
                    (release, spec["view"], migration, position, generation,
                     json.dumps(spec, sort_keys=True), json.dumps(statements)))
        ddl = []
        for table in sorted(tables):
            ddl.extend(render_passthrough(generation, table, cat.columns(table)))
        return ddl

    def _release_meta(self) -> dict[str, tuple[str | None, int]]:
        if not self._has_state():
            return {}
        return {r: (m, p) for r, m, p in self.conn.execute(
            f'SELECT DISTINCT "release", "migration", "position" FROM "{VIEWS_TABLE}"')}

    # -- the lifecycle

    def _prepare_start(self, migration: Migration) -> tuple[_StartPlan, dict, Catalogue]:
        active = self._active()
        if active is not None and active[1] != migration.name:
            raise SchemaError(f"migration {active[1]!r} is active on this database: complete "
                              f"or roll it back before starting {migration.name!r}",
                              database=self.url, migration=active[1])
        if self._has_state():
            done = self.conn.execute(f'SELECT state FROM "{MIGRATIONS_TABLE}" WHERE name = ? '
                                     "AND state = 'complete'", (migration.name,)).fetchone()
            if done:
                raise SchemaError(f"migration {migration.name!r} is already complete",
                                  database=self.url, migration=migration.name)
        live = self._live()
        previous = migration.previous
        newest = list(live)[-1] if live else None
        if migration.release in live:
            raise SchemaError(f"release {migration.release!r} is already live",
                              database=self.url, migration=migration.name)
        if live:
            if previous is None:
                previous = newest
            elif previous not in live:
                raise SchemaError(f"previous release {previous!r} is not live on this "
                                  f"database (live: {', '.join(live)})", database=self.url,
                                  migration=migration.name)
            elif previous != newest:
                raise SchemaError(f"previous release {previous!r} is not the newest live "
                                  f"release {newest!r}", database=self.url,
                                  migration=migration.name)
        cat = read_catalogue(self.conn)
        plan = _compile_start(self.conn, migration, cat, live, previous, self._generation() + 1)
        return plan, live, cat

    def plan(self, migration: Migration, phase: str = "start") -> list[str]:
        if phase not in ("start", "complete", "rollback"):
            raise ConfigError(f"unknown phase {phase!r} (start, complete, rollback)")
        active = self._active()
        if phase != "start" and active is not None and active[1] == migration.name:
            record = active[2]
            if phase == "rollback":
                return (self._drop_passthroughs() + record["undo"]
                        + [sql for _, _, sql in record["passthrough"]])
            return self._contract_statements(record, read_catalogue(self.conn))
        self.conn.execute("BEGIN")
        try:
            plan, live, cat = self._prepare_start(migration)
        finally:
            self.conn.execute("ROLLBACK")
        if phase == "rollback":
            return list(plan.undo)
        if phase == "complete":
            return self._contract_statements({"contract": plan.contract}, cat)
        out = list(plan.ddl)
        for table, jobs in plan.backfill.items():
            sets = _backfill_sets(jobs)
            out.append(f"-- backfill in batches of {migration.batch_size} rows, each its own "
                       f"transaction:\nUPDATE {quote(table)} SET {sets} WHERE rowid > :last "
                       f"AND rowid <= :batch_end")
        out.append(f"-- views of release {migration.release!r}: created by "
                   f"upgrader.schema.connect(path, {migration.release!r}) per connection")
        return out

    def start(self, migration: Migration) -> None:
        try:
            with self._transaction():
                for sql in _STATE_DDL:
                    self.conn.execute(sql)
                active = self._active()
                if active is None or active[1] != migration.name:
                    self._start_in_transaction(migration)
                # else: started before; resume its backfill
        except sqlite3.Error as exc:
            raise SchemaError(f"start {migration.name!r} failed, nothing changed: {exc}",
                              database=self.url, migration=migration.name) from exc
        self._backfill(migration.name)

    def _start_in_transaction(self, migration: Migration) -> None:
        passthrough = self._passthrough_objects()
        views_before = self._snapshot_views()
        plan, live, cat = self._prepare_start(migration)
        for sql in plan.ddl:
            try:
                self.conn.execute(sql)
            except sqlite3.Error as exc:
                index = _statement_operation(plan, sql)
                raise _operation_error(migration, index, None,
                                       f"SQLite refused {sql!r}: {exc}") if index is not None \
                    else exc
        cat = read_catalogue(self.conn)
        new_specs = _discover(plan.new_specs, cat, plan.hidden)
        meta = self._release_meta()
        new_live: dict[str, dict[str, dict[str, Any]]] = {}
        retired: list[str] = []
        for release, specs in live.items():
            if release == plan.previous or plan.keep_others:
                new_live[release] = specs
            else:
                retired.append(release)
        if plan.previous is not None:
            new_live[plan.previous] = plan.old_specs
            meta.setdefault(plan.previous, (None, 0))
        seq = self.conn.execute(f'SELECT coalesce(max("seq"), 0) + 1 FROM '
                                f'"{MIGRATIONS_TABLE}"').fetchone()[0]
        new_live[migration.release] = new_specs
        meta[migration.release] = (migration.name, seq)
        for sql in self._drop_passthroughs():
            self.conn.execute(sql)
        for sql in self._write_views(new_live, meta, cat, plan.generation):
            self.conn.execute(sql)
        self._check_views(new_live, cat, plan.generation, migration)
        totals = {}
        for table, jobs in plan.backfill.items():
            try:
                self.conn.execute(f"UPDATE {quote(table)} SET {_backfill_sets(jobs)} WHERE 0")
            except sqlite3.Error as exc:
                raise SchemaError(f"the backfill of {table!r} does not compile: {exc} (the up "
                                  f"expressions of {migration.name!r} use the previous "
                                  f"release's columns)", database=self.url,
                                  migration=migration.name) from exc
            count, high = self.conn.execute(f"SELECT count(*), coalesce(max(rowid), 0) FROM "
                                            f"{quote(table)}").fetchone()
            totals[table] = {"last": 0, "high": high, "done": 0, "total": count}
        record = {"migration": _migration_data(migration), "previous": plan.previous,
                  "undo": plan.undo, "contract": plan.contract, "backfill": plan.backfill,
                  "progress": totals, "passthrough": passthrough, "views": views_before,
                  "retired": retired}
        self.conn.execute(f'INSERT INTO "{MIGRATIONS_TABLE}" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
                          (seq, migration.name, migration.release, plan.previous, "started",
                           time.time(), None, plan.generation, json.dumps(record)))

    def _check_views(self, live: dict[str, dict[str, dict[str, Any]]], cat: Catalogue,
                     generation: int, migration: Migration) -> None:
        """Create every release's temp objects once, in this transaction, so that an
        expression that does not compile fails start (and not the application)."""
        for release, specs in live.items():
            for spec in specs.values():
                statements = render_release(spec, cat, generation)
                try:
                    for sql in statements:
                        self.conn.execute(sql)
                    view = f"temp.{quote(spec['view'])}"
                    first = quote(spec["columns"][0][0])
                    # preparing a write codes its trigger: an unknown column fails here
                    self.conn.execute(f"SELECT * FROM {view} LIMIT 0")
                    self.conn.execute(f"INSERT INTO {view} SELECT * FROM {view} WHERE 0")
                    self.conn.execute(f"UPDATE {view} SET {first} = {first} WHERE 0")
                    self.conn.execute(f"DELETE FROM {view} WHERE 0")
                except sqlite3.Error as exc:
                    raise SchemaError(
                        f"the views of release {release!r} for table {spec['view']!r} do not "
                        f"compile: {exc} (check the up/down expressions of "
                        f"{migration.name!r}: they use the columns of the release that "
                        f"writes)", database=self.url, migration=migration.name) from exc
                finally:
                    self.conn.execute(f"DROP VIEW IF EXISTS temp.{quote(spec['view'])}")

    def _backfill(self, name: str) -> None:
        row = self.conn.execute(f'SELECT "seq", "record" FROM "{MIGRATIONS_TABLE}" WHERE '
                                "name = ? AND state = 'started'", (name,)).fetchone()
        if row is None:
            return
        seq, record = row[0], json.loads(row[1])
        batch = int(record["migration"]["batch_size"])
        for table, jobs in record["backfill"].items():
            sets = _backfill_sets(jobs)
            while True:
                progress = record["progress"][table]
                if progress["last"] >= progress["high"]:
                    break
                try:
                    with self._transaction():
                        end = self.conn.execute(
                            f"SELECT rowid FROM {quote(table)} WHERE rowid > ? AND rowid <= ? "
                            f"ORDER BY rowid LIMIT 1 OFFSET ?",
                            (progress["last"], progress["high"], batch - 1)).fetchone()
                        end = end[0] if end else progress["high"]
                        cur = self.conn.execute(
                            f"UPDATE {quote(table)} SET {sets} WHERE rowid > ? AND rowid <= ?",
                            (progress["last"], end))
                        progress["done"] = min(progress["total"], progress["done"] + cur.rowcount)
                        progress["last"] = end
                        self.conn.execute(f'UPDATE "{MIGRATIONS_TABLE}" SET "record" = ? '
                                          'WHERE "seq" = ?', (json.dumps(record), seq))
                except sqlite3.Error as exc:
                    raise SchemaError(f"backfill of {table!r} failed after {progress['done']} "
                                      f"rows: {exc}; the migration stays started (start it "
                                      f"again to resume, or roll it back)", database=self.url,
                                      migration=name) from exc

    def _contract_statements(self, record: dict[str, Any], cat: Catalogue) -> list[str]:
        out: list[str] = []
        saved: dict[tuple[str, str], list[str]] = {}
        for step in record["contract"]:
            kind = step[0]
            if kind == "drop_column":
                _, table, column = step
                for trigger in self._guards_on(table, column):
                    out.append(f"DROP TRIGGER {quote(trigger)}")
                for index, (itable, icols, _u, isql) in sorted(cat.indexes.items()):
                    if itable == table and column in icols and isql is not None:
                        out.append(f"DROP INDEX {quote(index)}")
                        saved.setdefault((table, column), []).append(isql)
                out.append(f"ALTER TABLE {quote(table)} DROP COLUMN {quote(column)}")
            elif kind == "rename_column":
                _, table, old, new = step
                out.append(f"ALTER TABLE {quote(table)} RENAME COLUMN {quote(old)} TO "
                           f"{quote(new)}")
            elif kind == "recreate_indexes":
                _, table, column = step
                out.extend(saved.get((table, column), []))
            elif kind == "not_null":
                _, table, column = step
                out.extend(_not_null_guard(table, column, column))
            elif kind == "rename_table":
                out.append(f"ALTER TABLE {quote(step[1])} RENAME TO {quote(step[2])}")
            elif kind == "sql":
                out.extend(_split_statements(step[1]))
        return out

    def _guards_on(self, table: str, column: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT name, sql FROM main.sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
            "AND name LIKE ? ESCAPE '\\'", (table, NOT_NULL_PREFIX.replace("_", "\\_") + "%"))
        return [name for name, sql in rows if f"NEW.{quote(column)} IS NULL" in sql]

    def _require_active(self, name: str) -> tuple[int, dict[str, Any]]:
        active = self._active()
        if active is None:
            raise SchemaError(f"migration {name!r} is not active: no migration is active",
                              database=self.url, migration=name)
        if active[1] != name:
            raise SchemaError(f"migration {name!r} is not active (active: {active[1]!r})",
                              database=self.url, migration=active[1])
        return active[0], active[2]

    def complete(self, name: str) -> None:
        try:
            with self._transaction():
                seq, record = self._require_active(name)
                for table, progress in record["progress"].items():
                    if progress["last"] < progress["high"]:
                        raise SchemaError(f"the backfill of {table!r} is not finished "
                                          f"({progress['done']}/{progress['total']} rows): "
                                          f"start {name!r} again to resume it",
                                          database=self.url, migration=name)
                for sql in self._drop_passthroughs():
                    self.conn.execute(sql)
                for sql in self._contract_statements(record, read_catalogue(self.conn)):
                    self.conn.execute(sql)
                cat = read_catalogue(self.conn)
                live = self._live()
                meta = self._release_meta()
                kept: dict[str, dict[str, dict[str, Any]]] = {}
                for release, specs in live.items():
                    rewritten = _apply_contract(specs, record["contract"], cat)
                    if rewritten is not None:
                        kept[release] = rewritten
                    elif release == record["migration"]["release"]:
                        raise SchemaError(f"the views of release {release!r} do not fit the "
                                          f"contracted tables", database=self.url,
                                          migration=name)
                generation = self._generation() + 1
                for sql in self._write_views(kept, meta, cat, generation):
                    self.conn.execute(sql)
                self.conn.execute(f'UPDATE "{MIGRATIONS_TABLE}" SET "state" = \'complete\', '
                                  '"finished_at" = ?, "generation" = ? WHERE "seq" = ?',
                                  (time.time(), generation, seq))
        except sqlite3.Error as exc:
            raise SchemaError(f"complete {name!r} failed, nothing changed: {exc}",
                              database=self.url, migration=name) from exc

    def rollback(self, name: str) -> None:
        try:
            with self._transaction():
                seq, record = self._require_active(name)
                for sql in self._drop_passthroughs():
                    self.conn.execute(sql)
                for sql in record["undo"]:
                    self.conn.execute(sql)
                for _, _, sql in record["passthrough"]:
                    self.conn.execute(sql)
                self.conn.execute(f'DELETE FROM "{VIEWS_TABLE}"')
                for row in record["views"]:
                    self.conn.execute(f'INSERT INTO "{VIEWS_TABLE}" VALUES (?, ?, ?, ?, ?, ?, ?)',
                                      row)
                self.conn.execute(f'UPDATE "{MIGRATIONS_TABLE}" SET "state" = \'rolled_back\', '
                                  '"finished_at" = ? WHERE "seq" = ?', (time.time(), seq))
        except sqlite3.Error as exc:
            raise SchemaError(f"rollback {name!r} failed, nothing changed: {exc}",
                              database=self.url, migration=name) from exc

    def status(self) -> SchemaStatus:
        if not self._has_state():
            return SchemaStatus(active=None, live=())
        active = self._active()
        path = self.path
        live = tuple(LiveRelease(release=r, connection=f"upgrader.schema.connect({path!r}, "
                                                       f"{r!r})", migration=m)
                     for r, m, _ in self.conn.execute(
                         f'SELECT DISTINCT "release", "migration", "position" FROM '
                         f'"{VIEWS_TABLE}" ORDER BY "position", "release"'))
        history = tuple(tuple(r) for r in self.conn.execute(
            f'SELECT "name", "release", "state" FROM "{MIGRATIONS_TABLE}" ORDER BY "seq"'))
        backfill = {}
        if active is not None:
            backfill = {t: (p["done"], p["total"]) for t, p in active[2]["progress"].items()}
        return SchemaStatus(active=active[1] if active else None, live=live,
                            history=history, backfill=backfill)  # type: ignore[arg-type]


def _backfill_sets(jobs: list[list[str]]) -> str:
    """Fill each new column where it is still NULL (a row a release wrote since start has
    it already, and recomputing could lose what the new release wrote). An added column
    with a default (a third element) reads that default on the rows from before start, so
    there the default counts as unset too: the backfill only visits rows that existed at
    start, and a value the new release wrote into one of them that equals the default is
    recomputed (documented in docs/SCHEMA.md)."""
    sets = []
    for job in jobs:
        column, up = quote(job[0]), job[1]
        unset = f"{column} IS NULL" + (f" OR {column} IS ({job[2]})" if len(job) > 2 else "")
        sets.append(f"{column} = CASE WHEN {unset} THEN ({up}) ELSE {column} END")
    return ", ".join(sets)


def _statement_operation(plan: _StartPlan, sql: str) -> int | None:
    """The operation a failing raw SQL statement came from (for the error's line)."""
    for i, op in enumerate(plan.migration.operations):
        if isinstance(op, RawSQL) and sql in _split_statements(op.up):
            return i
    return None


def _apply_contract(specs: dict[str, dict[str, Any]], contract: list[list[Any]],
                    cat: Catalogue) -> dict[str, dict[str, Any]] | None:
    """A release's specs after complete, or None when it reads something complete dropped."""
    specs = copy.deepcopy(specs)
    for step in contract:
        kind = step[0]
        if kind == "drop_column":
            _, table, column = step
            spec = specs.get(table)
            if spec is None:
                continue
            if any(p == column for _, p in spec["columns"]):
                return None
            spec["writes"].pop(column, None)
        elif kind == "rename_column":
            _, table, old, new = step
            spec = specs.get(table)
            if spec is None:
                continue
            spec["columns"] = [[l, new if p == old else p] for l, p in spec["columns"]]
            if old in spec["writes"]:
                spec["writes"][new] = spec["writes"].pop(old)
        elif kind == "rename_table":
            _, old, new = step
            if old in specs:
                spec = specs.pop(old)
                spec["table"] = new
                specs[new] = spec
    out = {}
    for table, spec in specs.items():
        if table not in cat.tables:
            return None
        names = set(cat.columns(table))
        if any(p not in names for _, p in spec["columns"]):
            return None
        spec["writes"] = {p: w for p, w in spec["writes"].items() if p in names}
        out[table] = spec
    return out


def _migration_data(migration: Migration) -> dict[str, Any]:
    return {"name": migration.name, "release": migration.release,
            "previous": migration.previous, "batch_size": migration.batch_size,
            "source": str(migration.source) if migration.source else None,
            "operations": [op_name(op) for op in migration.operations]}


# --------------------------------------------------------------------------------------------
# Applications: a connection that sees one release's views


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
        return super().execute("PRAGMA main.schema_version").fetchone()[0]

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

    def _retry(self, call: Any, *args: Any) -> Any:
        self._fresh()
        try:
            return call(*args)
        except sqlite3.OperationalError:
            if self._schema_version() == self._built_version:
                raise
            self._rebuild()
            return call(*args)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        return self._retry(super().execute, sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:  # type: ignore[override]
        return self._retry(super().executemany, sql, parameters)

    def executescript(self, script: str, /) -> sqlite3.Cursor:  # type: ignore[override]
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
    kwargs.setdefault("check_same_thread", False)
    conn = sqlite3.connect(sqlite_path(path), factory=ReleaseConnection, **kwargs)
    assert isinstance(conn, ReleaseConnection)
    sqlite3.Connection.execute(conn, f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    try:
        conn._setup(release)
    except BaseException:
        conn.close()
        raise
    return conn

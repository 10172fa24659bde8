"""Live schema changes on PostgreSQL, the pgroll way: one view schema per release, chosen
with ``search_path``; triggers keep old and new physical columns in step; batched backfill.

Physical layout while a migration is active (release ``v2`` after ``v1``)::

    public.accounts           the base table: old columns, ``_upg_new_<col>`` columns,
                              ``_upg_needs_backfill`` and a BEFORE INSERT OR UPDATE trigger
    upg_v1.accounts           a view: what release v1 reads and writes
    upg_v2.accounts           a view: what release v2 reads and writes
    upgrader_schema.*         bookkeeping: migrations, live releases, backfill progress,
                              the trigger functions

The trigger decides which release is writing from the first schema of the writing session's
``search_path`` (``current_schemas(false)[1]``, pgroll's "latest schema" check): a write
through the new release's views computes the old columns from the new (``down``); any other
write (older releases' views, the base tables, the backfill) computes the new columns from
the old (``up``). The backfill is ``UPDATE ... SET _upg_needs_backfill = false`` over primary
key ranges, one short transaction per batch, its cursor saved in the same transaction, so an
interrupted backfill continues where it stopped.

Every DDL step (start, complete, rollback) is one transaction with ``lock_timeout``; when a
lock is not granted in time the whole transaction is retried with backoff, so a busy table
never queues every writer behind our ACCESS EXCLUSIVE request for long. ``CREATE INDEX
CONCURRENTLY`` cannot run in a transaction: ``add_index`` builds its index after the backfill
(outside the DDL transaction); if the build fails the migration is rolled back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError, SchemaError
from .model import (
    OPERATIONS,
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

#: bookkeeping schema (migrations, live releases, backfill cursors, trigger functions)
STATE_SCHEMA = "upgrader_schema"
#: boolean column on a table being backfilled: true until the row has been synchronised
BACKFILL_MARKER = "_upg_needs_backfill"
#: prefix of every view schema: release ``v2`` -> ``upg_v2``
RELEASE_SCHEMA_PREFIX = "upg_"
#: advisory lock key (first half) of every upgrader schema lock: 'UG'
_LOCK_KEY = 0x5547
_RESERVED_PREFIX = "_upg_"
_MAX_IDENT = 63


def release_schema(release: str) -> str:
    """The view schema of ``release``: ``upg_`` + the release name lower-cased with every
    character outside ``[a-z0-9_]`` replaced by ``_`` (a hash suffix keeps long names within
    PostgreSQL's 63 bytes)."""
    name = RELEASE_SCHEMA_PREFIX + re.sub(r"[^a-z0-9_]", "_", release.lower())
    if len(name) > _MAX_IDENT:
        digest = hashlib.sha1(release.encode()).hexdigest()[:8]
        name = name[:_MAX_IDENT - 9] + "_" + digest
    return name


def search_path_setting(schema: str) -> str:
    return f"search_path={schema}"


def release_url(url: str, schema: str) -> str:
    """``url`` with ``options=-csearch_path=<schema>`` (any other query parameter kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote, safe="-")))


# --------------------------------------------------------------------------------------------
# Migration <-> JSON (stored with the migration so complete/rollback need no file)


def migration_to_json(migration: Migration) -> dict[str, Any]:
    ops = []
    for op in migration.operations:
        kind = next(k for k, cls in OPERATIONS.items() if isinstance(op, cls))
        ops.append({"op": kind, **dataclasses.asdict(op)})
    return {"name": migration.name, "release": migration.release,
            "previous": migration.previous, "batch_size": migration.batch_size,
            "source": str(migration.source) if migration.source else None,
            "lines": list(migration.lines), "operations": ops}


def migration_from_json(data: dict[str, Any]) -> Migration:
    ops = []
    for raw in data["operations"]:
        raw = dict(raw)
        cls = OPERATIONS[raw.pop("op")]
        if cls is CreateTable:
            raw["columns"] = tuple(Column(**c) for c in raw["columns"])
        elif cls is AddColumn:
            raw["column"] = Column(**raw["column"])
        elif cls is AddIndex:
            raw["columns"] = tuple(raw["columns"])
        ops.append(cls(**raw))
    return Migration(name=data["name"], release=data["release"], previous=data["previous"],
                     operations=tuple(ops), batch_size=data.get("batch_size", 1000),
                     source=Path(data["source"]) if data.get("source") else None,
                     lines=tuple(data.get("lines") or ()))


# --------------------------------------------------------------------------------------------
# The catalogue as found


@dataclass
class _Col:
    name: str
    type: str
    notnull: bool
    default: str | None


@dataclass
class _Table:
    name: str
    columns: dict[str, _Col]
    key: tuple[str, ...]


def _read_catalog(conn: Any, base: str) -> dict[str, _Table]:
    tables: dict[str, _Table] = {}
    rows = conn.execute(
        """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
            WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
            ORDER BY c.relname, a.attnum""", (base,)).fetchall()
    for table, column, type_, notnull, default in rows:
        tables.setdefault(table, _Table(table, {}, ()))
        tables[table].columns[column] = _Col(column, type_, notnull, default)
    # the batching key: the primary key, else a unique index over NOT NULL columns
    keys = conn.execute(
        """SELECT c.relname, i.indisprimary,
                  array_agg(a.attname ORDER BY k.ord) AS cols,
                  bool_and(a.attnotnull) AS notnull
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
            WHERE n.nspname = %s AND i.indisunique AND i.indisvalid
              AND i.indpred IS NULL AND i.indexprs IS NULL
            GROUP BY c.relname, i.indexrelid, i.indisprimary
            ORDER BY c.relname, i.indisprimary DESC, count(*), i.indexrelid""",
        (base,)).fetchall()
    for table, _primary, cols, notnull in keys:
        if table in tables and not tables[table].key and notnull:
            tables[table].key = tuple(cols)
    return tables


# --------------------------------------------------------------------------------------------
# The plan of one migration over its tables, kept as JSON in the state schema


@dataclass
class _Pair:
    """One trigger-maintained relation between old and new physical columns."""

    kind: str                  # change_type | set_not_null | add_column | drop_column
    op: int
    old: str | None            # physical column the previous release reads
    new: str | None            # physical column the new release reads
    up: str | None             # SQL over the previous release's row -> new
    down: str | None           # SQL over the new release's row -> old
    new_type: str | None = None
    old_type: str | None = None
    alias: str | None = None   # the operation's column name (bound in up and down too)


@dataclass
class _Layout:
    physical: str              # table name at start (until complete)
    name: str                  # name in the new release
    created: bool = False
    view: list[list[str]] = field(default_factory=list)    # [[view column, physical], ...]
    hidden: list[str] = field(default_factory=list)        # physical, not in the new view
    drop_at_complete: list[str] = field(default_factory=list)
    pairs: list[_Pair] = field(default_factory=list)
    checks: list[list[str]] = field(default_factory=list)  # [[constraint, physical column]]
    fks: list[str] = field(default_factory=list)           # NOT VALID, validated at complete
    marker: bool = False
    key: list[str] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)    # physical column -> type

    def physical_of(self, column: str) -> str | None:
        for view_name, physical in self.view:
            if view_name == column:
                return physical
        return None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Layout:
        data = dict(data)
        data["pairs"] = [_Pair(**p) for p in data["pairs"]]
        return cls(**data)


def _short_hash(*parts: str) -> str:
    return hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:10]


def _trigger_names(migration: str, table: str) -> tuple[str, str]:
    """(trigger, function) that keep ``table``'s columns in step for ``migration``."""
    suffix = _short_hash(migration, table)
    return f"_upg_sync_{suffix}", f"_upg_sync_{table[:40]}_{suffix}"


class _Compiler:
    """Turns a migration into statements over the catalogue as found. With ``execute`` the
    statements of each operation run as soon as they are made (so raw SQL is seen by the
    operations after it); without, they are only collected (``plan``)."""

    def __init__(self, backend: PostgresBackend, migration: Migration, *,
                 execute: Callable[[int | None, Any], None] | None) -> None:
        from psycopg import sql

        self.sql = sql
        self.b = backend
        self.m = migration
        self.execute = execute
        self.base = backend.base_schema
        self.schema = release_schema(migration.release)
        self.catalog = _read_catalog(backend._conn, self.base)
        self.layouts: dict[str, _Layout] = {}
        for table in self.catalog.values():
            self._adopt(table)
        self.statements: list[tuple[int | None, Any]] = []
        self.undo: list[tuple[int | None, str]] = []
        self.indexes: list[dict[str, Any]] = []
        self.raw: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- helpers
    def _adopt(self, table: _Table) -> None:
        self.layouts[table.name] = _Layout(
            physical=table.name, name=table.name,
            view=[[c, c] for c in table.columns], key=list(table.key),
            types={c.name: c.type for c in table.columns.values()})

    def original(self, layout: _Layout) -> dict[str, _Col]:
        """The columns of ``layout``'s table as found before this migration."""
        table = self.catalog.get(layout.physical)
        return table.columns if table is not None and not layout.created else {}

    def ident(self, *names: str) -> Any:
        return self.sql.Identifier(*names)

    def table_ident(self, layout: _Layout) -> Any:
        return self.ident(self.base, layout.physical)

    def emit(self, op: int | None, statement: Any) -> None:
        self.statements.append((op, statement))
        if self.execute is not None:
            self.execute(op, statement)

    def emit_undo(self, op: int | None, statement: Any) -> None:
        self.undo.append((op, self.b._render(statement)))

    def bad(self, i: int, message: str, key: str | None = None) -> ConfigError:
        return self.b._config_error(self.m, i, message, key)

    def resolve(self, i: int, table: str) -> _Layout:
        for layout in self.layouts.values():
            if layout.name == table:
                return layout
        raise self.bad(i, f"unknown table {table!r} (schema {self.base!r})", "table")

    def column(self, i: int, layout: _Layout, column: str, key: str = "column") -> str:
        physical = layout.physical_of(column)
        if physical is None:
            raise self.bad(i, f"unknown column {column!r} in table {layout.name!r}", key)
        return physical

    def check_new_name(self, i: int, name: str, key: str) -> None:
        if not name:
            raise self.bad(i, "empty name", key)
        if name.startswith(_RESERVED_PREFIX):
            raise self.bad(i, f"{name!r}: names starting with {_RESERVED_PREFIX!r} are "
                              "reserved for upgrader", key)
        if len(name.encode()) > _MAX_IDENT:
            raise self.bad(i, f"{name!r} is longer than {_MAX_IDENT} bytes", key)

    def refresh(self) -> None:
        """After raw SQL: adopt new tables, append new columns to the new release's view."""
        if self.execute is None:
            return
        catalog = _read_catalog(self.b._conn, self.base)
        known = {layout.physical: layout for layout in self.layouts.values()}
        for table in catalog.values():
            layout = known.get(table.name)
            if layout is None:
                self._adopt(table)
                continue
            seen = {p for _, p in layout.view} | set(layout.hidden) | {BACKFILL_MARKER}
            for column in table.columns.values():
                layout.types[column.name] = column.type
                if column.name not in seen:
                    layout.view.append([column.name, column.name])
            if not layout.key:
                layout.key = list(table.key)
        for physical in [p for p in self.layouts if p not in catalog]:
            del self.layouts[physical]

    def column_sql(self, i: int, column: Column, *, nullable: bool | None = None) -> Any:
        sql = self.sql
        parts = [self.ident(column.name), sql.SQL(column.type)]
        if not (column.nullable if nullable is None else nullable):
            parts.append(sql.SQL("NOT NULL"))
        if column.default is not None:
            parts.append(sql.SQL("DEFAULT ({})").format(sql.SQL(column.default)))
        return sql.SQL(" ").join(parts)

    def references(self, i: int, spec: str) -> tuple[Any, Any]:
        match = re.fullmatch(r"\s*([^()\s]+)\s*\(\s*([^()\s]+)\s*\)\s*", spec)
        if not match:
            raise self.bad(i, f"references {spec!r}: expected 'table(column)'",
                           "column.references")
        target = self.resolve(i, match.group(1))
        column = self.column(i, target, match.group(2), "column.references")
        return self.table_ident(target), self.ident(column)

    def add_physical_column(self, i: int, layout: _Layout, physical: str, type_: str, *,
                            default: str | None = None, notnull_check: bool = False) -> None:
        sql = self.sql
        if physical in layout.types:
            raise self.bad(i, f"table {layout.name!r} already has a column {physical!r} "
                              "(left by another operation of this migration?)")
        statement = sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
            self.table_ident(layout), self.ident(physical), sql.SQL(type_))
        if default is not None:
            statement = sql.SQL("{} DEFAULT ({})").format(statement, sql.SQL(default))
        self.emit(i, statement)
        self.emit_undo(i, sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(
            self.table_ident(layout), self.ident(physical)))
        layout.types[physical] = type_
        if notnull_check:
            constraint = f"_upg_nn_{_short_hash(self.m.name, layout.physical, physical)}"
            # NOT VALID: enforced for every new write at once, checked for old rows at
            # complete (VALIDATE takes only SHARE UPDATE EXCLUSIVE), then SET NOT NULL
            # uses the validated check instead of scanning under ACCESS EXCLUSIVE
            self.emit(i, sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) "
                                 "NOT VALID").format(self.table_ident(layout),
                                                     self.ident(constraint),
                                                     self.ident(physical)))
            layout.checks.append([constraint, physical])

    def need_backfill(self, i: int, layout: _Layout) -> None:
        if layout.created:
            return
        if not layout.key:
            raise self.bad(i, f"table {layout.name!r} has no primary key (or unique index "
                              "over NOT NULL columns) to backfill it in batches", "table")
        if not layout.marker:
            layout.marker = True
            self.emit(i, self.sql.SQL(
                "ALTER TABLE {} ADD COLUMN {} boolean NOT NULL DEFAULT true").format(
                self.table_ident(layout), self.ident(BACKFILL_MARKER)))
            self.emit_undo(i, self.sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(
                self.table_ident(layout), self.ident(BACKFILL_MARKER)))

    # ---------------------------------------------------------------- operations
    def compile(self) -> None:
        for i, op in enumerate(self.m.operations):
            handler = getattr(self, "op_" + type(op).__name__)
            handler(i, op)

    def op_CreateTable(self, i: int, op: CreateTable) -> None:
        sql = self.sql
        self.check_new_name(i, op.table, "table")
        if any(layout.name == op.table for layout in self.layouts.values()) or \
                op.table in self.catalog:
            raise self.bad(i, f"table {op.table!r} already exists", "table")
        if not op.columns:
            raise self.bad(i, f"create_table {op.table!r}: no columns", "columns")
        names = [c.name for c in op.columns]
        if len(set(names)) != len(names):
            raise self.bad(i, f"create_table {op.table!r}: a column name is repeated",
                           "columns")
        parts = []
        for column in op.columns:
            self.check_new_name(i, column.name, "columns")
            part = self.column_sql(i, column)
            if column.unique and not column.primary_key:
                part = sql.SQL("{} UNIQUE").format(part)
            if column.references:
                target, target_column = self.references(i, column.references)
                part = sql.SQL("{} REFERENCES {} ({})").format(part, target, target_column)
            parts.append(part)
        key = [c.name for c in op.columns if c.primary_key]
        if key:
            parts.append(sql.SQL("PRIMARY KEY ({})").format(
                sql.SQL(", ").join(self.ident(c) for c in key)))
        layout = _Layout(physical=op.table, name=op.table, created=True,
                         view=[[c.name, c.name] for c in op.columns], key=key,
                         types={c.name: c.type for c in op.columns})
        self.emit(i, sql.SQL("CREATE TABLE {} ({})").format(
            self.ident(self.base, op.table), sql.SQL(", ").join(parts)))
        self.emit_undo(i, sql.SQL("DROP TABLE IF EXISTS {}").format(
            self.ident(self.base, op.table)))
        self.layouts[op.table] = layout

    def op_AddColumn(self, i: int, op: AddColumn) -> None:
        sql = self.sql
        layout = self.resolve(i, op.table)
        column = op.column
        self.check_new_name(i, column.name, "column.name")
        if layout.physical_of(column.name) is not None:
            raise self.bad(i, f"table {op.table!r} already has a column {column.name!r}",
                           "column.name")
        if column.primary_key or column.unique:
            raise self.bad(i, "add_column: primary_key/unique are not added live; add the "
                              "column, then an add_index with unique = true", "column")
        if layout.created:           # a table of this migration: nobody else sees it yet
            self.emit(i, sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(
                self.table_ident(layout), self.column_sql(i, column)))
            layout.types[column.name] = column.type
            layout.view.append([column.name, column.name])
            return
        if op.up is None:
            if not column.nullable and column.default is None:
                raise self.bad(i, f"add_column {column.name!r}: a NOT NULL column needs a "
                                  "default or an up expression for the existing rows",
                               "column.nullable")
            # NOT NULL with a non-volatile default is instant (PostgreSQL 11+ fast default)
            self.emit(i, sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(
                self.table_ident(layout), self.column_sql(i, column)))
            self.emit_undo(i, sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(
                self.table_ident(layout), self.ident(column.name)))
            layout.types[column.name] = column.type
            physical = column.name
        else:
            physical = new_column_name(column.name)
            self.need_backfill(i, layout)
            self.add_physical_column(i, layout, physical, column.type, default=column.default,
                                     notnull_check=not column.nullable)
            layout.pairs.append(_Pair("add_column", i, None, physical, op.up, None,
                                      new_type=column.type, alias=None))
        layout.view.append([column.name, physical])
        if column.references:
            target, target_column = self.references(i, column.references)
            constraint = f"_upg_fk_{_short_hash(self.m.name, layout.physical, physical)}"
            self.emit(i, sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) "
                                 "REFERENCES {} ({}) NOT VALID").format(
                self.table_ident(layout), self.ident(constraint), self.ident(physical),
                target, target_column))
            layout.fks.append(constraint)

    def op_DropColumn(self, i: int, op: DropColumn) -> None:
        layout = self.resolve(i, op.table)
        physical = self.column(i, layout, op.column)
        if layout.created:
            raise self.bad(i, "drop_column on a table this migration creates: leave the "
                              "column out of create_table", "column")
        if physical in layout.key:
            raise self.bad(i, f"drop_column {op.column!r}: the column is the table's key",
                           "column")
        if physical not in self.original(layout):
            raise self.bad(i, f"drop_column {op.column!r}: the column is new in this "
                              "migration", "column")
        info = self.original(layout)[physical]
        if op.down is None and info.notnull and info.default is None:
            raise self.bad(i, f"drop_column {op.column!r} is NOT NULL without a default: "
                              "give `down`, the value the new release's inserts store for "
                              "the release before it", "down")
        layout.view = [entry for entry in layout.view if entry[1] != physical]
        layout.hidden.append(physical)
        layout.drop_at_complete.append(physical)
        if op.down is not None:
            layout.pairs.append(_Pair("drop_column", i, physical, None, None, op.down,
                                      old_type=info.type))

    def op_RenameColumn(self, i: int, op: RenameColumn) -> None:
        layout = self.resolve(i, op.table)
        self.column(i, layout, op.column)
        self.check_new_name(i, op.to, "to")
        if layout.physical_of(op.to) is not None:
            raise self.bad(i, f"table {op.table!r} already has a column {op.to!r}", "to")
        for entry in layout.view:
            if entry[0] == op.column:
                entry[0] = op.to

    def _duplicate(self, i: int, op: ChangeType | SetNotNull, kind: str) -> tuple[_Layout,
                                                                                  str, str]:
        layout = self.resolve(i, op.table)
        physical = self.column(i, layout, op.column)
        if layout.created:
            raise self.bad(i, f"{kind} on a table this migration creates: declare the "
                              "column as wanted in create_table", "table")
        if physical not in self.original(layout):
            raise self.bad(i, f"{kind} {op.column!r}: the column is new in this migration",
                           "column")
        if physical in layout.key:
            raise self.bad(i, f"{kind} {op.column!r}: the column is (part of) the table's "
                              "key; not supported live", "column")
        return layout, physical, new_column_name(op.column)

    def op_ChangeType(self, i: int, op: ChangeType) -> None:
        for key in ("type", "up", "down"):
            if not (getattr(op, key) or "").strip():
                raise self.bad(i, f"change_type {op.column!r} needs `{key}`", key)
        layout, physical, new = self._duplicate(i, op, "change_type")
        info = self.original(layout)[physical]
        self.need_backfill(i, layout)
        self.add_physical_column(i, layout, new, op.type, notnull_check=info.notnull)
        self._swap(layout, physical, new)
        layout.pairs.append(_Pair("change_type", i, physical, new, op.up, op.down,
                                  new_type=op.type, old_type=info.type, alias=op.column))

    def op_SetNotNull(self, i: int, op: SetNotNull) -> None:
        if not (op.up or "").strip():
            raise self.bad(i, f"set_not_null {op.column!r} needs `up`, the value for rows "
                              "where the column is NULL", "up")
        layout, physical, new = self._duplicate(i, op, "set_not_null")
        info = self.original(layout)[physical]
        if info.notnull:
            raise self.bad(i, f"set_not_null: column {op.column!r} is already NOT NULL",
                           "column")
        self.need_backfill(i, layout)
        self.add_physical_column(i, layout, new, info.type, default=info.default,
                                 notnull_check=True)
        self._swap(layout, physical, new)
        up = self.sql.SQL("coalesce({}, ({}))").format(self.ident(physical),
                                                       self.sql.SQL(op.up))
        down = op.down if op.down is not None else None
        layout.pairs.append(_Pair("set_not_null", i, physical, new, self.b._render(up), down,
                                  new_type=info.type, old_type=info.type, alias=op.column))

    def _swap(self, layout: _Layout, physical: str, new: str) -> None:
        for entry in layout.view:
            if entry[1] == physical:
                entry[1] = new
        layout.hidden.append(physical)
        layout.drop_at_complete.append(physical)

    def op_AddIndex(self, i: int, op: AddIndex) -> None:
        sql = self.sql
        layout = self.resolve(i, op.table)
        self.check_new_name(i, op.name, "name")
        if not op.columns:
            raise self.bad(i, "add_index needs at least one column", "columns")
        exists = self.b._conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s", (self.base, op.name)).fetchone()
        if exists or any(ix["name"] == op.name for ix in self.indexes):
            raise self.bad(i, f"a relation named {op.name!r} already exists", "name")
        columns = [self.column(i, layout, c, "columns") for c in op.columns]
        statement = sql.SQL("CREATE {}INDEX {}{} ON {} ({})").format(
            sql.SQL("UNIQUE " if op.unique else ""),
            sql.SQL("" if layout.created else "CONCURRENTLY "),
            self.ident(op.name), self.table_ident(layout),
            sql.SQL(", ").join(self.ident(c) for c in columns))
        if layout.created:          # an empty table nobody uses yet: build it right here
            self.emit(i, statement)
        else:
            self.indexes.append({"op": i, "name": op.name, "sql": self.b._render(statement)})
            self.statements.append((i, sql.SQL("-- after the backfill, outside the DDL "
                                               "transaction:\n{}").format(statement)))
        self.emit_undo(i, sql.SQL("DROP INDEX IF EXISTS {}").format(
            self.ident(self.base, op.name)))

    def op_RenameTable(self, i: int, op: RenameTable) -> None:
        layout = self.resolve(i, op.table)
        self.check_new_name(i, op.to, "to")
        if any(other.name == op.to for other in self.layouts.values()) or \
                op.to in self.catalog:
            raise self.bad(i, f"table {op.to!r} already exists", "to")
        layout.name = op.to

    def op_RawSQL(self, i: int, op: RawSQL) -> None:
        if not (op.up or "").strip() or not (op.down or "").strip():
            raise self.bad(i, "sql needs both `up` and `down`", "up" if not op.up else "down")
        self.emit(i, self.sql.SQL(op.up))
        self.undo.append((i, op.down))
        self.raw.append({"op": i, "on_complete": op.on_complete})
        self.refresh()

    # ---------------------------------------------------------------- views and triggers
    def view_statements(self, schema: str, layouts: Iterable[_Layout]) -> list[Any]:
        sql = self.sql
        statements = [sql.SQL("CREATE SCHEMA {}").format(self.ident(schema))]
        for layout in sorted(layouts, key=lambda lay: lay.name):
            columns = [sql.SQL("{} AS {}").format(self.ident(physical), self.ident(name))
                       for name, physical in layout.view]
            statements.append(sql.SQL("CREATE VIEW {} AS SELECT {} FROM {}").format(
                self.ident(schema, layout.name), sql.SQL(", ").join(columns),
                self.table_ident(layout)))
        return statements

    def trigger_names(self, layout: _Layout) -> tuple[str, str]:
        return _trigger_names(self.m.name, layout.physical)

    def up_context(self, layout: _Layout, pair: _Pair) -> list[tuple[str, str]]:
        """(name, physical) the previous release's row binds in ``up`` expressions."""
        original = list(self.original(layout))
        context = [(c, c) for c in original]
        if pair.alias and pair.old and pair.alias not in original:
            context.append((pair.alias, pair.old))
        return context

    def down_context(self, layout: _Layout, pair: _Pair) -> list[tuple[str, str]]:
        context = [(name, physical) for name, physical in layout.view]
        names = {name for name, _ in context}
        if pair.alias and pair.new and pair.alias not in names:
            context.append((pair.alias, pair.new))
        return context

    def row(self, record: str, context: list[tuple[str, str]]) -> Any:
        sql = self.sql
        return sql.SQL(", ").join(
            sql.SQL("{}.{} AS {}").format(sql.SQL(record), self.ident(physical),
                                          self.ident(name))
            for name, physical in context)

    def trigger_statements(self, layout: _Layout) -> list[Any]:
        sql = self.sql
        if not layout.pairs:
            return []
        trigger, function = self.trigger_names(layout)
        declare = [sql.SQL("_upg_is_new boolean := (current_schemas(false))[1] IS NOT "
                           "DISTINCT FROM {};").format(sql.Literal(self.schema)),
                   sql.SQL("_upg_sync boolean := false;")]
        body: list[Any] = []
        if layout.marker:
            body.append(sql.SQL("IF TG_OP = 'UPDATE' THEN _upg_sync := OLD.{}; END IF;")
                        .format(self.ident(BACKFILL_MARKER)))
        ups = [(n, p) for n, p in enumerate(layout.pairs) if p.up is not None]
        downs = [(n, p) for n, p in enumerate(layout.pairs) if p.down is not None]
        for n, pair in enumerate(layout.pairs):
            declare.append(sql.SQL("_upg_keep_{} boolean := false;").format(sql.SQL(str(n))))
            if pair.new is not None and layout.marker:
                # the new release rewrote a row the backfill has not reached: when it did not
                # set this column, take it from the old one (up); when it did, keep it
                body.append(sql.SQL(
                    "IF TG_OP = 'UPDATE' THEN _upg_keep_{n} := _upg_sync AND NEW.{c} IS NOT "
                    "DISTINCT FROM OLD.{c}; END IF;").format(n=sql.SQL(str(n)),
                                                             c=self.ident(pair.new)))
        for n, pair in ups:
            declare.append(sql.SQL("_upg_up_{} {};").format(sql.SQL(str(n)),
                                                            sql.SQL(pair.new_type)))
        for n, pair in downs:
            declare.append(sql.SQL("_upg_down_{} {};").format(sql.SQL(str(n)),
                                                              sql.SQL(pair.old_type)))
        for n, pair in ups:
            body.append(sql.SQL(
                "IF NOT _upg_is_new OR _upg_keep_{n} THEN\n"
                "  SELECT ({expr}) INTO _upg_up_{n} FROM (SELECT {row}) AS _upg_row;\n"
                "  NEW.{col} := _upg_up_{n};\nEND IF;").format(
                n=sql.SQL(str(n)), expr=sql.SQL(pair.up),
                row=self.row("NEW", self.up_context(layout, pair)), col=self.ident(pair.new)))
        for n, pair in downs:
            when = (sql.SQL("_upg_is_new AND TG_OP = 'INSERT'") if pair.kind == "drop_column"
                    else sql.SQL("_upg_is_new AND NOT _upg_keep_{}").format(sql.SQL(str(n))))
            body.append(sql.SQL(
                "IF {when} THEN\n"
                "  SELECT ({expr}) INTO _upg_down_{n} FROM (SELECT {row}) AS _upg_row;\n"
                "  NEW.{col} := _upg_down_{n};\nEND IF;").format(
                when=when, n=sql.SQL(str(n)), expr=sql.SQL(pair.down),
                row=self.row("NEW", self.down_context(layout, pair)), col=self.ident(pair.old)))
        for n, pair in enumerate(layout.pairs):
            if pair.kind == "set_not_null" and pair.down is None:
                body.append(sql.SQL("IF _upg_is_new AND NOT _upg_keep_{n} THEN NEW.{old} := "
                                    "NEW.{new}; END IF;").format(
                    n=sql.SQL(str(n)), old=self.ident(pair.old), new=self.ident(pair.new)))
        if layout.marker:
            body.append(sql.SQL("NEW.{} := false;").format(self.ident(BACKFILL_MARKER)))
        source = sql.SQL("#variable_conflict use_column\nDECLARE\n{}\nBEGIN\n{}\nRETURN NEW;"
                         "\nEND").format(sql.SQL("\n").join(declare), sql.SQL("\n").join(body))
        text = self.b._render(source)
        return [
            sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
                self.ident(STATE_SCHEMA, function), sql.Literal(text)),
            sql.SQL("CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW "
                    "EXECUTE FUNCTION {}()").format(self.ident(trigger),
                                                    self.table_ident(layout),
                                                    self.ident(STATE_SCHEMA, function)),
        ]

    def expression_checks(self, layout: _Layout) -> list[tuple[int, str, Any]]:
        """SELECTs that make PostgreSQL parse and type-check every up/down expression."""
        sql = self.sql
        checks = []
        for pair in layout.pairs:
            for key, expr, context, type_ in (
                    ("up", pair.up, self.up_context(layout, pair), pair.new_type),
                    ("down", pair.down, self.down_context(layout, pair), pair.old_type)):
                if expr is None:
                    continue
                row = self.row(self.b._render(self.table_ident(layout)), context)
                checks.append((pair.op, key, sql.SQL(
                    "SELECT CAST(({}) AS {}) FROM (SELECT {} FROM {} LIMIT 0) AS _upg_row")
                    .format(sql.SQL(expr), sql.SQL(type_), row, self.table_ident(layout))))
        return checks


# --------------------------------------------------------------------------------------------


_STATE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA};
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.migrations (
    seq         bigserial,
    name        text PRIMARY KEY,
    release     text NOT NULL,
    previous    text,
    state       text NOT NULL CHECK (state IN ('started', 'complete', 'rolled_back')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    backfilled_at timestamptz,
    finished_at timestamptz,
    migration   jsonb NOT NULL,
    layout      jsonb NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS migrations_one_active
    ON {STATE_SCHEMA}.migrations ((true)) WHERE state = 'started';
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.releases (
    seq         bigserial,
    release     text PRIMARY KEY,
    schema      text NOT NULL UNIQUE,
    migration   text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.backfill (
    migration   text NOT NULL,
    table_name  text NOT NULL,
    key_columns text[] NOT NULL,
    last_key    text[],
    upper_key   text[],
    rows_done   bigint NOT NULL DEFAULT 0,
    rows_total  bigint,
    done        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (migration, table_name)
)"""


@dataclass
class BackfillResult:
    rows: int = 0
    batches: int = 0
    done: bool = False


class PostgresBackend:
    """A :class:`~upgrader.schema.model.SchemaBackend` for one PostgreSQL database.

    :param url: a libpq URL (``postgresql://user@host/db``)
    :param base_schema: the schema of the base tables (default ``public``)
    :param lock_timeout: how long one DDL statement may wait for its lock (seconds); after
        that the whole transaction is rolled back and retried
    :param lock_attempts: how many times a DDL transaction is tried before giving up
    """

    def __init__(self, url: str, *, base_schema: str = "public", lock_timeout: float = 0.5,
                 lock_attempts: int = 30) -> None:
        import psycopg

        self.url = url
        self.base_schema = base_schema
        self.lock_timeout = lock_timeout
        self.lock_attempts = lock_attempts
        try:
            self._conn = psycopg.connect(url, autocommit=True, prepare_threshold=None,
                                         application_name="upgrader-schema")
        except psycopg.Error as exc:
            raise SchemaError(f"cannot connect: {exc}", database=self._safe_url()) from exc
        # our own writes (the backfill) must read as "not the new release" in the triggers
        self._conn.execute("SELECT set_config('search_path', %s, false)",
                           (f'"{base_schema}"',))

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> PostgresBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if not self._conn.closed:
            self._conn.close()

    # ---------------------------------------------------------------- helpers
    def _safe_url(self) -> str:
        parts = urlsplit(self.url)
        if parts.password:
            netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
        return self.url

    def _render(self, statement: Any) -> str:
        return statement if isinstance(statement, str) else statement.as_string(self._conn)

    def _config_error(self, migration: Migration, i: int, message: str,
                      key: str | None = None) -> ConfigError:
        from .loader import _operation_error

        op = migration.operations[i]
        kind = next((k for k, cls in OPERATIONS.items() if isinstance(op, cls)), "?")
        # the loader's locator finds the line of the key inside the operation's table
        error = _operation_error(migration, i, key.split(".")[0] if key else None,
                                 f"{kind}: {message}")
        error.key = f"operations[{i}]" + (f".{key}" if key else "")
        error.args = (error.location_text() + error.message,)
        return error

    def _state_exists(self) -> bool:
        return self._conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                  (f"{STATE_SCHEMA}.migrations",)).fetchone()[0]

    def _active(self) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
        if not self._state_exists():
            return None
        row = self._conn.execute(
            f"SELECT name, migration, layout FROM {STATE_SCHEMA}.migrations "
            "WHERE state = 'started'").fetchone()
        return (row[0], row[1], row[2]) if row else None

    def _lock(self) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_KEY,))

    def _transaction(self, work: Callable[[], Any], what: str) -> Any:
        """Run ``work`` in one transaction whose statements wait at most ``lock_timeout``
        for a lock; retry the whole transaction (with backoff) while locks are refused."""
        import psycopg

        delay = 0.05
        for attempt in range(1, self.lock_attempts + 1):
            try:
                with self._conn.transaction():
                    self._conn.execute("SELECT set_config('lock_timeout', %s, true)",
                                       (f"{int(self.lock_timeout * 1000)}ms",))
                    return work()
            except psycopg.errors.LockNotAvailable:
                if attempt == self.lock_attempts:
                    raise SchemaError(
                        f"{what}: a lock was not granted within {self.lock_timeout}s, "
                        f"{self.lock_attempts} times; a long transaction holds the table?",
                        database=self._safe_url()) from None
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _op_runner(self, migration: Migration) -> Callable[[int | None, Any], None]:
        import psycopg

        def run(op: int | None, statement: Any) -> None:
            try:
                self._conn.execute(statement)
            except psycopg.errors.LockNotAvailable:
                raise
            except psycopg.Error as exc:
                if op is None or not _is_input_error(exc):
                    raise SchemaError(f"{self._render(statement)[:200]}: {exc}",
                                      database=self._safe_url(),
                                      migration=migration.name) from exc
                raise self._config_error(migration, op, _pg_message(exc)) from exc

        return run

    # ---------------------------------------------------------------- plan
    def plan(self, migration: Migration, phase: str = "start") -> list[str]:
        if phase == "start":
            self._check_releases(migration)
            compiler = _Compiler(self, migration, execute=None)
            statements = [self._render(s) for s in self._start_statements(compiler, None)]
            return statements
        active = self._active()
        if active is None or active[0] != migration.name:
            raise SchemaError(f"migration {migration.name!r} is not active; only an active "
                              f"migration has a {phase} plan", database=self._safe_url(),
                              migration=migration.name)
        if phase == "complete":
            return self._complete_statements(active[0], active[2])[1]
        if phase == "rollback":
            return self._rollback_statements(active[0], active[2])
        raise ValueError(f"phase must be start, complete or rollback, not {phase!r}")

    # ---------------------------------------------------------------- start
    def _start_statements(self, compiler: _Compiler, run: Callable | None) -> list[Any]:
        """Compile (and with ``run`` execute) the whole start; return every statement."""
        sql = compiler.sql
        m = compiler.m
        out: list[Any] = []

        def emit(statement: Any) -> None:
            out.append(statement)
            if run is not None:
                run(None, statement)

        previous_schema = release_schema(m.previous) if m.previous else None
        baseline = bool(previous_schema) and not self._release_live(m.previous)
        if baseline:
            for statement in compiler.view_statements(previous_schema,
                                                      compiler.layouts.values()):
                emit(statement)
        compiler.compile()
        out.extend(s for _, s in compiler.statements)
        if run is not None:
            compiler.refresh()
        if m.operations and any(isinstance(op, RawSQL) for op in m.operations) and run is None:
            out.append(sql.SQL("-- the new release's views are rebuilt from the catalogue "
                               "after the raw SQL has run"))
        for statement in compiler.view_statements(compiler.schema, compiler.layouts.values()):
            emit(statement)
        for layout in compiler.layouts.values():
            for statement in compiler.trigger_statements(layout):
                emit(statement)
        for layout in compiler.layouts.values():
            if layout.marker:
                key = sql.SQL(", ").join(compiler.ident(c) for c in layout.key)
                out.append(sql.SQL(
                    "-- backfill, one transaction per batch of {n} rows, until no row is "
                    "left:\nUPDATE {t} SET {m} = false WHERE ({k}) IN (SELECT {k} FROM {t} "
                    "WHERE {m} AND ({k}) > (<last key>) ORDER BY {k} LIMIT {n} FOR NO KEY UPDATE)")
                    .format(t=compiler.table_ident(layout), m=compiler.ident(BACKFILL_MARKER),
                            k=key, n=sql.Literal(m.batch_size)))
        self._baseline = baseline
        return out

    def _release_live(self, release: str | None) -> bool:
        if release is None or not self._state_exists():
            return False
        return self._conn.execute(f"SELECT 1 FROM {STATE_SCHEMA}.releases WHERE release = %s",
                                  (release,)).fetchone() is not None

    def _check_releases(self, migration: Migration) -> None:
        def bad(message: str, key: str) -> ConfigError:
            return ConfigError(message, file=migration.source, key=key)

        if not migration.release:
            raise bad("release is empty", "release")
        live: list[tuple[str, str]] = []
        if self._state_exists():
            live = self._conn.execute(
                f"SELECT release, schema FROM {STATE_SCHEMA}.releases ORDER BY seq").fetchall()
            state = self._conn.execute(
                f"SELECT state FROM {STATE_SCHEMA}.migrations WHERE name = %s",
                (migration.name,)).fetchone()
            if state and state[0] == "complete":
                raise SchemaError(f"migration {migration.name!r} is already complete",
                                  database=self._safe_url(), migration=migration.name)
        schema = release_schema(migration.release)
        for release, other_schema in live:
            if release == migration.release:
                raise bad(f"release {release!r} is already live", "release")
            if other_schema == schema:
                raise bad(f"release {migration.release!r} would share the view schema "
                          f"{schema!r} with live release {release!r}", "release")
        if migration.previous and release_schema(migration.previous) == schema:
            raise bad("previous and release name the same view schema", "previous")
        if live and migration.previous != live[-1][0]:
            raise bad(f"previous is {migration.previous!r} but the newest live release is "
                      f"{live[-1][0]!r}", "previous")
        exists = self._conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                    (schema,)).fetchone()
        if exists:
            raise bad(f"schema {schema!r} already exists in the database", "release")

    def start(self, migration: Migration, *, backfill: bool = True) -> BackfillResult | None:
        """Expand (one transaction), then backfill in batches and build the indexes of
        ``add_index`` concurrently. Called again for the active migration, it resumes an
        interrupted backfill. ``backfill=False`` stops after the DDL (call
        :meth:`backfill`)."""
        active = self._active()
        if active is not None:
            if active[0] == migration.name:
                return self.backfill(migration.name) if backfill else None
            raise SchemaError(f"migration {active[0]!r} is active: complete or roll it back "
                              f"before starting {migration.name!r}",
                              database=self._safe_url(), migration=active[0])

        def work() -> None:
            self._lock()
            if self._state_exists():
                self._conn.execute(f"LOCK TABLE {STATE_SCHEMA}.migrations IN EXCLUSIVE MODE")
            again = self._active()
            if again is not None:
                raise SchemaError(f"migration {again[0]!r} is active: complete or roll it "
                                  f"back before starting {migration.name!r}",
                                  database=self._safe_url(), migration=again[0])
            self._check_releases(migration)
            for statement in _STATE_DDL.split(";\n"):
                self._conn.execute(statement)
            compiler = _Compiler(self, migration, execute=self._op_runner(migration))
            self._start_statements(compiler, self._op_runner(migration))
            self._check_expressions(compiler)
            self._record_start(compiler)

        self._transaction(work, f"start {migration.name}")
        return self.backfill(migration.name) if backfill else None

    def _check_expressions(self, compiler: _Compiler) -> None:
        import psycopg

        for layout in compiler.layouts.values():
            for op, key, statement in compiler.expression_checks(layout):
                try:
                    with self._conn.transaction():
                        self._conn.execute(statement)
                except psycopg.errors.LockNotAvailable:
                    raise
                except psycopg.Error as exc:
                    raise self._config_error(compiler.m, op, f"`{key}`: {_pg_message(exc)}",
                                             key) from exc

    def _record_start(self, compiler: _Compiler) -> None:
        m = compiler.m
        layout = {
            "base": compiler.base, "schema": compiler.schema,
            "previous_schema": release_schema(m.previous) if m.previous else None,
            "baseline": self._baseline,
            "tables": [lay.to_json() for lay in compiler.layouts.values()],
            "undo": compiler.undo, "indexes": compiler.indexes, "raw": compiler.raw,
        }
        from psycopg.types.json import Jsonb

        self._conn.execute(
            f"""INSERT INTO {STATE_SCHEMA}.migrations
                    (name, release, previous, state, migration, layout)
                VALUES (%s, %s, %s, 'started', %s, %s)
                ON CONFLICT (name) DO UPDATE SET release = excluded.release,
                    previous = excluded.previous, state = 'started', started_at = now(),
                    backfilled_at = NULL, finished_at = NULL,
                    migration = excluded.migration, layout = excluded.layout""",
            (m.name, m.release, m.previous, Jsonb(migration_to_json(m)), Jsonb(layout)))
        if self._baseline:
            self._conn.execute(f"INSERT INTO {STATE_SCHEMA}.releases (release, schema) "
                               "VALUES (%s, %s)", (m.previous, release_schema(m.previous)))
        self._conn.execute(f"INSERT INTO {STATE_SCHEMA}.releases (release, schema, migration) "
                           "VALUES (%s, %s, %s)", (m.release, compiler.schema, m.name))
        self._conn.execute(f"DELETE FROM {STATE_SCHEMA}.backfill WHERE migration = %s",
                           (m.name,))
        for lay in compiler.layouts.values():
            if lay.marker:
                self._conn.execute(
                    f"INSERT INTO {STATE_SCHEMA}.backfill (migration, table_name, key_columns)"
                    " VALUES (%s, %s, %s)", (m.name, lay.physical, lay.key))

    # ---------------------------------------------------------------- backfill
    def backfill(self, name: str, *, max_batches: int | None = None,
                 batch_size: int | None = None) -> BackfillResult:
        """Backfill the active migration ``name`` from where it stopped: at most
        ``max_batches`` batches (None: to the end, then build the concurrent indexes)."""
        import psycopg
        from psycopg import sql

        active = self._active()
        if active is None or active[0] != name:
            raise SchemaError(f"migration {name!r} is not active", database=self._safe_url(),
                              migration=name)
        _, mdata, layout = active
        size = batch_size or mdata.get("batch_size") or 1000
        got = self._conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                 (_LOCK_KEY, name)).fetchone()[0]
        if not got:
            raise SchemaError(f"the backfill of {name!r} runs in another session",
                              database=self._safe_url(), migration=name)
        result = BackfillResult()
        try:
            tables = {t["physical"]: _Layout.from_json(t) for t in layout["tables"]}
            rows = self._conn.execute(
                f"SELECT table_name, key_columns, last_key, upper_key, done "
                f"FROM {STATE_SCHEMA}.backfill WHERE migration = %s ORDER BY table_name",
                (name,)).fetchall()
            base = layout["base"]
            for table_name, key_columns, last_key, upper_key, done in rows:
                if done:
                    continue
                lay = tables[table_name]
                table = sql.Identifier(base, table_name)
                marker = sql.Identifier(BACKFILL_MARKER)
                keys = sql.SQL(", ").join(sql.Identifier(c) for c in key_columns)
                casts = [sql.SQL(lay.types[c]) for c in key_columns]
                if upper_key is None:
                    # rows inserted from now on are written by the trigger: the backfill
                    # ends at the highest key that exists now
                    with self._conn.transaction():
                        top = self._conn.execute(sql.SQL(
                            "SELECT ARRAY[{}]::text[] FROM {} ORDER BY {} LIMIT 1").format(
                            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c))
                                               for c in key_columns),
                            table, sql.SQL(", ").join(sql.SQL("{} DESC").format(
                                sql.Identifier(c)) for c in key_columns))).fetchone()
                        total = self._conn.execute(sql.SQL(
                            "SELECT count(*) FROM {} WHERE {}").format(table, marker)
                        ).fetchone()[0]
                        upper_key = top[0] if top else []
                        self._conn.execute(
                            f"UPDATE {STATE_SCHEMA}.backfill SET upper_key = %s, "
                            "rows_total = %s WHERE migration = %s AND table_name = %s",
                            (upper_key, total, name, table_name))
                if not upper_key:
                    self._finish_table(name, table_name)
                    continue

                def row_of(values: list[str]) -> Any:
                    return sql.SQL("ROW({})").format(sql.SQL(", ").join(
                        sql.SQL("{}::{}").format(sql.Literal(v), cast)
                        for v, cast in zip(values, casts)))

                upper = row_of(upper_key)
                while max_batches is None or result.batches < max_batches:
                    lower = (sql.SQL(" AND ROW({}) > {}").format(keys, row_of(last_key))
                             if last_key else sql.SQL(""))
                    statement = sql.SQL(
                        "WITH batch AS (SELECT {k} FROM {t} WHERE {m} AND ROW({k}) <= {upper}"
                        "{lower} ORDER BY {k} LIMIT {n} FOR NO KEY UPDATE), "
                        "done AS (UPDATE {t} SET {m} = false FROM batch "
                        "WHERE ROW({tk}) = ROW({bk}) RETURNING 1) "
                        "SELECT (SELECT count(*) FROM done), "
                        "(SELECT ARRAY[{kt}]::text[] FROM batch ORDER BY {kd} LIMIT 1)").format(
                        k=keys, t=table, m=marker, upper=upper, lower=lower,
                        n=sql.Literal(size),
                        tk=sql.SQL(", ").join(sql.Identifier(base, table_name, c)
                                              for c in key_columns),
                        bk=sql.SQL(", ").join(sql.Identifier("batch", c) for c in key_columns),
                        kt=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c))
                                              for c in key_columns),
                        kd=sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(c))
                                              for c in key_columns))
                    try:
                        with self._conn.transaction():
                            self._conn.execute("SELECT set_config('lock_timeout', %s, true)",
                                               (f"{int(self.lock_timeout * 1000)}ms",))
                            count, last = self._conn.execute(statement).fetchone()
                            if count == 0 or last is None:
                                self._conn.execute(
                                    f"UPDATE {STATE_SCHEMA}.backfill SET done = true "
                                    "WHERE migration = %s AND table_name = %s",
                                    (name, table_name))
                            else:
                                self._conn.execute(
                                    f"UPDATE {STATE_SCHEMA}.backfill SET last_key = %s, "
                                    "rows_done = rows_done + %s WHERE migration = %s "
                                    "AND table_name = %s", (last, count, name, table_name))
                    except (psycopg.errors.LockNotAvailable,
                            psycopg.errors.DeadlockDetected,
                            psycopg.errors.SerializationFailure):
                        time.sleep(random.uniform(0.01, 0.05))
                        continue
                    except psycopg.Error as exc:
                        raise SchemaError(f"backfill of {table_name!r}: {_pg_message(exc)}",
                                          database=self._safe_url(), migration=name) from exc
                    if count == 0 or last is None:
                        break
                    last_key = last
                    result.rows += count
                    result.batches += 1
                else:
                    return result
            self._build_indexes(name, mdata, layout)
            self._conn.execute(f"UPDATE {STATE_SCHEMA}.migrations SET backfilled_at = now() "
                               "WHERE name = %s AND backfilled_at IS NULL", (name,))
            result.done = True
            return result
        finally:
            self._conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_KEY, name))

    def _finish_table(self, name: str, table_name: str) -> None:
        self._conn.execute(f"UPDATE {STATE_SCHEMA}.backfill SET done = true "
                           "WHERE migration = %s AND table_name = %s", (name, table_name))

    def _build_indexes(self, name: str, mdata: dict[str, Any], layout: dict[str, Any]) -> None:
        import psycopg
        from psycopg import sql

        for index in layout["indexes"]:
            ident = sql.Identifier(layout["base"], index["name"])
            for attempt in range(self.lock_attempts):
                state = self._conn.execute(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = "
                    "i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s",
                    (layout["base"], index["name"])).fetchone()
                if state and state[0]:
                    break
                if state:          # left INVALID by an interrupted build
                    self._conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}")
                                       .format(ident))
                try:
                    self._conn.execute(index["sql"])
                    break
                except psycopg.errors.LockNotAvailable:
                    time.sleep(random.uniform(0.05, 0.2))
                except psycopg.Error as exc:
                    self._conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}")
                                       .format(ident))
                    migration = migration_from_json(mdata)
                    error = self._config_error(migration, index["op"], _pg_message(exc))
                    self.rollback(name)
                    raise error from exc

    # ---------------------------------------------------------------- complete
    def _complete_statements(self, name: str, layout: dict[str, Any]
                             ) -> tuple[list[str], list[str]]:
        """(release schemas the contraction breaks, statements of the complete)."""
        from psycopg import sql

        base = layout["base"]
        tables = [_Layout.from_json(t) for t in layout["tables"]]
        others = [r for (r,) in self._conn.execute(
            f"SELECT schema FROM {STATE_SCHEMA}.releases WHERE schema <> %s ORDER BY seq",
            (layout["schema"],)).fetchall()]
        broken: set[str] = set()
        if any(raw.get("on_complete") for raw in layout["raw"]):
            broken.update(others)          # unknown SQL: assume it breaks every older view
        for lay in tables:
            if lay.created:
                continue
            dropped = list(lay.drop_at_complete)
            derived = any(p.kind == "add_column" for p in lay.pairs)
            rows = self._conn.execute(
                """SELECT DISTINCT vn.nspname, d.refobjsubid
                     FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                     JOIN pg_class v ON v.oid = r.ev_class
                     JOIN pg_namespace vn ON vn.oid = v.relnamespace
                     LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid
                                             AND a.attnum = d.refobjsubid
                    WHERE d.classid = 'pg_rewrite'::regclass
                      AND d.refclassid = 'pg_class'::regclass
                      AND d.refobjid = to_regclass(%s)
                      AND vn.nspname = ANY(%s)
                      AND (%s OR a.attname = ANY(%s))""",
                (sql.Identifier(base, lay.physical).as_string(self._conn), others,
                 derived, dropped)).fetchall()
            broken.update(schema for schema, _ in rows)
        statements: list[Any] = [sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(s))
                                 for s in others if s in broken]
        for lay in tables:
            if not lay.pairs:
                continue
            trigger, function = _trigger_names(name, lay.physical)
            statements.append(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(trigger), sql.Identifier(base, lay.physical)))
            statements.append(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                sql.Identifier(STATE_SCHEMA, function)))
        for lay in tables:
            table = sql.Identifier(base, lay.physical)
            for column in lay.drop_at_complete:
                statements.append(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                    table, sql.Identifier(column)))
            renames = [(physical, view) for view, physical in lay.view if physical != view]
            sources = {physical for physical, _ in renames}
            if any(view in sources for _, view in renames):
                temporary = [(physical, f"_upg_tmp_{n}") for n, (physical, _) in
                             enumerate(renames)]
                statements += [sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                    table, sql.Identifier(a), sql.Identifier(b)) for a, b in temporary]
                renames = [(tmp, view) for (_, tmp), (_, view) in zip(temporary, renames)]
            statements += [sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                table, sql.Identifier(a), sql.Identifier(b)) for a, b in renames]
            final = {physical: view for view, physical in lay.view}
            for constraint, physical in lay.checks:
                # PostgreSQL 12+ proves NOT NULL from the validated check: no table scan
                statements.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL")
                                  .format(table, sql.Identifier(final.get(physical, physical))))
                statements.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    table, sql.Identifier(constraint)))
            if lay.marker:
                statements.append(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                    table, sql.Identifier(BACKFILL_MARKER)))
            if lay.name != lay.physical:
                statements.append(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    table, sql.Identifier(lay.name)))
        for raw in layout["raw"]:
            if raw.get("on_complete"):
                statements.append(raw["on_complete"])
        return sorted(broken), [self._render(s) for s in statements]

    def _validations(self, layout: dict[str, Any]) -> list[Any]:
        from psycopg import sql

        out = []
        for t in layout["tables"]:
            table = sql.Identifier(layout["base"], t["physical"])
            for constraint in [c for c, _ in t["checks"]] + list(t["fks"]):
                out.append(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                    table, sql.Identifier(constraint)))
        return out

    def complete(self, name: str) -> None:
        """Contract: finish any pending backfill, validate the NOT VALID constraints (each in
        its own transaction, writes go on), then one transaction drops what only the old
        release needed, the triggers, and the view schemas the contraction breaks."""
        import psycopg

        active = self._active()
        if active is None or active[0] != name:
            raise SchemaError(f"migration {name!r} is not active", database=self._safe_url(),
                              migration=name)
        if not self._conn.execute(f"SELECT backfilled_at IS NOT NULL FROM {STATE_SCHEMA}."
                                  "migrations WHERE name = %s", (name,)).fetchone()[0]:
            self.backfill(name)
        layout = active[2]
        for statement in self._validations(layout):
            try:
                self._transaction(lambda s=statement: self._conn.execute(s),
                                  f"complete {name}")
            except psycopg.Error as exc:
                raise SchemaError(f"complete {name}: {_pg_message(exc)} (a row still breaks "
                                  "the new constraint; nothing was changed)",
                                  database=self._safe_url(), migration=name) from exc

        def work() -> None:
            self._lock()
            again = self._active()
            if again is None or again[0] != name:
                raise SchemaError(f"migration {name!r} is not active",
                                  database=self._safe_url(), migration=name)
            broken, statements = self._complete_statements(name, layout)
            for statement in statements:
                try:
                    self._conn.execute(statement)
                except psycopg.errors.LockNotAvailable:
                    raise
                except psycopg.Error as exc:
                    raise SchemaError(f"complete {name}: {statement[:200]}: "
                                      f"{_pg_message(exc)}", database=self._safe_url(),
                                      migration=name) from exc
            self._conn.execute(f"DELETE FROM {STATE_SCHEMA}.releases WHERE schema = ANY(%s)",
                               (broken,))
            self._conn.execute(f"DELETE FROM {STATE_SCHEMA}.backfill WHERE migration = %s",
                               (name,))
            self._conn.execute(f"UPDATE {STATE_SCHEMA}.migrations SET state = 'complete', "
                               "finished_at = now() WHERE name = %s", (name,))

        self._transaction(work, f"complete {name}")

    # ---------------------------------------------------------------- rollback
    def _rollback_statements(self, name: str, layout: dict[str, Any]) -> list[str]:
        from psycopg import sql

        statements: list[Any] = [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(layout["schema"]))]
        if layout.get("baseline") and layout.get("previous_schema"):
            statements.append(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(layout["previous_schema"])))
        for t in layout["tables"]:
            lay = _Layout.from_json(t)
            if lay.pairs:
                trigger, function = _trigger_names(name, lay.physical)
                statements.append(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    sql.Identifier(trigger), sql.Identifier(layout["base"], lay.physical)))
                statements.append(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                    sql.Identifier(STATE_SCHEMA, function)))
        statements += [undo for _, undo in reversed(layout["undo"])]
        return [self._render(s) for s in statements]

    def rollback(self, name: str) -> None:
        """Undo start in one transaction: the database is as before (only the history in
        ``upgrader_schema`` remembers the migration)."""
        import psycopg

        active = self._active()
        if active is None or active[0] != name:
            raise SchemaError(f"migration {name!r} is not active", database=self._safe_url(),
                              migration=name)
        layout = active[2]
        # a build of a concurrent index may have been left behind: it drops outside too
        for index in layout["indexes"]:
            from psycopg import sql

            self._conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                sql.Identifier(layout["base"], index["name"])))

        def work() -> None:
            self._lock()
            for statement in self._rollback_statements(name, layout):
                try:
                    self._conn.execute(statement)
                except psycopg.errors.LockNotAvailable:
                    raise
                except psycopg.Error as exc:
                    raise SchemaError(f"rollback {name}: {statement[:200]}: "
                                      f"{_pg_message(exc)}", database=self._safe_url(),
                                      migration=name) from exc
            self._conn.execute(f"DELETE FROM {STATE_SCHEMA}.releases WHERE migration = %s",
                               (name,))
            if layout.get("baseline"):
                self._conn.execute(f"DELETE FROM {STATE_SCHEMA}.releases WHERE schema = %s",
                                   (layout["previous_schema"],))
            self._conn.execute(f"DELETE FROM {STATE_SCHEMA}.backfill WHERE migration = %s",
                               (name,))
            self._conn.execute(f"UPDATE {STATE_SCHEMA}.migrations SET state = 'rolled_back', "
                               "finished_at = now() WHERE name = %s", (name,))

        self._transaction(work, f"rollback {name}")

    # ---------------------------------------------------------------- status
    def status(self) -> SchemaStatus:
        if not self._state_exists():
            return SchemaStatus(active=None, live=())
        active = self._active()
        live = tuple(
            LiveRelease(release=release, connection=search_path_setting(schema),
                        migration=migration, url=release_url(self.url, schema))
            for release, schema, migration in self._conn.execute(
                f"SELECT release, schema, migration FROM {STATE_SCHEMA}.releases ORDER BY seq"))
        history = tuple(tuple(row) for row in self._conn.execute(
            f"SELECT name, release, state FROM {STATE_SCHEMA}.migrations ORDER BY seq"))
        progress: dict[str, tuple[int, int]] = {}
        if active is not None:
            for table, done, total, finished in self._conn.execute(
                    f"SELECT table_name, rows_done, rows_total, done FROM {STATE_SCHEMA}."
                    "backfill WHERE migration = %s ORDER BY table_name", (active[0],)):
                total = total if total is not None else 0
                progress[table] = (total if finished else done, total)
        return SchemaStatus(active=active[0] if active else None, live=live,
                            history=history, backfill=progress)


def _pg_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or str(exc).strip().splitlines()[0]


def _is_input_error(exc: Exception) -> bool:
    """An error caused by what the migration says (SQL in it, names, data that does not
    fit), not by the database being unavailable."""
    state = getattr(exc, "sqlstate", None) or ""
    return state[:2] in ("42", "22", "23", "0A", "2B", "P0", "44")

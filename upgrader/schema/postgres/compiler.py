"""PostgreSQL schema changes: a migration's operations compiled into SQL over the catalogue.

:class:`Compiler` turns each operation into DDL on the base tables (new physical columns,
NOT VALID checks, the backfill marker), the undo of that DDL, the views of the new release
and the triggers that keep old and new physical columns in step. With ``execute`` each
operation's statements run as soon as they are made (so raw SQL is seen by the operations
after it); without, they are only collected (``plan``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from ...errors import ConfigError
from ..model import (
    OPERATIONS,
    AddColumn,
    AddIndex,
    ChangeType,
    Column,
    CreateTable,
    DropColumn,
    Migration,
    RawSQL,
    RenameColumn,
    RenameTable,
    SetNotNull,
    new_column_name,
)
from .catalog import (
    BACKFILL_MARKER,
    MAX_IDENT,
    RESERVED_PREFIX,
    Col,
    Layout,
    Pair,
    Table,
    read_catalog,
    release_schema,
    render,
    short_hash,
)


def operation_error(migration: Migration, i: int, message: str,
                    key: str | None = None) -> ConfigError:
    """A ConfigError for operation ``i`` of ``migration``: the file, the line of ``key``
    inside the operation's table, ``operations[i].key``."""
    from ..loader import _operation_error

    op = migration.operations[i]
    kind = next((k for k, cls in OPERATIONS.items() if isinstance(op, cls)), "?")
    # the loader's locator finds the line of the key inside the operation's table
    error = _operation_error(migration, i, key.split(".")[0] if key else None,
                             f"{kind}: {message}")
    error.key = f"operations[{i}]" + (f".{key}" if key else "")
    error.args = (error.location_text() + error.message,)
    return error


class Compiler:
    """Turns a migration into statements over the catalogue as found. With ``execute`` the
    statements of each operation run as soon as they are made (so raw SQL is seen by the
    operations after it); without, they are only collected (``plan``)."""

    def __init__(self, conn: Any, base_schema: str, migration: Migration, *,
                 execute: Callable[[int | None, Any], None] | None) -> None:
        from psycopg import sql

        self.sql = sql
        self.conn = conn
        self.m = migration
        self.execute = execute
        self.base = base_schema
        self.schema = release_schema(migration.release)
        self.catalog = read_catalog(conn, self.base)
        self.layouts: dict[str, Layout] = {}
        for table in self.catalog.values():
            self._adopt(table)
        self.statements: list[tuple[int | None, Any]] = []
        self.undo: list[tuple[int | None, str]] = []
        self.indexes: list[dict[str, Any]] = []
        self.raw: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- helpers
    def _adopt(self, table: Table) -> None:
        self.layouts[table.name] = Layout(
            physical=table.name, name=table.name,
            view=[[c, c] for c in table.columns], key=list(table.key),
            types={c.name: c.type for c in table.columns.values()})

    def original(self, layout: Layout) -> dict[str, Col]:
        """The columns of ``layout``'s table as found before this migration."""
        table = self.catalog.get(layout.physical)
        return table.columns if table is not None and not layout.created else {}

    def ident(self, *names: str) -> Any:
        return self.sql.Identifier(*names)

    def table_ident(self, layout: Layout) -> Any:
        return self.ident(self.base, layout.physical)

    def render(self, statement: Any) -> str:
        return render(self.conn, statement)

    def emit(self, op: int | None, statement: Any) -> None:
        self.statements.append((op, statement))
        if self.execute is not None:
            self.execute(op, statement)

    def emit_undo(self, op: int | None, statement: Any) -> None:
        self.undo.append((op, self.render(statement)))

    def bad(self, i: int, message: str, key: str | None = None) -> ConfigError:
        return operation_error(self.m, i, message, key)

    def resolve(self, i: int, table: str) -> Layout:
        for layout in self.layouts.values():
            if layout.name == table:
                return layout
        raise self.bad(i, f"unknown table {table!r} (schema {self.base!r})", "table")

    def column(self, i: int, layout: Layout, column: str, key: str = "column") -> str:
        physical = layout.physical_of(column)
        if physical is None:
            raise self.bad(i, f"unknown column {column!r} in table {layout.name!r}", key)
        return physical

    def check_new_name(self, i: int, name: str, key: str) -> None:
        if not name:
            raise self.bad(i, "empty name", key)
        if name.startswith(RESERVED_PREFIX):
            raise self.bad(i, f"{name!r}: names starting with {RESERVED_PREFIX!r} are "
                              "reserved for upgrader", key)
        if len(name.encode()) > MAX_IDENT:
            raise self.bad(i, f"{name!r} is longer than {MAX_IDENT} bytes", key)

    def refresh(self) -> None:
        """After raw SQL: adopt new tables, append new columns to the new release's view."""
        if self.execute is None:
            return
        catalog = read_catalog(self.conn, self.base)
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

    def add_physical_column(self, i: int, layout: Layout, physical: str, type_: str, *,
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
            constraint = f"_upg_nn_{short_hash(self.m.name, layout.physical, physical)}"
            # NOT VALID: enforced for every new write at once, checked for old rows at
            # complete (VALIDATE takes only SHARE UPDATE EXCLUSIVE), then SET NOT NULL
            # uses the validated check instead of scanning under ACCESS EXCLUSIVE
            self.emit(i, sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) "
                                 "NOT VALID").format(self.table_ident(layout),
                                                     self.ident(constraint),
                                                     self.ident(physical)))
            layout.checks.append([constraint, physical])

    def need_backfill(self, i: int, layout: Layout) -> None:
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
        layout = Layout(physical=op.table, name=op.table, created=True,
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
            layout.pairs.append(Pair("add_column", i, None, physical, op.up, None,
                                      new_type=column.type, alias=None))
        layout.view.append([column.name, physical])
        if column.references:
            target, target_column = self.references(i, column.references)
            constraint = f"_upg_fk_{short_hash(self.m.name, layout.physical, physical)}"
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
            layout.pairs.append(Pair("drop_column", i, physical, None, None, op.down,
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

    def _duplicate(self, i: int, op: ChangeType | SetNotNull, kind: str) -> tuple[Layout,
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
        layout.pairs.append(Pair("change_type", i, physical, new, op.up, op.down,
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
        layout.pairs.append(Pair("set_not_null", i, physical, new, self.render(up), down,
                                  new_type=info.type, old_type=info.type, alias=op.column))

    def _swap(self, layout: Layout, physical: str, new: str) -> None:
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
        exists = self.conn.execute(
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
            self.indexes.append({"op": i, "name": op.name, "sql": self.render(statement)})
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
        if not (op.up or "").strip() or (op.down is not None and not op.down.strip()):
            raise self.bad(i, "sql needs both `up` and `down`", "up" if not op.up else "down")
        self.emit(i, self.sql.SQL(op.up))
        if op.down is not None:     # irreversible: a rollout freezes rather than roll back
            self.undo.append((i, op.down))
        self.raw.append({"op": i, "on_complete": op.on_complete})
        self.refresh()

    # ---------------------------------------------------------------- views and triggers
    def view_statements(self, schema: str, layouts: Iterable[Layout]) -> list[Any]:
        sql = self.sql
        statements = [sql.SQL("CREATE SCHEMA {}").format(self.ident(schema))]
        for layout in sorted(layouts, key=lambda lay: lay.name):
            columns = [sql.SQL("{} AS {}").format(self.ident(physical), self.ident(name))
                       for name, physical in layout.view]
            statements.append(sql.SQL("CREATE VIEW {} AS SELECT {} FROM {}").format(
                self.ident(schema, layout.name), sql.SQL(", ").join(columns),
                self.table_ident(layout)))
        return statements

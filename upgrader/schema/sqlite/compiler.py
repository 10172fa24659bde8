"""SQLite schema changes: a migration's start compiled into DDL, its undo, the contract
steps of complete, the backfill and the view specs of both releases.

:func:`compile_start` works over a :class:`Start` (the catalogue, the previous and the new
release's view specs, and the statements collected so far); each operation has a function
of its own (``_create_table``, ``_add_column``, ...) that adds to it.
"""

from __future__ import annotations

import copy
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..loader import _operation_error, op_name, validate_against
from ..model import (
    AddColumn,
    AddIndex,
    ChangeType,
    Column,
    CreateTable,
    DropColumn,
    Migration,
    Operation,
    RawSQL,
    RenameColumn,
    RenameTable,
    SetNotNull,
    new_column_name,
)
from .catalog import (
    LITERAL_RE,
    NOT_NULL_PREFIX,
    UNIQUE_PREFIX,
    Catalogue,
    identity_spec,
    quote,
    split_statements,
)


@dataclass
class StartPlan:
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
        parts.append(f"DEFAULT {default}" if LITERAL_RE.fullmatch(default.strip())
                     else f"DEFAULT ({default})")
    if column.references:
        match = re.fullmatch(r"\s*(\w+)\s*\(\s*(\w+)\s*\)\s*", column.references)
        if match is None:     # the loader checked the form; keep the text as written
            parts.append(f"REFERENCES {column.references}")
        else:
            table, col = match.groups()
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


def not_null_guard(table: str, logical: str, physical: str) -> list[str]:
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


@dataclass
class Start:
    """What compiling a start has gathered so far (see :class:`StartPlan`)."""

    migration: Migration
    cat: Catalogue
    #: the previous release's specs (physical table -> spec), rewritten for the new columns
    old: dict[str, dict[str, Any]]
    #: the new release's specs
    new: dict[str, dict[str, Any]]
    ddl: list[str] = field(default_factory=list)
    undo: list[str] = field(default_factory=list)
    contract: list[list[Any]] = field(default_factory=list)
    backfill: dict[str, list[list[str]]] = field(default_factory=dict)
    hidden: set[tuple[str, str]] = field(default_factory=set)
    keep_others: bool = True

    def fail(self, i: int, key: str | None, message: str) -> None:
        raise _operation_error(self.migration, i, key, message)

    @staticmethod
    def physical_of(spec: dict[str, Any], logical: str) -> str:
        for lg, p in spec["columns"]:
            if lg == logical:
                return str(p)
        raise KeyError(logical)

    def check_droppable(self, i: int, table: str, physical: str, what: str) -> None:
        column = self.cat.column(table, physical)
        if column.pk:
            self.fail(i, "column", f"cannot {what} {table}.{physical} on SQLite: it is part of "
                                   f"the primary key")
        for index, (itable, icols, unique, isql) in self.cat.indexes.items():
            if itable == table and physical in icols and unique and isql is None:
                self.fail(i, "column", f"cannot {what} {table}.{physical} on SQLite: a UNIQUE "
                                       f"constraint uses it ({index})")

    def need_rowid(self, i: int, table: str) -> None:
        if table in self.cat.without_rowid:
            self.fail(i, "table", f"table {table!r} is a WITHOUT ROWID table: upgrader's SQLite "
                                  f"views need a rowid")


def _create_table(s: Start, i: int, op: CreateTable) -> None:
    s.ddl.append(_create_table_sql(op))
    s.undo.insert(0, f"DROP TABLE {quote(op.table)}")
    s.new[op.table] = identity_spec(op.table, [c.name for c in op.columns])


def _add_column(s: Start, i: int, op: AddColumn) -> None:
    s.need_rowid(i, op.table)
    spec, c = s.new[op.table], op.column
    physical = c.name if op.up is None else new_column_name(c.name)
    column = Column(physical, c.type, c.nullable, c.default, False, False, c.references)
    add_not_null = not c.nullable and c.default is not None and op.up is None
    s.ddl.append(f"ALTER TABLE {quote(op.table)} ADD COLUMN "
                 f"{_column_sql(column if add_not_null else _nullable(column), add=True)}")
    undone = [f"ALTER TABLE {quote(op.table)} DROP COLUMN {quote(physical)}"]
    if not c.nullable and not add_not_null:
        guards = not_null_guard(op.table, c.name, physical)
        s.ddl.extend(guards)
        undone[:0] = [f"DROP TRIGGER {quote(n)}" for n in _guard_names(op.table, c.name)]
    if c.unique:
        index = f"{UNIQUE_PREFIX}{op.table}_{c.name}"
        s.ddl.append(f"CREATE UNIQUE INDEX {quote(index)} ON {quote(op.table)} "
                     f"({quote(physical)})")
        undone.insert(0, f"DROP INDEX {quote(index)}")
    s.undo[:0] = undone
    spec["columns"].append([c.name, physical])
    spec["writes"][physical] = {"copy": c.name}
    if op.up is not None:
        s.keep_others = False
        if op.table in s.old:
            s.old[op.table]["writes"][physical] = {"expr": op.up, "source": None}
        # with a default, rows from before read the default until the backfill
        # reaches them: it fills those too (see backfill_sets)
        s.backfill.setdefault(op.table, []).append(
            [physical, op.up] + ([c.default] if c.default is not None else []))
        s.contract.append(["rename_column", op.table, physical, c.name])


def _drop_column(s: Start, i: int, op: DropColumn) -> None:
    s.need_rowid(i, op.table)
    spec = s.new[op.table]
    physical = s.physical_of(spec, op.column)
    s.check_droppable(i, op.table, physical, "drop")
    pcol = s.cat.column(op.table, physical)
    if pcol.notnull and pcol.default is None and op.down is None:
        s.fail(i, "down", f"{op.table}.{op.column} is NOT NULL without a default: the "
                          f"previous release still reads it, so rows the new release "
                          f"inserts need a value: give `down` (an SQL expression over "
                          f"the new release's columns)")
    spec["columns"] = [[lg, p] for lg, p in spec["columns"] if lg != op.column]
    if op.down is not None:   # a value for the rows it inserts; updates keep it
        spec["writes"][physical] = {"expr": op.down, "source": None, "insert_only": True}
    else:
        spec["writes"].pop(physical, None)
    s.hidden.add((op.table, physical))
    s.contract.append(["drop_column", op.table, physical])


def _rename_column(s: Start, i: int, op: RenameColumn) -> None:
    s.need_rowid(i, op.table)
    spec = s.new[op.table]
    physical = s.physical_of(spec, op.column)
    spec["columns"] = [[op.to if lg == op.column else lg, p] for lg, p in spec["columns"]]
    spec["writes"][physical] = {"copy": op.to}
    s.contract.append(["rename_column", op.table, physical, op.to])


def _change_column(s: Start, i: int, op: ChangeType | SetNotNull) -> None:
    """change_type and set_not_null: a new physical column beside the old, backfilled."""
    s.need_rowid(i, op.table)
    s.keep_others = False
    spec = s.new[op.table]
    physical = s.physical_of(spec, op.column)
    what = "change the type of" if isinstance(op, ChangeType) else "set NOT NULL on"
    s.check_droppable(i, op.table, physical, what)
    pcol = s.cat.column(op.table, physical)
    target = new_column_name(op.column)
    sql_type = op.type if isinstance(op, ChangeType) else pcol.type
    column = Column(target, sql_type, True, None)
    s.ddl.append(f"ALTER TABLE {quote(op.table)} ADD COLUMN {_column_sql(column, add=True)}")
    undone = [f"ALTER TABLE {quote(op.table)} DROP COLUMN {quote(target)}"]
    if isinstance(op, SetNotNull):
        s.ddl.extend(not_null_guard(op.table, op.column, target))
        undone[:0] = [f"DROP TRIGGER {quote(n)}" for n in _guard_names(op.table, op.column)]
    s.undo[:0] = undone
    spec["columns"] = [[lg, target if lg == op.column else p] for lg, p in spec["columns"]]
    spec["writes"][target] = {"copy": op.column}
    down = op.down if op.down is not None else quote(op.column)
    source = op.column if isinstance(op, ChangeType) else None
    spec["writes"][physical] = {"expr": down, "source": source}
    if op.table in s.old:
        s.old[op.table]["writes"][target] = {"expr": op.up, "source": source}
    s.backfill.setdefault(op.table, []).append([target, op.up])
    s.hidden.add((op.table, physical))
    s.contract.append(["drop_column", op.table, physical])
    s.contract.append(["rename_column", op.table, target, op.column])
    s.contract.append(["recreate_indexes", op.table, op.column])
    if isinstance(op, ChangeType) and pcol.notnull:
        s.contract.append(["not_null", op.table, op.column])


def _add_index(s: Start, i: int, op: AddIndex) -> None:
    spec = s.new[op.table]
    cols = ", ".join(quote(s.physical_of(spec, c)) for c in op.columns)
    unique = "UNIQUE " if op.unique else ""
    s.ddl.append(f"CREATE {unique}INDEX {quote(op.name)} ON {quote(spec['table'])} ({cols})")
    s.undo.insert(0, f"DROP INDEX {quote(op.name)}")


def _rename_table(s: Start, i: int, op: RenameTable) -> None:
    s.need_rowid(i, op.table)
    s.new[op.table]["view"] = op.to
    s.contract.append(["rename_table", op.table, op.to])


def _raw_sql(s: Start, i: int, op: RawSQL) -> None:
    statements = split_statements(op.up)
    if not statements:
        s.fail(i, "up", "no SQL statement in `up`")
    s.ddl.extend(statements)
    if op.down is not None:     # irreversible: a rollout freezes rather than roll back
        s.undo[:0] = split_statements(op.down)
    if op.on_complete:
        s.contract.append(["sql", op.on_complete])


#: the function that compiles each kind of operation
_COMPILERS: dict[type, Callable[[Start, int, Any], None]] = {
    CreateTable: _create_table,
    AddColumn: _add_column,
    DropColumn: _drop_column,
    RenameColumn: _rename_column,
    ChangeType: _change_column,
    SetNotNull: _change_column,
    AddIndex: _add_index,
    RenameTable: _rename_table,
    RawSQL: _raw_sql,
}


def compile_start(conn: sqlite3.Connection, migration: Migration, cat: Catalogue,
                  live: dict[str, dict[str, dict[str, Any]]], previous: str | None,
                  generation: int) -> StartPlan:
    """The plan of starting ``migration`` over the catalogue ``cat`` with the releases
    ``live`` (release -> physical table -> spec); ConfigError (with the operation's line)
    for an operation SQLite cannot do live or that names an unknown table or column."""
    catalogue = {t: [c.name for c in cols] for t, cols in cat.tables.items()}
    if previous is not None and previous in live:
        old = copy.deepcopy(live[previous])
        # the previous release reads every table by its physical name (the last complete
        # renamed everything to its final name)
        catalogue_prev = {s["view"]: [lg for lg, _ in s["columns"]] for s in old.values()}
        for table in catalogue:
            catalogue_prev.setdefault(table, catalogue[table]) if table not in old else None
    else:
        old = {t: identity_spec(t, cols) for t, cols in catalogue.items()} \
            if previous is not None else {}
        catalogue_prev = dict(catalogue)
    validate_against(migration, catalogue_prev, cat.indexes.keys())
    new = copy.deepcopy(old) if old else {t: identity_spec(t, cols)
                                          for t, cols in catalogue.items()}
    s = Start(migration, cat, old, new)
    for i, op in enumerate(migration.operations):
        compile_operation: Callable[[Start, int, Operation], None] = _COMPILERS[type(op)]
        compile_operation(s, i, op)
    return StartPlan(migration, previous, generation, s.ddl, s.undo, s.contract, s.backfill,
                     s.old, s.new, s.keep_others, s.hidden)

def _nullable(column: Column) -> Column:
    return Column(column.name, column.type, True, column.default, False, False,
                  column.references)


def discover(spec_by_table: dict[str, dict[str, Any]], cat: Catalogue,
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
        spec["columns"] = [[lg, p] for lg, p in spec["columns"]
                           if p in {c.name for c in cols}]
        spec["writes"] = {p: w for p, w in spec["writes"].items()
                          if p in {c.name for c in cols}}
    return out





def backfill_sets(jobs: list[list[str]]) -> str:
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


def statement_operation(plan: StartPlan, sql: str) -> int | None:
    """The operation a failing raw SQL statement came from (for the error's line)."""
    for i, op in enumerate(plan.migration.operations):
        if isinstance(op, RawSQL) and sql in split_statements(op.up):
            return i
    return None


def apply_contract(specs: dict[str, dict[str, Any]], contract: list[list[Any]],
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
            spec["columns"] = [[lg, new if p == old else p] for lg, p in spec["columns"]]
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


def migration_data(migration: Migration) -> dict[str, Any]:
    return {"name": migration.name, "release": migration.release,
            "previous": migration.previous, "batch_size": migration.batch_size,
            "source": str(migration.source) if migration.source else None,
            "operations": [op_name(op) for op in migration.operations]}

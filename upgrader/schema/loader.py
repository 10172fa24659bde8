"""Migration files (TOML) -> :class:`~upgrader.schema.model.Migration`, every key checked;
and the fleet file's part of a schema change (:func:`parse_schema`: ``[schema]`` and
``[release] migration``).

Every problem is a :class:`~upgrader.errors.ConfigError` naming the file, the key path
(``operations[2].up``) and the line. :func:`validate_against` checks a migration against a
database's catalogue (tables and their columns) before a backend changes anything, so an
unknown table or column names the operation's line too. The format: docs/SCHEMA.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..errors import ConfigError
from ..model import SchemaSpec
from ..tomlsource import (
    Checker,
    KeyPath,
    check_boolean,
    describe_value,
    did_you_mean,
    format_key_path,
    line_in_file,
    parse_toml,
    read_text,
)
from .model import (
    NEW_COLUMN_PREFIX,
    OPERATIONS,
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
)

__all__ = [
    "IDENTIFIER_RE",
    "Catalogue",
    "load_migration",
    "loads",
    "op_name",
    "parse_schema",
    "validate_against",
]

#: table -> its column names, in order
Catalogue = Mapping[str, Sequence[str]]

#: table, column and index names: what needs no quoting in expressions on either database.
#: 54 characters at most so that ``_upg_new_<name>`` fits PostgreSQL's 63.
IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,53}")
#: prefixes upgrader keeps for its own objects
RESERVED_PREFIXES = (NEW_COLUMN_PREFIX, "_upgrader_", "sqlite_", "pg_")
RELEASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,62}")
#: an SQL type: words, an optional (n) or (n, m), optional [] (PostgreSQL arrays)
TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?: [A-Za-z][A-Za-z0-9_]*)*"
                     r"(?: ?\(\s*\d+\s*(?:,\s*\d+\s*)?\))?(?:\[\])*")
MAX_EXPRESSION = 4096
MAX_BATCH = 1_000_000

TOP_KEYS = ("name", "release", "previous", "batch_size", "operations")
COLUMN_KEYS = ("name", "type", "nullable", "default", "primary_key", "unique", "references")
#: op -> (required keys, optional keys), besides "op"
OP_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "create_table": (("table", "columns"), ()),
    "add_column": (("table", "column"), ("up",)),
    "drop_column": (("table", "column"), ("down",)),
    "rename_column": (("table", "column", "to"), ()),
    "change_type": (("table", "column", "type", "up", "down"), ()),
    "set_not_null": (("table", "column", "up"), ("down",)),
    "add_index": (("table", "name", "columns"), ("unique",)),
    "rename_table": (("table", "to"), ()),
    "sql": (("up",), ("down", "on_complete", "irreversible")),
}
REFERENCES_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")


def op_name(operation: Operation) -> str:
    """The ``op`` value of an operation (``add_column``, ``sql``, ...)."""
    for name, cls in OPERATIONS.items():
        if type(operation) is cls:
            return name
    raise TypeError(f"not an operation: {operation!r}")


# --------------------------------------------------------------------------------------------
# Entry points


def load_migration(path: str | Path) -> Migration:
    """Read and check the migration file at ``path``."""
    path = Path(path)
    return loads(read_text(path, "migration file"), source=path)


def loads(text: str, *, source: str | Path = "<string>") -> Migration:
    """Check migration-file ``text``; its name defaults to the stem of ``source``."""
    return _Checker(source, text).migration(parse_toml(text, source))


def parse_schema(schema: object, release: Mapping[str, Any], checker: Checker, *,
                 current: str, target: str, default_database: Path | None,
                 base_dir: Path) -> SchemaSpec | None:
    """The fleet file's schema change: ``[release] migration`` (a file, relative to
    ``base_dir``, the fleet file's folder) and the ``[schema]`` table ``schema`` (None when
    absent) with its ``database`` (``default_database``, a lab's own, when not given).
    ``checker`` is the fleet file's. The migration is loaded and checked now, so that a bad
    one stops the rollout before anything changes. None when there is no migration."""
    table = checker.table({} if schema is None else schema, ("schema",), ("database",),
                          "[schema]")
    if "migration" not in release:
        if "database" in table:
            checker.error(("schema", "database"), "[schema] database is set but [release] "
                          "names no migration")
        return None
    text = checker.path(release, ("release",), "migration", what="migration file path")
    if "database" in table:
        database = checker.string(table, ("schema",), "database", what="database")
        if "://" in database:
            checker.url(table, ("schema",), "database", what="database URL")
        else:
            checker.path(table, ("schema",), "database", what="database file path")
    elif default_database is not None:
        database = str(default_database)
    else:
        checker.error(("schema",), "[release] migration needs a [schema] table with the "
                      "database it changes (database = a SQLite file or a postgresql:// URL)")
    if "://" not in database:
        # like [flags] store: relative to the working folder
        database = str(Path(database).expanduser().resolve())
    try:
        path = (base_dir / Path(text).expanduser()).resolve()
        found = path.is_file()
    except (OSError, ValueError) as exc:    # the OS refuses the name (too long, a loop, ...)
        checker.error(("release", "migration"), f"cannot use the migration file path: {exc}")
    if not found:
        checker.error(("release", "migration"), f"migration file {path} does not exist")
    migration = load_migration(path)   # its own ConfigError names the migration file
    if migration.release != target:
        checker.error(("release", "migration"),
                      f"migration {migration.name} creates the views of release "
                      f"{migration.release!r}, but the target release is {target!r}")
    if migration.previous is not None and migration.previous != current:
        checker.error(("release", "migration"),
                      f"migration {migration.name} follows release {migration.previous!r}, "
                      f"but the current release is {current!r}")
    return SchemaSpec(database=database, migration=path, migration_name=migration.name)


class _Checker:
    """The migration file's checks, on the toolkit's :class:`Checker`."""

    def __init__(self, source: str | Path, text: str | None) -> None:
        self.source = source
        self.text = text
        self.checker = Checker(source, text)

    def line(self, path: KeyPath) -> int | None:
        return self.checker.line_of(path)

    def error(self, path: KeyPath, message: str) -> NoReturn:
        self.checker.error(path, message)

    # -- shapes

    def table(self, value: Any, path: KeyPath, allowed: Collection[str],
              where: str) -> dict[str, Any]:
        return self.checker.table(value, path, allowed, where)

    def required(self, table: Mapping[str, Any], path: KeyPath, key: str, where: str) -> Any:
        return self.checker.get(table, path, key, where=where)

    def string(self, value: Any, path: KeyPath, what: str) -> str:
        if not isinstance(value, str):
            self.error(path, f"expected a string ({what}), got {describe_value(value)}")
        if not value.strip():
            self.error(path, f"expected a non-empty string ({what})")
        if "\x00" in value:
            self.error(path, f"a {what} may not contain NUL")
        return value

    def identifier(self, raw: object, path: KeyPath, what: str) -> str:
        value = self.string(raw, path, what)
        if not IDENTIFIER_RE.fullmatch(value):
            self.error(path, f"{value!r} is not a valid {what} name (letters, digits and '_', "
                             f"not starting with a digit, at most 54 characters)")
        for prefix in RESERVED_PREFIXES:
            if value.lower().startswith(prefix):
                self.error(path, f"{value!r}: names starting with {prefix!r} are reserved "
                                 f"for upgrader and the database")
        return value

    def expression(self, raw: object, path: KeyPath, what: str) -> str:
        value = self.string(raw, path, what)
        if len(value) > MAX_EXPRESSION:
            self.error(path, f"a {what} may have at most {MAX_EXPRESSION} characters")
        if ";" in value:
            self.error(path, f"a {what} is one SQL expression: it may not contain ';'")
        return value.strip()

    def sql(self, raw: object, path: KeyPath, what: str) -> str:
        return self.string(raw, path, what).strip()

    def boolean(self, value: object, path: KeyPath) -> bool:
        return bool(self.checker.checked(path, check_boolean, value))

    def sql_type(self, raw: object, path: KeyPath) -> str:
        value = self.string(raw, path, "SQL type").strip()
        if not TYPE_RE.fullmatch(value):
            self.error(path, f"{value!r} is not an SQL type upgrader accepts (words, an "
                             f"optional (n) or (n, m), optional []: 'integer', "
                             f"'varchar(40)', 'numeric(10, 2)', 'text[]')")
        return value

    # -- the document

    def migration(self, data: dict[str, Any]) -> Migration:
        self.table(data, (), TOP_KEYS, "the migration file")
        stem = Path(str(self.source)).stem if self.source != "<string>" else "migration"
        name = data.get("name", stem)
        name = self.string(name, ("name",), "migration name")
        if not RELEASE_RE.fullmatch(name):
            self.error(("name",) if "name" in data else (),
                       f"{name!r} is not a valid migration name (letters, digits, '.', '_', "
                       f"'+' and '-', starting with a letter or digit, at most 63 characters)"
                       + ("" if "name" in data else "; set `name = ...`"))
        release = self.release(self.required(data, (), "release", "the migration file"),
                               ("release",))
        previous = data.get("previous")
        if previous is not None:
            previous = self.release(previous, ("previous",))
            if previous == release:
                self.error(("previous",), f"previous release {previous!r} is the migration's "
                                          f"own release")
        batch_size = data.get("batch_size", 1000)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
                or not 1 <= batch_size <= MAX_BATCH:
            self.error(("batch_size",), f"batch_size must be an integer from 1 to {MAX_BATCH}, "
                                        f"got {describe_value(batch_size)}")
        raw_ops = self.required(data, (), "operations", "the migration file")
        if not isinstance(raw_ops, list) or not raw_ops:
            self.error(("operations",), "expected at least one [[operations]] table")
        operations = tuple(self.operation(raw, ("operations", i))
                           for i, raw in enumerate(raw_ops))
        lines = tuple(self.line(("operations", i)) for i in range(len(operations)))
        migration = Migration(name=name, release=release, previous=previous,
                              operations=operations, batch_size=batch_size,
                              source=Path(self.source) if self.text is not None else None,
                              lines=lines)
        _check_within(migration, self.error)
        return migration

    def release(self, raw: object, path: KeyPath) -> str:
        value = self.string(raw, path, "release")
        if not RELEASE_RE.fullmatch(value):
            self.error(path, f"{value!r} is not a valid release (letters, digits, '.', '_', "
                             f"'+' and '-', starting with a letter or digit, at most 63 "
                             f"characters)")
        return value

    def operation(self, raw: Any, path: KeyPath) -> Operation:
        if not isinstance(raw, dict):
            self.error(path, f"expected a table, got {describe_value(raw)}")
        op = self.required(raw, path, "op", "an operation")
        if not isinstance(op, str) or op not in OP_KEYS:
            shown = op if isinstance(op, str) else describe_value(op)
            self.error(path + ("op",), f"unknown operation {shown!r}"
                       f"{did_you_mean(str(op), OP_KEYS)}; known: {', '.join(OP_KEYS)}")
        required, optional = OP_KEYS[op]
        self.table(raw, path, ("op",) + required + optional, f"a {op} operation")
        for key in required:
            self.required(raw, path, key, f"a {op} operation")

        def p(key: str) -> KeyPath:
            return path + (key,)

        if op == "create_table":
            cols = raw["columns"]
            if not isinstance(cols, list) or not cols:
                self.error(p("columns"), "expected an array of column tables "
                                         "(columns = [{ name = ..., type = ... }, ...])")
            columns = tuple(self.column(c, p("columns") + (i,)) for i, c in enumerate(cols))
            seen: dict[str, int] = {}
            for i, col in enumerate(columns):
                if col.name in seen:
                    self.error(p("columns") + (i, "name"), f"column {col.name!r} appears twice")
                seen[col.name] = i
            return CreateTable(self.identifier(raw["table"], p("table"), "table"), columns)
        if op == "sql":
            irreversible = self.boolean(raw["irreversible"], p("irreversible")) \
                if "irreversible" in raw else False
            if irreversible and "down" in raw:
                self.error(p("down"), "an irreversible sql operation has no `down` (drop "
                                      "`down`, or `irreversible`)")
            if not irreversible and "down" not in raw:
                self.error(p("down"), "missing `down` (the SQL that undoes `up`); an "
                                      "operation that cannot be undone says "
                                      "irreversible = true")
            return RawSQL(up=self.sql(raw["up"], p("up"), "SQL statement"),
                          down=(self.sql(raw["down"], p("down"), "SQL statement")
                                if "down" in raw else None),
                          on_complete=(self.sql(raw["on_complete"], p("on_complete"),
                                                "SQL statement")
                                       if "on_complete" in raw else None))
        table = self.identifier(raw["table"], p("table"), "table")
        if op == "add_column":
            new = self.column(raw["column"], p("column"))
            if new.primary_key:
                self.error(p("column") + ("primary_key",),
                           "add_column cannot add a primary key column")
            up = self.expression(raw["up"], p("up"), "SQL expression") if "up" in raw \
                else None
            if not new.nullable and new.default is None and up is None:
                self.error(p("column") + ("nullable",),
                           "a NOT NULL column needs a value for the existing rows and for "
                           "the rows the previous release writes: give it a `default` or "
                           "an `up` expression")
            return AddColumn(table, new, up)
        if op == "add_index":
            cols = raw["columns"]
            if not isinstance(cols, list) or not cols:
                self.error(p("columns"), "expected a non-empty array of column names")
            names = tuple(self.identifier(c, p("columns") + (i,), "column")
                          for i, c in enumerate(cols))
            if len(set(names)) != len(names):
                self.error(p("columns"), "a column appears twice")
            return AddIndex(table, self.identifier(raw["name"], p("name"), "index"), names,
                            self.boolean(raw.get("unique", False), p("unique")))
        if op == "rename_table":
            to = self.identifier(raw["to"], p("to"), "table")
            if to == table:
                self.error(p("to"), "the new name is the old name")
            return RenameTable(table, to)
        column = self.identifier(raw["column"], p("column"), "column")
        if op == "drop_column":
            down = self.expression(raw["down"], p("down"), "SQL expression") \
                if "down" in raw else None
            return DropColumn(table, column, down)
        if op == "rename_column":
            to = self.identifier(raw["to"], p("to"), "column")
            if to == column:
                self.error(p("to"), "the new name is the old name")
            return RenameColumn(table, column, to)
        if op == "change_type":
            return ChangeType(table, column, self.sql_type(raw["type"], p("type")),
                              up=self.expression(raw["up"], p("up"), "SQL expression"),
                              down=self.expression(raw["down"], p("down"), "SQL expression"))
        assert op == "set_not_null"
        return SetNotNull(table, column,
                          up=self.expression(raw["up"], p("up"), "SQL expression"),
                          down=(self.expression(raw["down"], p("down"), "SQL expression")
                                if "down" in raw else None))

    def column(self, raw: Any, path: KeyPath) -> Column:
        raw = self.table(raw, path, COLUMN_KEYS, "a column")
        for key in ("name", "type"):
            self.required(raw, path, key, "a column")
        name = self.identifier(raw["name"], path + ("name",), "column")
        default = raw.get("default")
        if default is not None:
            if isinstance(default, bool):
                default = "1" if default else "0"
            elif isinstance(default, (int, float)):
                default = repr(default)
            else:
                default = self.expression(default, path + ("default",), "default expression")
        references = raw.get("references")
        if references is not None:
            references = self.string(references, path + ("references",), "reference")
            if not REFERENCES_RE.fullmatch(references.strip()):
                self.error(path + ("references",), f"expected 'table(column)', got "
                                                   f"{references!r}")
            references = references.strip()
        flags = {key: self.boolean(raw.get(key, dflt), path + (key,))
                 for key, dflt in (("nullable", True), ("primary_key", False),
                                   ("unique", False))}
        if flags["primary_key"] and "nullable" not in raw:
            flags["nullable"] = False
        return Column(name=name, type=self.sql_type(raw["type"], path + ("type",)),
                      default=default, references=references, **flags)


# --------------------------------------------------------------------------------------------
# Checks across operations and against a database


def _touches(operation: Operation) -> tuple[str | None, str | None]:
    """(table, column) an operation changes; column None for table-level operations."""
    if isinstance(operation, (DropColumn, RenameColumn, ChangeType, SetNotNull)):
        return operation.table, operation.column
    if isinstance(operation, AddColumn):
        return operation.table, operation.column.name
    if isinstance(operation, (CreateTable, RenameTable, AddIndex)):
        return operation.table, None
    return None, None


def _check_within(migration: Migration, error: Callable[[KeyPath, str], NoReturn]) -> None:
    """One change per column and no changes to a table renamed in the same migration: each
    operation must be expressible against the previous release's schema (docs/SCHEMA.md)."""
    columns: dict[tuple[str, str], int] = {}
    renamed: dict[str, int] = {}
    created: dict[str, int] = {}
    index_names: dict[str, int] = {}
    for i, operation in enumerate(migration.operations):
        table, column = _touches(operation)
        if table is None:
            continue
        if table in renamed:
            error(("operations", i, "table"),
                  f"table {table!r} is renamed by operations[{renamed[table]}]: change it in "
                  f"this migration before the rename, or in the next migration")
        if isinstance(operation, RenameTable):
            if table in created:
                error(("operations", i), f"table {table!r} is created by "
                                         f"operations[{created[table]}]: create it with the "
                                         f"new name")
            renamed[table] = i
        if isinstance(operation, CreateTable):
            if table in created:
                error(("operations", i, "table"), f"table {table!r} is created twice")
            created[table] = i
        elif table in created and not isinstance(operation, AddIndex):
            error(("operations", i, "table"),
                  f"table {table!r} is created by operations[{created[table]}]: put this "
                  f"change in its create_table")
        if isinstance(operation, AddIndex):
            if operation.name in index_names:
                error(("operations", i, "name"), f"index {operation.name!r} is created twice")
            index_names[operation.name] = i
        if column is not None:
            key = (table, column)
            if key in columns:
                first = migration.operations[columns[key]]
                error(("operations", i), f"column {table}.{column} is already changed by "
                                         f"operations[{columns[key]}] ({op_name(first)}): one "
                                         f"change per column per migration; put this one in "
                                         f"the next migration")
            columns[key] = i
            if isinstance(operation, RenameColumn):
                target = (table, operation.to)
                if target in columns:
                    error(("operations", i, "to"), f"column {table}.{operation.to} is "
                                                   f"changed by operations[{columns[target]}]")
                columns[target] = i


def _operation_error(migration: Migration, index: int, key: str | None,
                     message: str) -> ConfigError:
    line = migration.lines[index] if index < len(migration.lines) else None
    if key is not None and line is not None:
        line = line_in_file(migration.source, ("operations", index, key)) or line
    path: KeyPath = ("operations", index) + ((key,) if key else ())
    return ConfigError(message, file=migration.source, key=format_key_path(path), line=line)


_NO_TABLES = "(none: the database is empty; start the migration that creates the table first)"

def validate_against(migration: Migration, catalogue: Catalogue,
                     indexes: Collection[str] = ()) -> dict[str, list[str]]:
    """Check every operation against ``catalogue`` (the previous release's tables and their
    columns, as a backend reads them before starting); return the new release's catalogue.
    Raises :class:`ConfigError` with the migration file, ``operations[N].key`` and the line
    for an unknown table or column, or a name that already exists."""
    tables: dict[str, list[str]] = {t: list(cols) for t, cols in catalogue.items()}
    known_indexes = set(indexes)

    def fail(i: int, key: str | None, message: str) -> NoReturn:
        raise _operation_error(migration, i, key, message)

    def need_table(i: int, table: str) -> list[str]:
        if table not in tables:
            fail(i, "table", f"unknown table {table!r}{did_you_mean(table, tables)}; "
                             f"tables: {', '.join(sorted(tables)) or _NO_TABLES}")
        return tables[table]

    def need_column(i: int, table: str, column: str, key: str = "column") -> None:
        columns = need_table(i, table)
        if column not in columns:
            fail(i, key, f"unknown column {table}.{column}{did_you_mean(column, columns)}; "
                         f"columns of {table}: {', '.join(columns)}")

    for i, op in enumerate(migration.operations):
        if isinstance(op, CreateTable):
            if op.table in tables:
                fail(i, "table", f"table {op.table!r} already exists")
            tables[op.table] = [c.name for c in op.columns]
        elif isinstance(op, AddColumn):
            columns = need_table(i, op.table)
            if op.column.name in columns:
                fail(i, "column", f"column {op.table}.{op.column.name} already exists")
            columns.append(op.column.name)
        elif isinstance(op, DropColumn):
            need_column(i, op.table, op.column)
            if len(tables[op.table]) == 1:
                fail(i, "column", f"cannot drop {op.table}.{op.column}: the table's only "
                                  f"column")
            tables[op.table].remove(op.column)
        elif isinstance(op, RenameColumn):
            need_column(i, op.table, op.column)
            columns = tables[op.table]
            if op.to in columns:
                fail(i, "to", f"column {op.table}.{op.to} already exists")
            columns[columns.index(op.column)] = op.to
        elif isinstance(op, (ChangeType, SetNotNull)):
            need_column(i, op.table, op.column)
        elif isinstance(op, AddIndex):
            for column in op.columns:
                columns = need_table(i, op.table)
                if column not in columns:
                    fail(i, "columns", f"unknown column {op.table}.{column}"
                                       f"{did_you_mean(column, columns)}; columns of "
                                       f"{op.table}: {', '.join(columns)}")
            if op.name in known_indexes:
                fail(i, "name", f"index {op.name!r} already exists")
            known_indexes.add(op.name)
        elif isinstance(op, RenameTable):
            need_table(i, op.table)
            if op.to in tables:
                fail(i, "to", f"table {op.to!r} already exists")
            tables[op.to] = tables.pop(op.table)
    return tables


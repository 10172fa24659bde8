"""SQLite schema changes: the catalogue as found, and the SQL of each release's views.

SQLite has no schemas, so a release's "schema" is a set of TEMP views named like the base
tables, with INSTEAD OF triggers that write every physical column through one write-through
view per base table (``_upgrader_w<generation>_<table>``). This module reads the database's
tables, columns and indexes and renders those views and triggers from a release's view spec.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import db
from ...errors import ConfigError

MIGRATIONS_TABLE = "_upgrader_schema_migrations"
VIEWS_TABLE = "_upgrader_schema_views"
PASSTHROUGH_PREFIX = "_upgrader_w"
NOT_NULL_PREFIX = "_upgrader_notnull_"
UNIQUE_PREFIX = "_upgrader_unique_"
BUSY_TIMEOUT_MS = 30_000

STATE_DDL = (
    f'CREATE TABLE IF NOT EXISTS "{MIGRATIONS_TABLE}" ('
    '"seq" INTEGER PRIMARY KEY, "name" TEXT NOT NULL, "release" TEXT NOT NULL, '
    '"previous" TEXT, "state" TEXT NOT NULL, "started_at" REAL, "finished_at" REAL, '
    '"generation" INTEGER NOT NULL, "record" TEXT NOT NULL)',
    f'CREATE TABLE IF NOT EXISTS "{VIEWS_TABLE}" ('
    '"release" TEXT NOT NULL, "view" TEXT NOT NULL, "migration" TEXT, '
    '"position" INTEGER NOT NULL, "generation" INTEGER NOT NULL, "spec" TEXT NOT NULL, '
    '"statements" TEXT NOT NULL, PRIMARY KEY ("release", "view"))',
)

LITERAL_RE = re.compile(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?|'(?:[^']|'')*'|NULL|TRUE|FALSE|"
                         r"CURRENT_TIME|CURRENT_DATE|CURRENT_TIMESTAMP", re.IGNORECASE)


def quote(name: str) -> str:
    """An SQL identifier, always quoted."""
    return '"' + name.replace('"', '""') + '"'


def sqlite_path(url: str | Path) -> str:
    """A file path from a path or a URL: ``sqlite:///rel/path``, ``sqlite:////abs/path``."""
    target = db.parse_target(str(url))
    if isinstance(target, db.PostgresTarget):
        raise ConfigError(f"{target.describe()} is a PostgreSQL URL, not a SQLite database")
    return target.path


def split_statements(sql: str) -> list[str]:
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
        for _, index, unique, _origin, _partial in conn.execute(
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
    select = ", ".join(f"{quote(p)} AS {quote(lg)}" for lg, p in reads)
    qview = quote(view)
    aliases = ", ".join(f"NEW.{quote(lg)} AS {quote(lg)}" for lg, _ in reads)

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
    key = row_key(spec, physical)

    def trigger(kind: str) -> str:
        return quote(f"_upgrader_{view}_{kind}")

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


def row_key(spec: dict[str, Any], physical: list[PhysicalColumn]) -> str:
    """How a view's trigger finds the row: the primary key (as the release reads it), else
    every column the release reads (IS: NULLs match)."""
    read = {p: lg for lg, p in spec["columns"]}
    pk = sorted((c for c in physical if c.pk), key=lambda c: c.pk)
    if pk and all(c.name in read for c in pk):
        return " AND ".join(f"{quote(c.name)} = OLD.{quote(read[c.name])}" for c in pk)
    return " AND ".join(f"{quote(p)} IS OLD.{quote(lg)}" for lg, p in spec["columns"])

"""PostgreSQL schema changes: what the database holds and how upgrader names it.

The names upgrader gives its objects (view schema per release, trigger and function names,
the bookkeeping schema ``upgrader_schema`` and its tables), the catalogue as found (tables,
columns, the key a backfill batches over), the per-table layout of a migration (kept as JSON
with the migration so complete and rollback need no file), and how a PostgreSQL error reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ... import db
from ..model import OPERATIONS, AddColumn, AddIndex, Column, CreateTable, Migration

#: bookkeeping schema (migrations, live releases, backfill cursors, trigger functions)
STATE_SCHEMA = "upgrader_schema"
#: boolean column on a table being backfilled: true until the row has been synchronised
BACKFILL_MARKER = "_upg_needs_backfill"
#: prefix of every view schema: release ``v2`` -> ``upg_v2``
RELEASE_SCHEMA_PREFIX = "upg_"
#: advisory lock key (first half) of every upgrader schema lock: 'UG'
LOCK_KEY = 0x5547
RESERVED_PREFIX = "_upg_"
MAX_IDENT = 63


def release_schema(release: str) -> str:
    """The view schema of ``release``: ``upg_`` + the release name lower-cased with every
    character outside ``[a-z0-9_]`` replaced by ``_`` (a hash suffix keeps long names within
    PostgreSQL's 63 bytes)."""
    name = RELEASE_SCHEMA_PREFIX + re.sub(r"[^a-z0-9_]", "_", release.lower())
    if len(name) > MAX_IDENT:
        digest = hashlib.sha1(release.encode()).hexdigest()[:8]
        name = name[:MAX_IDENT - 9] + "_" + digest
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
class Col:
    name: str
    type: str
    notnull: bool
    default: str | None


@dataclass
class Table:
    name: str
    columns: dict[str, Col]
    key: tuple[str, ...]


def read_catalog(conn: Any, base: str) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    rows = conn.execute(
        """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
            WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
            ORDER BY c.relname, a.attnum""", (base,)).fetchall()
    for table, column, type_, notnull, default in rows:
        tables.setdefault(table, Table(table, {}, ()))
        tables[table].columns[column] = Col(column, type_, notnull, default)
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
class Pair:
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
class Layout:
    physical: str              # table name at start (until complete)
    name: str                  # name in the new release
    created: bool = False
    view: list[list[str]] = field(default_factory=list)    # [[view column, physical], ...]
    hidden: list[str] = field(default_factory=list)        # physical, not in the new view
    drop_at_complete: list[str] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
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
    def from_json(cls, data: dict[str, Any]) -> Layout:
        data = dict(data)
        data["pairs"] = [Pair(**p) for p in data["pairs"]]
        return cls(**data)


def short_hash(*parts: str) -> str:
    return hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:10]


def trigger_names(migration: str, table: str) -> tuple[str, str]:
    """(trigger, function) that keep ``table``'s columns in step for ``migration``."""
    suffix = short_hash(migration, table)
    return f"_upg_sync_{suffix}", f"_upg_sync_{table[:40]}_{suffix}"

STATE_DDL = f"""
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



def render(conn: Any, statement: Any) -> str:
    """A composed statement (``psycopg.sql``) as text; text as is."""
    return statement if isinstance(statement, str) else str(statement.as_string(conn))


def pg_message(exc: Exception) -> str:
    """PostgreSQL's primary message of ``exc`` (secrets masked)."""
    return db.error_text(exc)


def is_input_error(exc: Exception) -> bool:
    """An error caused by what the migration says (SQL in it, names, data that does not
    fit), not by the database being unavailable."""
    state = getattr(exc, "sqlstate", None) or ""
    return state[:2] in ("42", "22", "23", "0A", "2B", "P0", "44")

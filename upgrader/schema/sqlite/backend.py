"""SQLite schema changes: :class:`SQLiteBackend`, one file's start, backfill, complete,
rollback, status and plan.

State lives in the database: ``_upgrader_schema_migrations`` (history, the active
migration, its undo and contract steps, backfill progress) and ``_upgrader_schema_views``
(for each live release and view: the definition and the SQL that
:func:`~upgrader.schema.sqlite.connect` runs). Start, complete and rollback are each one
``BEGIN IMMEDIATE`` transaction; the backfill is one transaction per batch of rowids.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ... import db
from ...errors import ConfigError, SchemaError
from ..loader import _operation_error
from ..model import BackfillResult, LiveRelease, Migration, SchemaStatus
from .catalog import (
    BUSY_TIMEOUT_MS,
    MIGRATIONS_TABLE,
    NOT_NULL_PREFIX,
    PASSTHROUGH_PREFIX,
    STATE_DDL,
    VIEWS_TABLE,
    Catalogue,
    quote,
    read_catalogue,
    render_passthrough,
    render_release,
    split_statements,
    sqlite_path,
)
from .compiler import (
    StartPlan,
    apply_contract,
    backfill_sets,
    compile_start,
    discover,
    migration_data,
    not_null_guard,
    statement_operation,
)


class SQLiteBackend:
    """:class:`~upgrader.schema.model.SchemaBackend` for one SQLite file."""

    def __init__(self, url: str | Path, *, create: bool = True,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.url = str(url)
        self.path = sqlite_path(url)
        if not create and self.path != ":memory:" and not Path(self.path).exists():
            raise ConfigError("no such SQLite database", file=self.path)
        self.conn = db.connect_sqlite(db.SQLiteTarget(self.path, self.url), error=SchemaError,
                                      what="the SQLite database",
                                      busy_timeout=busy_timeout_ms / 1000)

    def __enter__(self) -> SQLiteBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # -- state

    def _has_state(self) -> bool:
        return bool(self.conn.execute(
            "SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND name = ?",
            (MIGRATIONS_TABLE,)).fetchone()[0] > 0)

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
        return int(row[0] or 0)

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

    def _prepare_start(self, migration: Migration
                       ) -> tuple[StartPlan, dict[str, dict[str, dict[str, Any]]], Catalogue]:
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
        plan = compile_start(self.conn, migration, cat, live, previous, self._generation() + 1)
        return plan, live, cat

    def plan(self, migration: Migration, phase: str = "start") -> list[str]:
        if phase not in ("start", "complete", "rollback"):
            raise ConfigError(f"unknown phase {phase!r} (start, complete, rollback)")
        active = self._active()
        if phase != "start" and active is not None and active[1] == migration.name:
            record = active[2]
            if phase == "rollback":
                undo: list[str] = record["undo"]
                return (self._drop_passthroughs() + undo
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
            sets = backfill_sets(jobs)
            out.append(f"-- backfill in batches of {migration.batch_size} rows, each its own "
                       f"transaction:\nUPDATE {quote(table)} SET {sets} WHERE rowid > :last "
                       f"AND rowid <= :batch_end")
        out.append(f"-- views of release {migration.release!r}: created by "
                   f"upgrader.schema.connect(path, {migration.release!r}) per connection")
        return out

    def start(self, migration: Migration, *, backfill: bool = True) -> BackfillResult | None:
        """Expand (one transaction), then backfill in batches. Called again for the active
        migration, it resumes an interrupted backfill. ``backfill=False`` stops after the
        DDL (call :meth:`backfill`)."""
        try:
            with self._transaction():
                for sql in STATE_DDL:
                    self.conn.execute(sql)
                active = self._active()
                if active is None or active[1] != migration.name:
                    self._start_in_transaction(migration)
                # else: started before; resume its backfill
        except sqlite3.Error as exc:
            raise SchemaError(f"start {migration.name!r} failed, nothing changed: {exc}",
                              database=self.url, migration=migration.name) from exc
        return self.backfill(migration.name) if backfill else None

    def _start_in_transaction(self, migration: Migration) -> None:
        passthrough = self._passthrough_objects()
        views_before = self._snapshot_views()
        plan, live, cat = self._prepare_start(migration)
        for sql in plan.ddl:
            try:
                self.conn.execute(sql)
            except sqlite3.Error as exc:
                index = statement_operation(plan, sql)
                if index is None:
                    raise
                raise _operation_error(migration, index, None,
                                       f"SQLite refused {sql!r}: {exc}") from exc
        cat = read_catalogue(self.conn)
        new_specs = discover(plan.new_specs, cat, plan.hidden)
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
                self.conn.execute(f"UPDATE {quote(table)} SET {backfill_sets(jobs)} WHERE 0")
            except sqlite3.Error as exc:
                raise SchemaError(f"the backfill of {table!r} does not compile: {exc} (the up "
                                  f"expressions of {migration.name!r} use the previous "
                                  f"release's columns)", database=self.url,
                                  migration=migration.name) from exc
            count, high = self.conn.execute(f"SELECT count(*), coalesce(max(rowid), 0) FROM "
                                            f"{quote(table)}").fetchone()
            totals[table] = {"last": 0, "high": high, "done": 0, "total": count}
        record = {"migration": migration_data(migration), "previous": plan.previous,
                  "undo": plan.undo, "contract": plan.contract, "backfill": plan.backfill,
                  "progress": totals, "passthrough": passthrough, "views": views_before,
                  "retired": retired, "irreversible": migration.irreversible}
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

    def backfill(self, name: str, *, max_batches: int | None = None,
                 batch_size: int | None = None) -> BackfillResult:
        """Backfill the active migration ``name`` from where it stopped, one transaction
        per batch of rowids: at most ``max_batches`` batches (None: to the end)."""
        seq, record = self._require_active(name)
        batch = int(batch_size or record["migration"]["batch_size"])
        result = BackfillResult()
        for table, jobs in record["backfill"].items():
            sets = backfill_sets(jobs)
            while True:
                progress = record["progress"][table]
                if progress["last"] >= progress["high"]:
                    break
                if max_batches is not None and result.batches >= max_batches:
                    return result
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
                        result.rows += cur.rowcount
                        result.batches += 1
                        self.conn.execute(f'UPDATE "{MIGRATIONS_TABLE}" SET "record" = ? '
                                          'WHERE "seq" = ?', (json.dumps(record), seq))
                except sqlite3.Error as exc:
                    raise SchemaError(f"backfill of {table!r} failed after {progress['done']} "
                                      f"rows: {exc}; the migration stays started (start it "
                                      f"again to resume, or roll it back)", database=self.url,
                                      migration=name) from exc
        result.done = True
        return result

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
                out.extend(not_null_guard(table, column, column))
            elif kind == "rename_table":
                out.append(f"ALTER TABLE {quote(step[1])} RENAME TO {quote(step[2])}")
            elif kind == "sql":
                out.extend(split_statements(step[1]))
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
                    rewritten = apply_contract(specs, record["contract"], cat)
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

    def check_rollback(self, name: str) -> None:
        _, record = self._require_active(name)
        if record.get("irreversible"):
            raise SchemaError(f"migration {name!r} cannot be rolled back: "
                              f"{record['irreversible']}", database=self.url, migration=name)

    def rollback(self, name: str) -> None:
        try:
            with self._transaction():
                seq, record = self._require_active(name)
                if record.get("irreversible"):
                    raise SchemaError(f"migration {name!r} cannot be rolled back: "
                                      f"{record['irreversible']}", database=self.url,
                                      migration=name)
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
        history = tuple((str(n), str(r), str(s)) for n, r, s in self.conn.execute(
            f'SELECT "name", "release", "state" FROM "{MIGRATIONS_TABLE}" ORDER BY "seq"'))
        backfill: dict[str, tuple[int, int]] = {}
        if active is not None:
            backfill = {t: (int(p["done"]), int(p["total"]))
                        for t, p in active[2]["progress"].items()}
        return SchemaStatus(active=active[1] if active else None, live=live,
                            history=history, backfill=backfill)

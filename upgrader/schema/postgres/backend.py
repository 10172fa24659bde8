"""PostgreSQL schema changes: :class:`PostgresBackend`, one database's start, backfill,
complete, rollback, status and plan.

Every DDL step (start, complete, rollback) is one transaction with ``lock_timeout``; when a
lock is not granted in time the whole transaction is retried with backoff, so a busy table
never queues every writer behind our ACCESS EXCLUSIVE request for long.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any

from ... import db
from ...errors import ConfigError, SchemaError
from ..model import BackfillResult, LiveRelease, Migration, RawSQL, SchemaStatus
from .backfill import Backfill
from .catalog import (
    BACKFILL_MARKER,
    LOCK_KEY,
    STATE_DDL,
    STATE_SCHEMA,
    is_input_error,
    migration_from_json,
    migration_to_json,
    pg_message,
    release_schema,
    release_url,
    render,
    search_path_setting,
)
from .compiler import Compiler, operation_error
from .contract import complete_statements, rollback_statements, validations
from .triggers import expression_checks, trigger_statements


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
        self.url = url
        self.base_schema = base_schema
        self.lock_timeout = lock_timeout
        self.lock_attempts = lock_attempts
        self._baseline = False
        # prepare_threshold=None: no server-side prepared statements, which a pooler
        # (PgBouncer in transaction mode) in front of the database would break
        self._conn = db.connect_postgres(url, application_name=db.SCHEMA_APPLICATION,
                                         error=SchemaError, prepare_threshold=None)
        # our own writes (the backfill) must read as "not the new release" in the triggers
        with db.mapped_errors(SchemaError, self._safe_url(), "set the search_path", url):
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
        return db.describe(self.url)

    def _render(self, statement: Any) -> str:
        return render(self._conn, statement)

    def _scalar(self, query: Any, params: Any = ()) -> Any:
        """The first column of the first row of ``query`` (None: no row)."""
        row = self._conn.execute(query, params).fetchone()
        return row[0] if row is not None else None


    def _state_exists(self) -> bool:
        return bool(self._scalar("SELECT to_regclass(%s) IS NOT NULL",
                                 (f"{STATE_SCHEMA}.migrations",)))

    def _active(self) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
        if not self._state_exists():
            return None
        row = self._conn.execute(
            f"SELECT name, migration, layout FROM {STATE_SCHEMA}.migrations "
            "WHERE state = 'started'").fetchone()
        return (row[0], row[1], row[2]) if row else None

    def _lock(self) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_KEY,))

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
                if op is None or not is_input_error(exc):
                    raise SchemaError(f"{self._render(statement)[:200]}: {exc}",
                                      database=self._safe_url(),
                                      migration=migration.name) from exc
                raise operation_error(migration, op, pg_message(exc)) from exc

        return run

    # ---------------------------------------------------------------- plan
    def plan(self, migration: Migration, phase: str = "start") -> list[str]:
        if phase == "start":
            self._check_releases(migration)
            compiler = Compiler(self._conn, self.base_schema, migration, execute=None)
            statements = [self._render(s) for s in self._start_statements(compiler, None)]
            return statements
        active = self._active()
        if active is None or active[0] != migration.name:
            raise SchemaError(f"migration {migration.name!r} is not active; only an active "
                              f"migration has a {phase} plan", database=self._safe_url(),
                              migration=migration.name)
        if phase == "complete":
            return complete_statements(self._conn, active[0], active[2])[1]
        if phase == "rollback":
            return rollback_statements(self._conn, active[0], active[2])
        raise ConfigError(f"unknown phase {phase!r} (start, complete, rollback)")

    # ---------------------------------------------------------------- start
    def _start_statements(self, compiler: Compiler,
                          run: Callable[[int | None, Any], None] | None) -> list[Any]:
        """Compile (and with ``run`` execute) the whole start; return every statement."""
        sql = compiler.sql
        m = compiler.m
        out: list[Any] = []

        def emit(statement: Any) -> None:
            out.append(statement)
            if run is not None:
                run(None, statement)

        previous_schema = release_schema(m.previous) if m.previous else None
        baseline = previous_schema is not None and not self._release_live(m.previous)
        if previous_schema is not None and baseline:
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
            for statement in trigger_statements(compiler, layout):
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
            for statement in STATE_DDL.split(";\n"):
                self._conn.execute(statement)
            run = self._op_runner(migration)
            compiler = Compiler(self._conn, self.base_schema, migration, execute=run)
            self._start_statements(compiler, run)
            self._check_expressions(compiler)
            self._record_start(compiler)

        self._transaction(work, f"start {migration.name}")
        return self.backfill(migration.name) if backfill else None

    def _check_expressions(self, compiler: Compiler) -> None:
        import psycopg

        for layout in compiler.layouts.values():
            for op, key, statement in expression_checks(compiler, layout):
                try:
                    with self._conn.transaction():
                        self._conn.execute(statement)
                except psycopg.errors.LockNotAvailable:
                    raise
                except psycopg.Error as exc:
                    raise operation_error(compiler.m, op, f"`{key}`: {pg_message(exc)}",
                                             key) from exc

    def _record_start(self, compiler: Compiler) -> None:
        m = compiler.m
        layout = {
            "base": compiler.base, "schema": compiler.schema,
            "previous_schema": release_schema(m.previous) if m.previous else None,
            "baseline": self._baseline,
            "tables": [lay.to_json() for lay in compiler.layouts.values()],
            "undo": compiler.undo, "indexes": compiler.indexes, "raw": compiler.raw,
            "irreversible": m.irreversible,
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
        if self._baseline and m.previous is not None:
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
        active = self._active()
        if active is None or active[0] != name:
            raise SchemaError(f"migration {name!r} is not active", database=self._safe_url(),
                              migration=name)
        _, mdata, layout = active
        size = batch_size or mdata.get("batch_size") or 1000
        if not self._scalar("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_KEY, name)):
            raise SchemaError(f"the backfill of {name!r} runs in another session",
                              database=self._safe_url(), migration=name)
        try:
            filler = Backfill(self._conn, self._safe_url(), lock_timeout=self.lock_timeout,
                              lock_attempts=self.lock_attempts)
            result = filler.run(name, layout, size=size, max_batches=max_batches)
            if not result.done:
                return result
            failed = filler.build_indexes(layout)
            if failed is not None:
                op, exc = failed
                error = operation_error(migration_from_json(mdata), op, pg_message(exc))
                self.rollback(name)
                raise error from exc
            self._conn.execute(f"UPDATE {STATE_SCHEMA}.migrations SET backfilled_at = now() "
                               "WHERE name = %s AND backfilled_at IS NULL", (name,))
            return result
        finally:
            self._conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_KEY, name))

    # ---------------------------------------------------------------- complete
    def complete(self, name: str) -> None:
        """Contract: finish any pending backfill, validate the NOT VALID constraints (each in
        its own transaction, writes go on), then one transaction drops what only the old
        release needed, the triggers, and the view schemas the contraction breaks."""
        import psycopg

        active = self._active()
        if active is None or active[0] != name:
            raise SchemaError(f"migration {name!r} is not active", database=self._safe_url(),
                              migration=name)
        if not self._scalar(f"SELECT backfilled_at IS NOT NULL FROM {STATE_SCHEMA}."
                            "migrations WHERE name = %s", (name,)):
            self.backfill(name)
        layout = active[2]
        for statement in validations(layout):
            try:
                self._transaction(functools.partial(self._conn.execute, statement),
                                  f"complete {name}")
            except psycopg.Error as exc:
                raise SchemaError(f"complete {name}: {pg_message(exc)} (a row still breaks "
                                  "the new constraint; nothing was changed)",
                                  database=self._safe_url(), migration=name) from exc

        def work() -> None:
            self._lock()
            again = self._active()
            if again is None or again[0] != name:
                raise SchemaError(f"migration {name!r} is not active",
                                  database=self._safe_url(), migration=name)
            broken, statements = complete_statements(self._conn, name, layout)
            for statement in statements:
                try:
                    self._conn.execute(statement)
                except psycopg.errors.LockNotAvailable:
                    raise
                except psycopg.Error as exc:
                    raise SchemaError(f"complete {name}: {statement[:200]}: "
                                      f"{pg_message(exc)}", database=self._safe_url(),
                                      migration=name) from exc
            self._conn.execute(f"DELETE FROM {STATE_SCHEMA}.releases WHERE schema = ANY(%s)",
                               (broken,))
            self._conn.execute(f"DELETE FROM {STATE_SCHEMA}.backfill WHERE migration = %s",
                               (name,))
            self._conn.execute(f"UPDATE {STATE_SCHEMA}.migrations SET state = 'complete', "
                               "finished_at = now() WHERE name = %s", (name,))

        self._transaction(work, f"complete {name}")


    # ---------------------------------------------------------------- rollback
    def check_rollback(self, name: str) -> None:
        self._rollback_layout(name)

    def _rollback_layout(self, name: str) -> dict[str, Any]:
        """The SchemaError ``rollback`` would raise before changing anything; else the
        active migration's layout."""
        active = self._active()
        if active is None or active[0] != name:
            raise SchemaError(f"migration {name!r} is not active", database=self._safe_url(),
                              migration=name)
        layout: dict[str, Any] = active[2]
        if layout.get("irreversible"):
            raise SchemaError(f"migration {name!r} cannot be rolled back: "
                              f"{layout['irreversible']}", database=self._safe_url(),
                              migration=name)
        return layout

    def rollback(self, name: str) -> None:
        """Undo start in one transaction: the database is as before (only the history in
        ``upgrader_schema`` remembers the migration)."""
        import psycopg

        layout = self._rollback_layout(name)
        # a build of a concurrent index may have been left behind: it drops outside too
        for index in layout["indexes"]:
            from psycopg import sql

            self._conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                sql.Identifier(layout["base"], index["name"])))

        def work() -> None:
            self._lock()
            for statement in rollback_statements(self._conn, name, layout):
                try:
                    self._conn.execute(statement)
                except psycopg.errors.LockNotAvailable:
                    raise
                except psycopg.Error as exc:
                    raise SchemaError(f"rollback {name}: {statement[:200]}: "
                                      f"{pg_message(exc)}", database=self._safe_url(),
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


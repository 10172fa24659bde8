"""PostgreSQL schema changes: the batched, resumable backfill and the concurrent indexes.

The backfill is ``UPDATE ... SET _upg_needs_backfill = false`` over primary key ranges, one
short transaction per batch (with ``lock_timeout``), its cursor (``last_key``, up to the
``upper_key`` that existed when it began) saved in the same transaction in
``upgrader_schema.backfill``: an interrupted backfill continues where it stopped. The
trigger of each table computes the new columns of every row it touches. ``CREATE INDEX
CONCURRENTLY`` cannot run in a transaction: the indexes of ``add_index`` are built after the
backfill, here.
"""

from __future__ import annotations

import random
import time
from typing import Any

from ...errors import SchemaError
from ..model import BackfillResult
from .catalog import BACKFILL_MARKER, STATE_SCHEMA, Layout, pg_message


class Backfill:
    """The backfill of one database's active migration, on the backend's connection.

    :param database: the database for messages (password masked)
    :param lock_timeout: how long one batch may wait for its row locks (seconds)
    :param lock_attempts: how many times an index build is tried while locks are refused
    """

    def __init__(self, conn: Any, database: str, *, lock_timeout: float,
                 lock_attempts: int) -> None:
        self.conn = conn
        self.database = database
        self.lock_timeout = lock_timeout
        self.lock_attempts = lock_attempts

    def run(self, name: str, layout: dict[str, Any], *, size: int,
            max_batches: int | None = None) -> BackfillResult:
        """Batches of ``size`` rows from where the backfill of ``name`` stopped: at most
        ``max_batches`` (None: to the end). ``done`` when every table is backfilled."""
        import psycopg
        from psycopg import sql

        result = BackfillResult()
        tables = {t["physical"]: Layout.from_json(t) for t in layout["tables"]}
        rows = self.conn.execute(
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
                with self.conn.transaction():
                    top = self.conn.execute(sql.SQL(
                        "SELECT ARRAY[{}]::text[] FROM {} ORDER BY {} LIMIT 1").format(
                        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c))
                                           for c in key_columns),
                        table, sql.SQL(", ").join(sql.SQL("{} DESC").format(
                            sql.Identifier(c)) for c in key_columns))).fetchone()
                    total = self.conn.execute(sql.SQL(
                        "SELECT count(*) FROM {} WHERE {}").format(table, marker)
                    ).fetchone()[0]
                    upper_key = top[0] if top else []
                    self.conn.execute(
                        f"UPDATE {STATE_SCHEMA}.backfill SET upper_key = %s, "
                        "rows_total = %s WHERE migration = %s AND table_name = %s",
                        (upper_key, total, name, table_name))
            if not upper_key:
                self._finish_table(name, table_name)
                continue

            def row_of(values: list[str], casts: list[Any] = casts) -> Any:
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
                    with self.conn.transaction():
                        self.conn.execute("SELECT set_config('lock_timeout', %s, true)",
                                           (f"{int(self.lock_timeout * 1000)}ms",))
                        count, last = self.conn.execute(statement).fetchone()
                        if count == 0 or last is None:
                            self.conn.execute(
                                f"UPDATE {STATE_SCHEMA}.backfill SET done = true "
                                "WHERE migration = %s AND table_name = %s",
                                (name, table_name))
                        else:
                            self.conn.execute(
                                f"UPDATE {STATE_SCHEMA}.backfill SET last_key = %s, "
                                "rows_done = rows_done + %s WHERE migration = %s "
                                "AND table_name = %s", (last, count, name, table_name))
                except (psycopg.errors.LockNotAvailable,
                        psycopg.errors.DeadlockDetected,
                        psycopg.errors.SerializationFailure):
                    time.sleep(random.uniform(0.01, 0.05))
                    continue
                except psycopg.Error as exc:
                    raise SchemaError(f"backfill of {table_name!r}: {pg_message(exc)}",
                                      database=self.database, migration=name) from exc
                if count == 0 or last is None:
                    break
                last_key = last
                result.rows += count
                result.batches += 1
            else:
                return result
        result.done = True
        return result

    def _finish_table(self, name: str, table_name: str) -> None:
        self.conn.execute(f"UPDATE {STATE_SCHEMA}.backfill SET done = true "
                          "WHERE migration = %s AND table_name = %s", (name, table_name))

    def build_indexes(self, layout: dict[str, Any]) -> tuple[int, Exception] | None:
        """Build the concurrent indexes of ``add_index`` (an index left INVALID by an
        interrupted build is dropped and built again). On failure the index is dropped and
        (operation index, error) returned: the caller rolls the migration back."""
        import psycopg
        from psycopg import sql

        for index in layout["indexes"]:
            ident = sql.Identifier(layout["base"], index["name"])
            for _attempt in range(self.lock_attempts):
                state = self.conn.execute(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = "
                    "i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s",
                    (layout["base"], index["name"])).fetchone()
                if state and state[0]:
                    break
                if state:          # left INVALID by an interrupted build
                    self.conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}")
                                      .format(ident))
                try:
                    self.conn.execute(index["sql"])
                    break
                except psycopg.errors.LockNotAvailable:
                    time.sleep(random.uniform(0.05, 0.2))
                except psycopg.Error as exc:
                    self.conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}")
                                      .format(ident))
                    return int(index["op"]), exc
        return None
